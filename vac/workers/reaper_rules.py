"""The reaper's decisions (pure): which containers no slot owns, which directories expired.

A slot holds at most one machine. A container of our factory is an orphan
when no slot can own it: its slot number is outside the pool, or its slot is
known (from the root's live set) to be idle or to hold another machine.
Slots whose state is unknown, adopting or unavailable are left alone, and so
is anything younger than the grace period: a fresh worker may be about to
adopt it.
"""

import dataclasses

SETTLED_STATES = frozenset({"idle", "preparing", "starting", "running", "stopping",
                            "finishing", "cleaning"})
SECONDS_PER_DAY = 86400


@dataclasses.dataclass(frozen=True)
class SlotView:
    """What the root knows of one slot: its worker's state and the machine it holds."""
    slot: int
    state: str
    uuid: str | None


def orphaned(containers, live, slots, now, grace_seconds):
    """The containers to reap: (slot, uuid, created_at) tuples no slot can own."""
    views = {view.slot: view for view in live}
    orphans = []
    for slot, uuid, created_at in containers:
        if created_at is not None and now - created_at < grace_seconds:
            continue
        if slot is None or not 0 <= slot < slots:
            orphans.append((slot, uuid, created_at))
            continue
        view = views.get(slot)
        if view is None or view.state not in SETTLED_STATES:
            continue
        if view.uuid != uuid:
            orphans.append((slot, uuid, created_at))
    return orphans


def expired(finished_at, machines_dir_days, now):
    """True when a finished machine's directory has been kept long enough."""
    return finished_at is not None and now - finished_at > machines_dir_days * SECONDS_PER_DAY
