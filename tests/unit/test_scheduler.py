"""What the scheduler starts in free slots, and why it sometimes starts nothing (vac.supervisor.scheduler)."""

import random
from collections import Counter

import pytest

from vac.supervisor.aborts import OutcomeHistory, record_outcome
from vac.supervisor.scheduler import (
    FactoryCapacity, MachinetypeDemand, NoPlacement, NoPlacementReason as Why, Placement,
    RunningMachine, backoff_table, fill_free_slots, group_scores,
    next_placement, placed_machine, share_scores, start_gate,
)

NOW = 1_700_000_000.0
HOUR = 3600.0


def mt(name, share, **terms):
    return MachinetypeDemand(name=name, target_share=share, **terms)


def machine(slot, machinetype, *, processors=1, started_at=NOW - HOUR, shutdown_at=None,
            superslot=None, hs06=None):
    return RunningMachine(slot=slot, machinetype=machinetype, processors=processors,
                          started_at=started_at,
                          shutdown_at=NOW + 10 * HOUR if shutdown_at is None else shutdown_at,
                          superslot=100 + slot if superslot is None else superslot,
                          hs06=float(processors) if hs06 is None else hs06)


def decide(factory, machinetypes, running=(), histories=None, *, now=NOW, load=0.0, seed=1,
           space_hs06=None, unavailable=frozenset()):
    return next_placement(factory, machinetypes, list(running), histories or {}, now=now,
                          load_average=load, rng=random.Random(seed), space_hs06=space_hs06,
                          unavailable_repositories=unavailable)


def fill(factory, machinetypes, running=(), histories=None, *, now=NOW, seed=1, space_hs06=None):
    """Fill every free slot of an otherwise idle factory; returns the placements and the final refusal."""
    taken = {m.slot for m in running}
    free_slots = [slot for slot in range(factory.total_processors) if slot not in taken]
    return fill_free_slots(factory, machinetypes, list(running), histories or {}, free_slots,
                           now=now, load_average=0.0, rng=random.Random(seed),
                           space_hs06=space_hs06)


# --- gates -----------------------------------------------------------------

FOUR = FactoryCapacity(total_processors=4)


@pytest.mark.parametrize("factory, running, load, expected", [
    pytest.param(FactoryCapacity(4, draining=True), [], 0.0, Why.DRAINING, id="draining"),
    pytest.param(FactoryCapacity(4, shutdown_time=NOW - 1), [], 0.0, Why.SHUTDOWN_TIME_PASSED,
                 id="shutdown-time-passed"),
    pytest.param(FactoryCapacity(4, shutdown_time=NOW), [], 0.0, Why.SHUTDOWN_TIME_PASSED,
                 id="shutdown-time-is-now"),
    pytest.param(FOUR, [], 5.01, Why.LOAD_TOO_HIGH, id="load-above-1.25-per-processor"),
    pytest.param(FactoryCapacity(4, overload_per_processor=2.0), [], 8.5, Why.LOAD_TOO_HIGH,
                 id="load-above-configured-overload"),
    pytest.param(FOUR, [machine(s, "a") for s in range(4)], 0.0, Why.ALL_PROCESSORS_IN_USE,
                 id="all-processors-in-use"),
    pytest.param(FOUR, [machine(0, "a", processors=4)], 0.0, Why.ALL_PROCESSORS_IN_USE,
                 id="one-machine-holds-all-processors"),
    pytest.param(FactoryCapacity(4, draining=True, shutdown_time=NOW - 1), [], 99.0, Why.DRAINING,
                 id="draining-named-before-other-gates"),
])
def test_gate_stops_every_start(factory, running, load, expected):
    decision = decide(factory, [mt("a", 1)], running, load=load)
    assert isinstance(decision, NoPlacement)
    assert decision.reason is expected
    assert decision.text
    assert start_gate(factory, running, load, NOW).reason is expected


@pytest.mark.parametrize("factory, running, load", [
    pytest.param(FOUR, [], 5.0, id="load-exactly-at-the-limit"),
    pytest.param(FactoryCapacity(4, shutdown_time=NOW + 2 * 86400), [], 0.0,
                 id="shutdown-time-in-future"),
    pytest.param(FOUR, [machine(s, "a") for s in range(3)], 0.0, id="one-processor-free"),
])
def test_gate_open(factory, running, load):
    assert start_gate(factory, running, load, NOW) is None
    assert isinstance(decide(factory, [mt("a", 1)], running, load=load), Placement)


# --- reasons a machinetype is not eligible ---------------------------------

ABORTED = {"a": OutcomeHistory(last_abort_at=NOW - 5), "b": OutcomeHistory(last_abort_at=NOW - 2)}
SOON = FactoryCapacity(4, shutdown_time=NOW + HOUR)


@pytest.mark.parametrize("factory, machinetypes, histories, unavailable, expected, retry_at", [
    pytest.param(FOUR, [], {}, set(), Why.NO_SHARE, None, id="no-machinetypes"),
    pytest.param(FOUR, [mt("a", 0), mt("b", -1)], {}, set(), Why.NO_SHARE, None,
                 id="no-share-above-zero"),
    pytest.param(FOUR, [mt("a", 1, paused=True), mt("b", 0)], {}, set(), Why.PAUSED, None,
                 id="only-shared-type-paused"),
    pytest.param(FOUR, [mt("a", 1, cvmfs_repositories=("lhcb.cern.ch", "grid.cern.ch"))], {},
                 {"lhcb.cern.ch"}, Why.CVMFS_UNAVAILABLE, None, id="cvmfs-repository-unavailable"),
    pytest.param(SOON, [mt("a", 1, min_wallclock_seconds=2 * HOUR, max_wallclock_seconds=9 * HOUR)],
                 {}, set(), Why.NOT_ENOUGH_TIME, None, id="min-wallclock-beyond-shutdown-time"),
    pytest.param(SOON, [mt("a", 1, max_wallclock_seconds=2 * HOUR)], {}, set(),
                 Why.NOT_ENOUGH_TIME, None, id="default-min-wallclock-is-max-wallclock"),
    pytest.param(FOUR, [mt("a", 1), mt("b", 1)], ABORTED, set(), Why.ALL_IN_BACKOFF, NOW + 5,
                 id="all-in-backoff-retry-at-first-end"),
    pytest.param(FOUR, [mt("a", 1), mt("b", 1, paused=True), mt("c", 0)], ABORTED, set(),
                 Why.ALL_IN_BACKOFF, NOW + 5, id="backoff-headline-over-paused"),
    pytest.param(FOUR, [mt("a", 1, cvmfs_repositories=("x",)), mt("b", 1, paused=True)], {},
                 {"x"}, Why.CVMFS_UNAVAILABLE, None, id="cvmfs-headline-over-paused"),
    pytest.param(FOUR, [mt("a", 1, min_processors=8, max_processors=8)], {}, set(),
                 Why.TOO_FEW_PROCESSORS, None, id="min-processors-above-total"),
    pytest.param(FOUR, [mt("a", 1, min_processors=8, max_processors=8), mt("b", 1)],
                 {"b": OutcomeHistory(last_abort_at=NOW - 1)}, set(), Why.TOO_FEW_PROCESSORS,
                 NOW + 9, id="too-few-processors-still-says-when-backoff-ends"),
])
def test_no_placement_reason(factory, machinetypes, histories, unavailable, expected, retry_at):
    decision = decide(factory, machinetypes, histories=histories, unavailable=unavailable)
    assert isinstance(decision, NoPlacement)
    assert decision.reason is expected
    assert decision.retry_at == retry_at
    for terms in machinetypes:
        if expected is not Why.NO_SHARE:
            assert terms.name in decision.text  # status names every machinetype's obstacle


def test_mjf_http_machinetypes_wait_while_machine_job_features_are_not_served_over_http():
    machinetypes = [mt("dirac", 100, mjf_http=True), mt("panda", 1)]
    served = next_placement(FOUR, machinetypes, [], {}, now=NOW, load_average=0.0, rng=random.Random(1))
    assert served.machinetype == "dirac"
    waiting = next_placement(FOUR, machinetypes, [], {}, now=NOW, load_average=0.0, rng=random.Random(1),
                             mjf_http_unavailable="no IPv4 address on docker0")
    assert waiting.machinetype == "panda", "a machinetype reading files starts meanwhile"
    alone = next_placement(FOUR, machinetypes[:1], [], {}, now=NOW, load_average=0.0, rng=random.Random(1),
                           mjf_http_unavailable="no IPv4 address on docker0")
    assert alone.reason is Why.MJF_HTTP_UNAVAILABLE
    assert "dirac: mjf_http, but Machine/Job Features are not served over HTTP: no IPv4 address on docker0" \
        in alone.text
    placements, refusal = fill_free_slots(FOUR, machinetypes[:1], [], {}, [0, 1], now=NOW, load_average=0.0,
                                          rng=random.Random(1), mjf_http_unavailable="restarting")
    assert placements == [] and refusal.reason is Why.MJF_HTTP_UNAVAILABLE


def test_retry_at_is_when_a_placement_succeeds():
    decision = decide(FOUR, [mt("a", 1), mt("b", 1)], histories=ABORTED)
    assert isinstance(decision, NoPlacement)
    assert isinstance(decide(FOUR, [mt("a", 1), mt("b", 1)], histories=ABORTED,
                             now=decision.retry_at - 0.5), NoPlacement)
    placed = decide(FOUR, [mt("a", 1), mt("b", 1)], histories=ABORTED, now=decision.retry_at)
    assert placed.machinetype == "a"


def test_ineligible_types_are_skipped_for_eligible_ones():
    machinetypes = [mt("paused", 100, paused=True), mt("cvmfs", 100, cvmfs_repositories=("x",)),
                    mt("backoff", 100), mt("long", 100, max_wallclock_seconds=5 * HOUR),
                    mt("ok", 1, max_wallclock_seconds=HOUR)]
    factory = FactoryCapacity(8, shutdown_time=NOW + 2 * HOUR)
    placements, refusal = fill(factory, machinetypes,
                               histories={"backoff": OutcomeHistory(last_abort_at=NOW)})
    assert {p.machinetype for _, p in placements} == {"ok"}
    assert len(placements) == 8 and refusal is None


# --- backoff after shutdown codes ------------------------------------------

@pytest.mark.parametrize("code, lived, backs_off", [
    pytest.param(100, 5 * HOUR, False, id="100-no-backoff"),
    pytest.param(200, 5 * HOUR, False, id="200-no-backoff"),
    pytest.param(200, 60, False, id="200-quickly-no-backoff"),
    pytest.param(300, 5 * HOUR, True, id="300-backoff"),
    pytest.param(500, 60, True, id="500-backoff"),
    pytest.param(700, 5 * HOUR, True, id="700-backoff"),
    pytest.param(None, 60, True, id="silent-fizzle-backoff"),
    pytest.param(None, 5 * HOUR, False, id="no-message-after-fizzle-seconds-no-backoff"),
])
def test_backoff_after_shutdown_code(code, lived, backs_off):
    machinetypes = [mt("a", 1, backoff_seconds=300)]
    ended_at = NOW - 10
    histories = {"a": record_outcome(OutcomeHistory(), ended_at - lived, ended_at, code, 600)}
    decision = decide(FOUR, machinetypes, histories=histories)
    if backs_off:
        assert decision.reason is Why.ALL_IN_BACKOFF
        assert decision.retry_at == ended_at + 300
        assert backoff_table(machinetypes, histories, [], NOW) == {"a": ended_at + 300}
        assert isinstance(decide(FOUR, machinetypes, histories=histories, now=ended_at + 300),
                          Placement)
    else:
        assert isinstance(decision, Placement) and decision.machinetype == "a"
        assert backoff_table(machinetypes, histories, [], NOW) == {}


def test_backoff_holds_one_type_while_others_take_its_place():
    machinetypes = [mt("a", 80, backoff_seconds=300), mt("b", 20)]
    histories = {"a": record_outcome(OutcomeHistory(), NOW - 100, NOW - 50, 500, 600)}
    placements, refusal = fill(FactoryCapacity(10), machinetypes, histories=histories)
    assert Counter(p.machinetype for _, p in placements) == {"b": 10}
    assert refusal is None


@pytest.mark.parametrize("young_started_at, now, in_backoff_until", [
    pytest.param(None, NOW + 100, None, id="no-young-machine-plain-backoff-over"),
    pytest.param(NOW - 30, NOW + 100, NOW + 570, id="young-machine-extends-until-it-ages"),
    pytest.param(NOW + 250, NOW + 300, NOW + 100 + 600, id="extension-capped-at-fizzle-seconds"),
    pytest.param(NOW - 30, NOW + 570, None, id="young-machine-now-old"),
])
def test_fizzle_extension(young_started_at, now, in_backoff_until):
    # aborted at NOW, backoff_seconds 100, fizzle_seconds 600
    machinetypes = [mt("a", 1, backoff_seconds=100, fizzle_seconds=600)]
    histories = {"a": OutcomeHistory(last_abort_at=NOW)}
    running = [] if young_started_at is None else [machine(0, "a", started_at=young_started_at)]
    decision = decide(FOUR, machinetypes, running, histories, now=now)
    if in_backoff_until is None:
        assert isinstance(decision, Placement)
    else:
        assert decision.reason is Why.ALL_IN_BACKOFF
        assert decision.retry_at == in_backoff_until


def test_young_machine_of_another_type_does_not_extend():
    machinetypes = [mt("a", 1, backoff_seconds=100), mt("b", 1)]
    histories = {"a": OutcomeHistory(last_abort_at=NOW - 100)}
    running = [machine(0, "b", started_at=NOW - 5), machine(1, "b", started_at=NOW - 5)]
    assert decide(FOUR, machinetypes, running, histories).machinetype == "a"


# --- shares ----------------------------------------------------------------

@pytest.mark.parametrize("total, shares", [
    pytest.param(64, {"a": 50, "b": 30, "c": 20}, id="64-processors-50-30-20"),
    pytest.param(7, {"a": 1, "b": 1}, id="7-processors-equal-shares"),
    pytest.param(10, {"a": 3, "b": 1}, id="10-processors-3-to-1"),
    pytest.param(100, {"a": 0.5, "b": 0.25, "c": 0.15, "d": 0.1}, id="100-processors-four-types"),
    pytest.param(33, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, id="33-processors-five-types"),
])
def test_shares_converge_within_one_processor(total, shares):
    machinetypes = [mt(name, share) for name, share in shares.items()]
    placements, refusal = fill(FactoryCapacity(total), machinetypes)
    assert len(placements) == total and refusal is None
    counts = Counter(p.machinetype for _, p in placements)
    whole = sum(shares.values())
    for name, share in shares.items():
        assert abs(counts[name] - total * share / whole) <= 1, (name, counts)


def test_shares_count_hs06_of_the_whole_space():
    # Other factories already run 40 HS06 of "a": this factory makes up with "b".
    machinetypes = [mt("a", 1), mt("b", 1)]
    placements, _ = fill(FactoryCapacity(20, hs06_per_processor=10.0), machinetypes,
                         space_hs06={"a": 40.0})
    counts = Counter(p.machinetype for _, p in placements)
    assert counts == {"b": 12, "a": 8}   # space-wide: a 40+80, b 120


def test_shares_weigh_processors():
    # Four-processor machines of "big" count four times as much as one-processor ones.
    machinetypes = [mt("big", 1, min_processors=4, max_processors=4), mt("small", 1)]
    placements, _ = fill(FactoryCapacity(16, processors_per_superslot=4), machinetypes)
    used = Counter()
    for _, placement in placements:
        used[placement.machinetype] += placement.processors
    assert used == {"big": 8, "small": 8}


def test_share_and_group_scores():
    machinetypes = [mt("a", 2, machinegroup="g"), mt("b", 4, machinegroup="g"), mt("c", 1),
                    mt("z", 0)]
    running = [machine(0, "a", hs06=10.0), machine(1, "b", hs06=10.0), machine(2, "z")]
    scores = share_scores(machinetypes, running, {"c": 3.0})
    assert scores == {"a": 5.0, "b": 2.5, "c": 3.0}
    assert group_scores(machinetypes, scores) == {"g": 7.5, "c": 3.0}


# --- machinegroups ---------------------------------------------------------

@pytest.mark.parametrize("running, expected", [
    pytest.param([machine(0, "a")], "c", id="group-score-beats-lower-member-score"),
    pytest.param([machine(0, "c"), machine(1, "c"), machine(2, "a")], "b",
                 id="lowest-member-of-lowest-group"),
    pytest.param([machine(s, "c") for s in range(3)] + [machine(3, "b"), machine(4, "b")], "a",
                 id="group-then-type-score"),
    pytest.param([machine(s, "c") for s in range(3)] + [machine(s, "ab"[s % 2]) for s in
                                                         range(3, 7)], "c",
                 id="group-sum-above-single-type-whose-score-is-higher-than-each-member"),
])
def test_machinegroups(running, expected):
    machinetypes = [mt("a", 1, machinegroup="g"), mt("b", 1, machinegroup="g"), mt("c", 1)]
    assert decide(FactoryCapacity(8), machinetypes, running).machinetype == expected


# --- tie-breaking ----------------------------------------------------------

def test_ties_broken_by_the_seeded_random_source():
    machinetypes = [mt(name, 1) for name in "abcdef"]
    first = {seed: decide(FOUR, machinetypes, seed=seed).machinetype for seed in range(40)}
    assert first == {seed: decide(FOUR, machinetypes, seed=seed).machinetype
                     for seed in range(40)}
    assert len(set(first.values())) > 1   # ties are not always won by the same name
    reversed_order = {seed: decide(FOUR, machinetypes[::-1], seed=seed).machinetype
                      for seed in range(40)}
    assert reversed_order == first        # configuration order does not matter


def test_same_seed_gives_same_placements():
    machinetypes = [mt("a", 1), mt("b", 1), mt("c", 1)]
    runs = [fill(FactoryCapacity(31), machinetypes, seed=7)[0] for _ in range(2)]
    assert runs[0] == runs[1]


# --- superslots ------------------------------------------------------------

SUPER = FactoryCapacity(total_processors=16, processors_per_superslot=4)


def any_size(name="a", **terms):
    terms.setdefault("max_processors", 4)
    terms.setdefault("min_wallclock_seconds", HOUR)
    terms.setdefault("max_wallclock_seconds", 6 * HOUR)
    return mt(name, 1, **terms)


@pytest.mark.parametrize("factory, terms, running, expected", [
    pytest.param(SUPER, any_size(), [],
                 Placement("a", 4, NOW + 6 * HOUR, 1, new_superslot=True),
                 id="empty-factory-new-full-superslot"),
    pytest.param(SUPER, any_size(), [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 3, NOW + 3 * HOUR, 7, new_superslot=False),
                 id="fill-unfinished-superslot-with-its-shutdown"),
    pytest.param(SUPER, any_size(max_processors=2),
                 [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 2, NOW + 3 * HOUR, 7, new_superslot=False),
                 id="fill-capped-at-max-processors"),
    pytest.param(SUPER, any_size(max_wallclock_seconds=2 * HOUR),
                 [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 4, NOW + 2 * HOUR, 8, new_superslot=True),
                 id="superslot-time-beyond-max-wallclock-new-superslot"),
    pytest.param(SUPER, any_size(min_wallclock_seconds=4 * HOUR),
                 [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 4, NOW + 6 * HOUR, 8, new_superslot=True),
                 id="superslot-time-below-min-wallclock-new-superslot"),
    pytest.param(SUPER, any_size(min_processors=4),
                 [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 4, NOW + 6 * HOUR, 8, new_superslot=True),
                 id="superslot-room-below-min-processors-new-superslot"),
    pytest.param(SUPER, any_size(), [machine(0, "b", processors=4, superslot=7)],
                 Placement("a", 4, NOW + 6 * HOUR, 8, new_superslot=True),
                 id="full-superslot-not-filled"),
    pytest.param(SUPER, any_size(),
                 [machine(0, "b", processors=3, superslot=2, shutdown_at=NOW + 2 * HOUR),
                  machine(1, "b", processors=2, superslot=5, shutdown_at=NOW + 5 * HOUR)],
                 Placement("a", 2, NOW + 5 * HOUR, 5, new_superslot=False),
                 id="superslot-with-most-time-left-first"),
    pytest.param(SUPER, any_size(),
                 [machine(0, "b", superslot=3, shutdown_at=NOW + 3 * HOUR),
                  machine(1, "c", processors=2, superslot=3, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 1, NOW + 3 * HOUR, 3, new_superslot=False),
                 id="superslot-of-two-machines-has-one-processor-left"),
    pytest.param(SUPER, any_size(),
                 [machine(s, "b", processors=4, superslot=s) for s in range(3)]
                 + [machine(3, "b", processors=2, superslot=3, shutdown_at=NOW + 7 * HOUR)],
                 Placement("a", 2, NOW + 6 * HOUR, 4, new_superslot=True),
                 id="new-superslot-only-as-large-as-free-processors"),
    pytest.param(FactoryCapacity(16, processors_per_superslot=8), any_size(), [],
                 Placement("a", 4, NOW + 6 * HOUR, 1, new_superslot=True),
                 id="new-superslot-machine-capped-at-max-processors"),
    pytest.param(FactoryCapacity(16, processors_per_superslot=2), any_size(), [],
                 Placement("a", 2, NOW + 6 * HOUR, 1, new_superslot=True),
                 id="new-superslot-capped-at-processors-per-superslot"),
    pytest.param(FactoryCapacity(16, processors_per_superslot=4, shutdown_time=NOW + 4 * HOUR),
                 any_size(), [], Placement("a", 4, NOW + 4 * HOUR, 1, new_superslot=True),
                 id="new-superslot-shutdown-capped-at-shutdown-time"),
    pytest.param(FactoryCapacity(16, processors_per_superslot=4, shutdown_time=NOW + 2 * HOUR),
                 any_size(), [machine(0, "b", superslot=7, shutdown_at=NOW + 3 * HOUR)],
                 Placement("a", 3, NOW + 2 * HOUR, 7, new_superslot=False),
                 id="superslot-fill-shutdown-capped-at-shutdown-time"),
])
def test_superslots(factory, terms, running, expected):
    assert decide(factory, [terms], running) == expected


def test_superslot_filled_before_new_one_even_for_lower_scored_type():
    machinetypes = [any_size("a", max_processors=1), any_size("b", max_processors=1)]
    placements, refusal = fill(SUPER, machinetypes)
    superslots = Counter(p.superslot for _, p in placements)
    assert superslots == {1: 4, 2: 4, 3: 4, 4: 4}
    shutdowns = {p.superslot: p.shutdown_at for _, p in placements}
    assert all(p.shutdown_at == shutdowns[p.superslot] for _, p in placements)


def test_too_few_processors_falls_through_to_a_type_that_fits():
    machinetypes = [mt("big", 100, min_processors=4, max_processors=4), mt("small", 1)]
    running = [machine(s, "small") for s in range(14)]
    decision = decide(FactoryCapacity(16, processors_per_superslot=4), machinetypes, running)
    assert decision.machinetype == "small"


# --- min_wallclock against shutdown_time -----------------------------------

@pytest.mark.parametrize("left, min_wallclock, max_wallclock, expected_shutdown", [
    pytest.param(3 * HOUR, 2 * HOUR, 6 * HOUR, NOW + 3 * HOUR, id="enough-time-capped-shutdown"),
    pytest.param(3 * HOUR, 3 * HOUR, 6 * HOUR, NOW + 3 * HOUR, id="exactly-min-wallclock-left"),
    pytest.param(3 * HOUR - 1, 3 * HOUR, 6 * HOUR, None, id="one-second-short"),
    pytest.param(10 * HOUR, 2 * HOUR, 6 * HOUR, NOW + 6 * HOUR, id="shutdown-time-far-away"),
    pytest.param(5 * HOUR, None, 6 * HOUR, None, id="default-min-is-max-not-enough"),
])
def test_min_wallclock_against_shutdown_time(left, min_wallclock, max_wallclock,
                                             expected_shutdown):
    machinetypes = [mt("a", 1, min_wallclock_seconds=min_wallclock,
                       max_wallclock_seconds=max_wallclock)]
    decision = decide(FactoryCapacity(4, shutdown_time=NOW + left), machinetypes)
    if expected_shutdown is None:
        assert decision.reason is Why.NOT_ENOUGH_TIME
    else:
        assert decision.shutdown_at == expected_shutdown


# --- filling several slots -------------------------------------------------

def test_fill_free_slots_gives_each_slot_its_own_machine():
    factory = FactoryCapacity(12, hs06_per_processor=12.5)
    running = [machine(3, "a", hs06=12.5), machine(5, "b", hs06=12.5)]
    placements, refusal = fill(factory, [mt("a", 1), mt("b", 1)], running)
    slots = [slot for slot, _ in placements]
    assert slots == [s for s in range(12) if s not in (3, 5)]
    assert refusal is None
    superslots = [p.superslot for _, p in placements] + [101, 103, 105]
    assert len(set(superslots)) == len(superslots)
    assert placed_machine(factory, placements[0][1], 0, NOW).hs06 == 12.5


def test_fill_free_slots_stops_at_first_refusal():
    placements, refusal = fill(FactoryCapacity(4), [mt("a", 1)],
                               histories={"a": OutcomeHistory(last_abort_at=NOW)})
    assert placements == [] and refusal.reason is Why.ALL_IN_BACKOFF


def test_an_abort_elsewhere_in_the_space_names_the_factory_in_the_refusal():
    histories = {"alpha": OutcomeHistory(last_abort_at=NOW - 10, abort_elsewhere="f2.example.org")}
    decision = decide(FOUR, [mt("alpha", 1, backoff_seconds=100)], histories=histories)
    assert decision.reason is Why.ALL_IN_BACKOFF and decision.retry_at == NOW + 90
    assert "alpha: in backoff for another 90s (last abort on f2.example.org)" in decision.text
    young = {"alpha": OutcomeHistory(last_abort_at=NOW - 10, young_elsewhere=True)}
    assert decide(FOUR, [mt("alpha", 1, backoff_seconds=100, fizzle_seconds=60)],
                  histories=young).retry_at == NOW + 150
