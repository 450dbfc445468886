"""The reaper's decisions (pure): which containers no slot owns, which directories expired.

A slot holds at most one machine. A container of our factory is an orphan
when no slot can own it: its slot number is outside the pool, or its slot is
known (from the root's live set) to be settled and idle or holding another
machine. The root's live set is a snapshot stamped with the time it was
made: a container started after that time may be one the snapshot could not
know of, so only a live set newer than a container's start may condemn it,
and only while the live set is younger than LIVE_SET_MAX_AGE_SECONDS.
Slots whose worker is gone, unknown, adopting or unavailable are left alone,
and so is anything younger than the grace period.
"""

import dataclasses

from vac.vocabulary.live_set import LIVE_SET_MAX_AGE_SECONDS
from vac.vocabulary.slot_states import SETTLED_STATES

SECONDS_PER_DAY = 86400


@dataclasses.dataclass(frozen=True)
class SlotView:
    """What the root knows of one slot: its worker's state, the machine it holds or was
    placed, and whether the worker is alive in a state that the root can vouch for."""
    slot: int
    state: str
    uuid: str | None
    settled: bool = True


@dataclasses.dataclass(frozen=True)
class LiveSet:
    """The root's live set as the reaper holds it: when the root made it, and each slot."""
    made_at: float
    slots: tuple


def live_set_from_message(made_at, entries):
    """A LiveSet from the root's message fields (made_at, [{slot, state, uuid, settled}])."""
    return LiveSet(made_at=made_at, slots=tuple(
        SlotView(entry["slot"], entry["state"], entry["uuid"], entry["settled"])
        for entry in entries))


def is_fresh(live, now):
    """True when `live` (a LiveSet or None) is recent enough to remove containers on."""
    return live is not None and 0 <= now - live.made_at <= LIVE_SET_MAX_AGE_SECONDS


def orphaned(containers, live, slots, now, grace_seconds):
    """The containers to reap: (slot, uuid, started_at) tuples no slot can own.

    `started_at` is the latest start the engine reports (creation or start);
    a container whose start is unknown, or not older than the live set, stays.
    """
    if not is_fresh(live, now):
        return []
    views = {view.slot: view for view in live.slots}
    orphans = []
    for slot, uuid, started_at in containers:
        if started_at is None or started_at >= live.made_at or now - started_at < grace_seconds:
            continue
        if slot is None or not 0 <= slot < slots:
            orphans.append((slot, uuid, started_at))
            continue
        view = views.get(slot)
        if view is None or not view.settled or view.state not in SETTLED_STATES:
            continue
        if view.uuid != uuid:
            orphans.append((slot, uuid, started_at))
    return orphans


def expired(finished_at, machines_dir_days, now):
    """True when a finished machine's directory has been kept long enough."""
    return finished_at is not None and now - finished_at > machines_dir_days * SECONDS_PER_DAY
