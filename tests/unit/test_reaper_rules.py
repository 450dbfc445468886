"""Which containers the reaper may remove, and which directories have expired."""

import pytest

from vac.vocabulary.live_set import LIVE_SET_MAX_AGE_SECONDS
from vac.workers.reaper_rules import LiveSet, SlotView, expired, is_fresh, live_set_from_message, orphaned

NOW = 1_800_000_000.0
OLD = NOW - 1000
MADE_AT = NOW - 5
LIVE = LiveSet(MADE_AT, (SlotView(0, "running", "uuid-a"), SlotView(1, "idle", None),
                         SlotView(2, "adopting", None), SlotView(3, "unavailable", None),
                         SlotView(4, "running", "uuid-b", settled=False)))


@pytest.mark.parametrize("container, reaped", [
    ((0, "uuid-a", OLD), False),      # the machine slot 0 holds
    ((0, "uuid-x", OLD), True),       # a second container in a busy slot
    ((1, "uuid-x", OLD), True),       # a container in an idle slot
    ((2, "uuid-x", OLD), False),      # its worker is adopting: leave it
    ((3, "uuid-x", OLD), False),      # the engine was unreachable for that slot
    ((4, "uuid-x", OLD), False),      # its worker is gone: the root cannot vouch for it
    ((7, "uuid-x", OLD), True),       # outside the pool (slots were reduced)
    ((None, "uuid-x", OLD), True),    # no usable slot label
    ((1, "uuid-x", NOW - 100), False),  # younger than the grace period
    ((7, "uuid-x", NOW - 100), False),
    ((1, "uuid-x", None), False),     # the engine gave no start time
], ids=["held", "second-in-busy-slot", "idle-slot", "adopting", "unavailable", "worker-gone",
        "outside-pool", "no-slot-label", "young-in-idle-slot", "young-outside-pool", "start-unknown"])
def test_orphans(container, reaped):
    assert (orphaned([container], LIVE, slots=5, now=NOW, grace_seconds=120) == [container]) is reaped


def test_slot_missing_from_the_live_set_is_left_alone():
    assert orphaned([(1, "u", OLD)], LiveSet(MADE_AT, (SlotView(0, "idle", None),)), 2, NOW, 120) == []


@pytest.mark.parametrize("started", [MADE_AT, MADE_AT + 1])
def test_a_container_started_at_or_after_the_live_set_was_made_is_not_judged_on_it(started):
    # Even with no grace at all: the root could not have known of it yet.
    assert orphaned([(1, "uuid-x", started)], LIVE, 5, NOW, 0) == []
    assert orphaned([(1, "uuid-x", MADE_AT - 1)], LIVE, 5, NOW, 0) == [(1, "uuid-x", MADE_AT - 1)]


@pytest.mark.parametrize("made_at, fresh", [
    (NOW - LIVE_SET_MAX_AGE_SECONDS, True), (NOW - LIVE_SET_MAX_AGE_SECONDS - 1, False),
    (NOW + 60, False)], ids=["at-the-limit", "too-old", "from-the-future"])
def test_only_a_fresh_live_set_removes_anything(made_at, fresh):
    live = LiveSet(made_at, LIVE.slots)
    assert is_fresh(live, NOW) is fresh
    assert bool(orphaned([(7, "uuid-x", OLD)], live, 5, NOW, 120)) is fresh
    assert orphaned([(7, "uuid-x", OLD)], None, 5, NOW, 120) == []


def test_a_young_container_of_a_slot_idle_in_an_old_live_set_stays():
    """Issue 9: a slot idle in the last live set started a machine 32 s ago; meanwhile another
    slot never settled. The old live set must not condemn the new container, and neither
    must a fresh one, which shows the machine or marks its slot unsettled."""
    made_at = NOW - 35
    stale = LiveSet(made_at, (SlotView(0, "idle", None), SlotView(1, "running", "uuid-b")))
    container = (0, "uuid-new", NOW - 32)
    assert orphaned([container], stale, 2, NOW, 30) == []
    fresh = LiveSet(NOW - 1, (SlotView(0, "running", "uuid-new"),
                              SlotView(1, "stopping", "uuid-b", settled=False)))
    assert orphaned([container], fresh, 2, NOW, 30) == []


def test_the_message_entries_become_slot_views():
    live = live_set_from_message(MADE_AT, [
        {"slot": 0, "state": "running", "uuid": "uuid-a", "settled": True},
        {"slot": 1, "state": "running", "uuid": "uuid-b", "settled": False}])
    assert live == LiveSet(MADE_AT, (SlotView(0, "running", "uuid-a"),
                                     SlotView(1, "running", "uuid-b", settled=False)))


@pytest.mark.parametrize("age_days, days, result", [
    (3.1, 3, True), (2.9, 3, False), (0.5, 0.25, True), (None, 3, False)])
def test_expired(age_days, days, result):
    finished_at = None if age_days is None else NOW - age_days * 86400
    assert expired(finished_at, days, NOW) is result
