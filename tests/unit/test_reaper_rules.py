"""Which containers the reaper may remove, and which directories have expired."""

import pytest

from vac.workers.reaper_rules import SlotView, expired, orphaned

NOW = 1_800_000_000.0
OLD = NOW - 1000
LIVE = [SlotView(0, "running", "uuid-a"), SlotView(1, "idle", None),
        SlotView(2, "adopting", None), SlotView(3, "unavailable", None)]


@pytest.mark.parametrize("container, reaped", [
    ((0, "uuid-a", OLD), False),      # the machine slot 0 holds
    ((0, "uuid-x", OLD), True),       # a second container in a busy slot
    ((1, "uuid-x", OLD), True),       # a container in an idle slot
    ((2, "uuid-x", OLD), False),      # its worker is adopting: leave it
    ((3, "uuid-x", OLD), False),      # the engine was unreachable for that slot
    ((7, "uuid-x", OLD), True),       # outside the pool (slots were reduced)
    ((None, "uuid-x", OLD), True),    # no usable slot label
    ((1, "uuid-x", NOW - 10), False),  # younger than the grace period
    ((7, "uuid-x", NOW - 10), False),
], ids=["held", "second-in-busy-slot", "idle-slot", "adopting", "unavailable",
        "outside-pool", "no-slot-label", "young-in-idle-slot", "young-outside-pool"])
def test_orphans(container, reaped):
    assert (orphaned([container], LIVE, slots=4, now=NOW, grace_seconds=120) == [container]) is reaped


def test_slot_missing_from_the_live_set_is_left_alone():
    assert orphaned([(1, "u", OLD)], [SlotView(0, "idle", None)], 2, NOW, 120) == []


@pytest.mark.parametrize("age_days, days, result", [
    (3.1, 3, True), (2.9, 3, False), (0.5, 0.25, True), (None, 3, False)])
def test_expired(age_days, days, result):
    finished_at = None if age_days is None else NOW - age_days * 86400
    assert expired(finished_at, days, NOW) is result
