"""A simulated day of one 64-processor factory: one machinetype aborts for an hour, then recovers.

Event-driven with a fake clock: machines start when the scheduler places them
and end when their job does (or when they fizzle). Run with -s to see the
occupancy chart.
"""

import heapq
import random
from collections import Counter

import pytest

from vac.supervisor.aborts import OutcomeHistory, record_outcome
from vac.supervisor.scheduler import (
    FactoryCapacity, MachinetypeDemand, NoPlacementReason, fill_free_slots, placed_machine,
)

START = 1_700_000_000.0
MINUTE = 60.0
HOUR = 3600.0
DAY = 24 * HOUR
BIN = 10 * MINUTE
TOTAL = 64
FACTORY = FactoryCapacity(total_processors=TOTAL)
SHARES = {"atlas": 50, "cms": 30, "lhcb": 20}
ABORTING = "lhcb"
ABORTING_UNTIL = START + HOUR
MACHINETYPES = [MachinetypeDemand(name, share, max_wallclock_seconds=6 * HOUR,
                                 backoff_seconds=300, fizzle_seconds=600)
                for name, share in SHARES.items()]
IDEAL = {name: TOTAL * share / sum(SHARES.values()) for name, share in SHARES.items()}


class Occupancy:
    """Processor-seconds per machinetype per BIN, integrated between events."""

    def __init__(self):
        self.bins = [Counter() for _ in range(int(DAY // BIN))]
        self.last = START

    def advance(self, now, running):
        held = Counter()
        for machine in running.values():
            held[machine.machinetype] += machine.processors
        t = self.last
        while t < now:
            index = int((t - START) // BIN)
            edge = min(now, START + (index + 1) * BIN)
            if index < len(self.bins):
                for name, processors in held.items():
                    self.bins[index][name] += processors * (edge - t)
            t = edge
        self.last = now

    def mean(self, name, from_seconds, to_seconds):
        """Mean processors held by `name` between two offsets from the start of the day."""
        chosen = self.bins[int(from_seconds // BIN):int(to_seconds // BIN)]
        return sum(b[name] for b in chosen) / (len(chosen) * BIN)

    def chart(self):
        letters = {name: name[0].upper() for name in SHARES}
        lines = ["time   " + " ".join(f"{name:>6}" for name in SHARES) + "  occupancy of "
                 f"{TOTAL} processors (ideal " + " ".join(f"{n} {IDEAL[n]:.1f}" for n in SHARES)
                 + ")"]
        for index, bin_ in enumerate(self.bins):
            minutes = int(index * BIN // MINUTE)
            means = {name: bin_[name] / BIN for name in SHARES}
            bar = "".join(letters[name] * round(means[name]) for name in SHARES)
            lines.append(f"{minutes // 60:02d}:{minutes % 60:02d}  "
                         + " ".join(f"{means[name]:6.1f}" for name in SHARES)
                         + f"  |{bar:<{TOTAL}}|")
        return "\n".join(lines)


def simulate_day(seed):
    """Run the scheduler over a day; returns the occupancy and every NoPlacement reason seen."""
    rng = random.Random(seed)          # the scheduler's tie-breaking
    jobs = random.Random(seed + 1000)  # job lengths and fizzle times
    running = {}
    histories = {}
    ends = []                          # heap of (time, sequence, slot) for running machines
    retries = []                       # heap of times a machinetype leaves backoff
    refusals = Counter()
    occupancy = Occupancy()
    sequence = 0

    def fill(now):
        nonlocal sequence
        free_slots = [slot for slot in range(TOTAL) if slot not in running]
        placements, refusal = fill_free_slots(FACTORY, MACHINETYPES, list(running.values()),
                                              histories, free_slots, now=now, load_average=0.0,
                                              rng=rng)
        for slot, placement in placements:
            machine = placed_machine(FACTORY, placement, slot, now)
            running[slot] = machine
            if placement.machinetype == ABORTING and now < ABORTING_UNTIL:
                end = now + jobs.uniform(1 * MINUTE, 3 * MINUTE)
            else:
                end = now + jobs.uniform(20 * MINUTE, 5.5 * HOUR)
            sequence += 1
            heapq.heappush(ends, (min(end, placement.shutdown_at), sequence, slot))
        if refusal is not None:
            refusals[refusal.reason] += 1
            if refusal.retry_at is not None:
                heapq.heappush(retries, refusal.retry_at)

    fill(START)
    while True:
        next_end = ends[0][0] if ends else float("inf")
        next_retry = retries[0] if retries else float("inf")
        now = min(next_end, next_retry)
        if now >= START + DAY:
            break
        occupancy.advance(now, running)
        if next_retry <= next_end:
            heapq.heappop(retries)
        else:
            _, _, slot = heapq.heappop(ends)
            machine = running.pop(slot)
            terms = next(t for t in MACHINETYPES if t.name == machine.machinetype)
            if now >= machine.shutdown_at:
                code = 700    # the factory ended it: Exceeded max_wallclock_seconds
            elif machine.machinetype == ABORTING and machine.started_at < ABORTING_UNTIL:
                code = 500    # site/environment problem, soon after start
            else:
                code = 200
            histories[machine.machinetype] = record_outcome(
                histories.get(machine.machinetype, OutcomeHistory()), machine.started_at, now,
                code, terms.fizzle_seconds)
        fill(now)
    occupancy.advance(START + DAY, running)
    return occupancy, refusals


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aborting_type_backs_off_others_fill_its_share_then_it_recovers(seed):
    occupancy, refusals = simulate_day(seed)
    print(f"\nseed {seed}\n" + occupancy.chart())

    # During the first hour the aborting type holds few processors and the
    # others fill its share: the factory stays (nearly) full.
    early = (10 * MINUTE, HOUR)
    assert occupancy.mean(ABORTING, *early) <= 2.0
    others = [name for name in SHARES if name != ABORTING]
    assert sum(occupancy.mean(name, *early) for name in others) >= TOTAL - 2.5
    for name in others:
        assert occupancy.mean(name, *early) > IDEAL[name]

    # Once it works again it wins processors back, and by the end of the day
    # every type holds close to its share.
    late = (18 * HOUR, DAY)
    for name in SHARES:
        assert occupancy.mean(name, *late) == pytest.approx(IDEAL[name], abs=2.5), name
    assert sum(occupancy.mean(name, *late) for name in SHARES) >= TOTAL - 1

    # Slots only stay empty because every processor is in use (no stray refusal).
    assert set(refusals) <= {NoPlacementReason.ALL_PROCESSORS_IN_USE}
