"""Properties every placement keeps, whatever the configuration and the running machines."""

import random

from hypothesis import given, settings, strategies as st

from vac.supervisor.aborts import OutcomeHistory
from vac.supervisor.scheduler import (
    FactoryCapacity, MachinetypeDemand, NoPlacement, NoPlacementReason as Why, Placement,
    RunningMachine, fill_free_slots, free_processors, machinetype_backoff_until, next_placement,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
NAMES = ("alpha", "beta", "gamma", "delta")
REPOSITORIES = ("atlas.cern.ch", "lhcb.cern.ch")

factories = st.builds(
    FactoryCapacity,
    total_processors=st.integers(1, 24),
    processors_per_superslot=st.integers(1, 8),
    hs06_per_processor=st.sampled_from([None, 10.0, 17.5]),
    shutdown_time=st.one_of(st.none(), st.none(), st.floats(NOW - HOUR, NOW + 48 * HOUR)),
    draining=st.integers(0, 9).map(lambda n: n == 0),
)


@st.composite
def machinetype_lists(draw):
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1, max_size=4))
    types = []
    for name in names:
        low = draw(st.integers(1, 4))
        longest = draw(st.sampled_from([HOUR, 6 * HOUR, 24 * HOUR]))
        types.append(MachinetypeDemand(
            name=name, target_share=draw(st.sampled_from([0, 0.5, 1, 1, 3])),
            machinegroup=draw(st.sampled_from([None, "g1", "g2"])),
            min_processors=low, max_processors=low + draw(st.integers(0, 4)),
            min_wallclock_seconds=draw(st.sampled_from([0.0, HOUR / 2, None])),
            max_wallclock_seconds=longest, backoff_seconds=draw(st.sampled_from([10, 600])),
            fizzle_seconds=600,
            cvmfs_repositories=tuple(draw(st.lists(st.sampled_from(REPOSITORIES), unique=True))),
            paused=draw(st.integers(0, 4).map(lambda n: n == 0))))
    return types


@st.composite
def situations(draw):
    factory = draw(factories)
    machinetypes = draw(machinetype_lists())
    running = []
    used = 0
    for slot in range(draw(st.integers(0, factory.total_processors))):
        processors = draw(st.integers(1, 4))
        if used + processors > factory.total_processors:
            break
        used += processors
        running.append(RunningMachine(
            slot=slot, machinetype=draw(st.sampled_from(NAMES)), processors=processors,
            started_at=NOW - draw(st.floats(0, 10 * HOUR)),
            shutdown_at=NOW + draw(st.sampled_from([HOUR / 2, HOUR, 5 * HOUR, 20 * HOUR])),
            superslot=draw(st.integers(1, 6)), hs06=float(processors)))
    histories = {name: OutcomeHistory(last_abort_at=draw(st.one_of(
        st.none(), st.none(), st.floats(NOW - 2 * HOUR, NOW)))) for name in NAMES}
    unavailable = draw(st.sampled_from([frozenset(), frozenset(), frozenset(REPOSITORIES[:1])]))
    return factory, machinetypes, running, histories, unavailable


@settings(max_examples=200, deadline=None)
@given(situations(), st.floats(0, 60), st.integers(0, 2**32))
def test_every_placement_respects_the_rules(situation, load, seed):
    factory, machinetypes, running, histories, unavailable = situation
    decision = next_placement(factory, machinetypes, running, histories, now=NOW,
                              load_average=load, rng=random.Random(seed),
                              unavailable_repositories=unavailable)
    again = next_placement(factory, machinetypes, running, histories, now=NOW,
                           load_average=load, rng=random.Random(seed),
                           unavailable_repositories=unavailable)
    assert decision == again   # same inputs and seed, same answer

    if isinstance(decision, NoPlacement):
        assert decision.text
        if decision.retry_at is not None:
            assert decision.retry_at > NOW
        if decision.reason is Why.ALL_PROCESSORS_IN_USE:
            assert free_processors(factory, running) <= 0
        if decision.reason is Why.LOAD_TOO_HIGH:
            assert load > factory.overload_per_processor * factory.total_processors
        return

    assert isinstance(decision, Placement)
    assert not factory.draining
    assert load <= factory.overload_per_processor * factory.total_processors
    terms = next(t for t in machinetypes if t.name == decision.machinetype)
    assert terms.target_share > 0 and not terms.paused
    assert not set(terms.cvmfs_repositories) & unavailable
    assert machinetype_backoff_until(terms, histories.get(terms.name), running, NOW) is None
    assert terms.min_processors <= decision.processors <= terms.max_processors
    assert decision.processors <= free_processors(factory, running)
    assert NOW + terms.shortest_wallclock <= decision.shutdown_at
    assert decision.shutdown_at <= NOW + terms.max_wallclock_seconds
    if factory.shutdown_time is not None:
        assert decision.shutdown_at <= factory.shutdown_time
    members = [m for m in running if m.superslot == decision.superslot]
    assert decision.new_superslot == (not members)
    if members:
        assert sum(m.processors for m in members) + decision.processors \
            <= factory.processors_per_superslot
        assert decision.shutdown_at == min([m.shutdown_at for m in members]
                                           + [factory.shutdown_time or float("inf")])
    else:
        assert decision.processors <= factory.processors_per_superslot


@settings(max_examples=100, deadline=None)
@given(situations(), st.integers(0, 2**32))
def test_filling_never_overcommits_processors(situation, seed):
    factory, machinetypes, running, histories, unavailable = situation
    taken = {m.slot for m in running}
    free_slots = [s for s in range(factory.total_processors) if s not in taken]
    placements, refusal = fill_free_slots(factory, machinetypes, running, histories, free_slots,
                                          now=NOW, load_average=0.0, rng=random.Random(seed),
                                          unavailable_repositories=unavailable)
    used = sum(m.processors for m in running) + sum(p.processors for _, p in placements)
    assert used <= factory.total_processors
    assert len({slot for slot, _ in placements}) == len(placements)
    assert {slot for slot, _ in placements} <= set(free_slots)
    assert refusal is not None or len(placements) == len(free_slots)
