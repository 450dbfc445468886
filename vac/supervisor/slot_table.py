"""The root's in-memory table of slots, learnt from the slot workers' reports.

A machine stays in the table while its worker is down or restarting: the
container keeps running under dockerd and the next worker adopts it, so its
processors stay taken.

After the root starts, a slot holds what its machine directories said at
that moment (`remembered`, read before the loop) until its worker has
reported what it really holds, which it does once its adoption is over.
Nothing is placed before every slot has done so, so no processor is
promised twice; a slot whose worker exits before that (crash-looping,
FATAL) stops holding placements back, and what its directories said keeps
counting for it until a worker of it reports.
"""

import dataclasses

from vac.supervisor.scheduler import RunningMachine

IDLE = "idle"
# A worker in one of these states has finished adopting what its predecessor
# left: the machine it reports (or none) is what the slot holds. The states
# of ending a machine (stopping, finishing, cleaning) may belong to an older
# machine taken over first, with the live one still to come.
ADOPTED_STATES = frozenset({IDLE, "preparing", "starting", "running"})
# How a slot worker's error begins when it refuses a Place.
PLACEMENT_REFUSED = "placement refused"


@dataclasses.dataclass
class SlotEntry:
    """What the root knows of one slot."""
    slot: int
    state: str = "unknown"       # the worker's last reported state
    machine: dict | None = None  # the machine the slot holds, as reported
    pending: dict | None = None  # a placement sent and not yet acknowledged
    error: str | None = None
    worker_alive: bool = False
    adopted: bool = False          # its worker has reported what it holds since the root started
    gave_up: bool = False          # its worker exited before that: it holds no placement back
    remembered: dict | None = None  # what its machine directories said at start, until adopted


class SlotTable:
    """Slots by number, with the queries the scheduler and status need."""

    def __init__(self, slots):
        self.entries = {n: SlotEntry(n) for n in range(slots)}

    def report(self, slot, state, machine, error=None, rejected=None):
        """A worker's StateReport: it is the authority on its slot.

        A placement in flight is settled when the worker reports it busy, or
        idle naming the placement it `rejected`; a plain idle report may have
        crossed the placement on its way and settles nothing.
        """
        entry = self.entries[slot]
        entry.state = state
        entry.machine = machine
        if state in ADOPTED_STATES and not entry.adopted:
            entry.adopted = True
            entry.remembered = None
        entry.error = error
        entry.worker_alive = True
        refused = rejected == (entry.pending or {}).get("uuid") or (
            error is not None and error.startswith(PLACEMENT_REFUSED))
        if entry.pending is not None and (state != IDLE or machine is not None or refused):
            entry.pending = None
        return entry

    def remember(self, slot, machine):
        """What slot `slot` held when the root started, by its machine directories (before any report)."""
        entry = self.entries[slot]
        if not entry.adopted:
            entry.remembered = machine

    def still_adopting(self):
        """Slots that have not yet reported what they hold and whose worker is still at it."""
        return [e.slot for e in self.entries.values() if not e.adopted and not e.gave_up]

    def placed(self, slot, machine):
        self.entries[slot].pending = machine

    def worker_gone(self, slot):
        """The worker exited: forget unacknowledged placements, keep the machine."""
        entry = self.entries[slot]
        entry.worker_alive = False
        entry.pending = None
        if not entry.adopted:
            entry.gave_up = True
        if entry.machine is None:
            entry.state = "unknown"

    def free_slots(self):
        """Slots whose worker is alive, idle and has nothing on its way."""
        return [e.slot for e in self.entries.values()
                if e.worker_alive and e.adopted and e.state == IDLE and e.machine is None and e.pending is None]

    def machines(self):
        """Every machine the factory holds: reported ones and placements in flight."""
        for entry in self.entries.values():
            machine = entry.machine or entry.pending
            remembered = None if entry.adopted else entry.remembered
            if remembered is not None and (machine is None or remembered["processors"] > machine["processors"]):
                # Still adopting: it may be ending an older machine before it takes over this one.
                machine = remembered
            if machine is not None:
                yield entry.slot, machine

    def running(self, hs06_per_processor):
        """The scheduler's view of the machines this factory holds."""
        per_processor = 1.0 if hs06_per_processor is None else hs06_per_processor
        return [RunningMachine(slot=slot, machinetype=m["machinetype"], processors=m["processors"],
                               started_at=m["started_at"], shutdown_at=m["shutdown_at"],
                               superslot=m["superslot"], hs06=per_processor * m["processors"])
                for slot, m in self.machines()]
