"""Choose what to start in a free slot: target shares, backoff, superslots and gates (pure).

Implements INTERFACES.md §6–7. Callers pass everything in, `now` and the random
source included; nothing here reads clocks, files or the network.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Mapping, Sequence

from vac.config.model import DEFAULT_BACKOFF_SECONDS, DEFAULT_FIZZLE_SECONDS, DEFAULT_MAX_WALLCLOCK_SECONDS
from vac.supervisor.aborts import OutcomeHistory, backoff_until

# hs06_per_processor unset: shares are still weighted per processor.
DEFAULT_HS06_PER_PROCESSOR = 1.0


@dataclass(frozen=True, slots=True)
class MachinetypeDemand:
    """What the scheduler needs to know about one machinetype (Vac's defaults)."""
    name: str
    target_share: float
    machinegroup: str | None = None           # None: the machinetype's own name
    min_processors: int = 1
    max_processors: int = 1
    min_wallclock_seconds: float | None = None  # None: max_wallclock_seconds
    max_wallclock_seconds: float = DEFAULT_MAX_WALLCLOCK_SECONDS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    fizzle_seconds: float = DEFAULT_FIZZLE_SECONDS
    cvmfs_repositories: tuple[str, ...] = ()
    paused: bool = False
    mjf_http: bool = False                    # needs Machine/Job Features served over HTTP

    @property
    def group(self) -> str:
        """The machinegroup whose summed score this machinetype competes with."""
        return self.machinegroup or self.name

    @property
    def shortest_wallclock(self) -> float:
        """min_wallclock_seconds with Vac's default (= max_wallclock_seconds) applied."""
        if self.min_wallclock_seconds is None:
            return self.max_wallclock_seconds
        return self.min_wallclock_seconds


@dataclass(frozen=True, slots=True)
class FactoryCapacity:
    """The factory-wide settings that gate and shape every start."""
    total_processors: int
    processors_per_superslot: int = 1
    hs06_per_processor: float | None = None
    overload_per_processor: float = 1.25
    shutdown_time: float | None = None        # absolute Unix time
    draining: bool = False


@dataclass(frozen=True, slots=True)
class RunningMachine:
    """One machine of this factory in a slot; a superslot's machines share one shutdown time."""
    slot: int
    machinetype: str
    processors: int
    started_at: float
    shutdown_at: float
    superslot: int
    hs06: float


@dataclass(frozen=True, slots=True)
class Placement:
    """Start `machinetype` on `processors` processors until `shutdown_at`, in `superslot`."""
    machinetype: str
    processors: int
    shutdown_at: float
    superslot: int
    new_superslot: bool


class NoPlacementReason(enum.Enum):
    """Why nothing should start now."""
    DRAINING = "draining"
    SHUTDOWN_TIME_PASSED = "shutdown_time_passed"
    LOAD_TOO_HIGH = "load_too_high"
    ALL_PROCESSORS_IN_USE = "all_processors_in_use"
    NO_SHARE = "no_share"
    ALL_IN_BACKOFF = "all_in_backoff"
    NOT_ENOUGH_TIME = "not_enough_time"       # min_wallclock_seconds beyond shutdown_time
    CVMFS_UNAVAILABLE = "cvmfs_unavailable"
    MJF_HTTP_UNAVAILABLE = "mjf_http_unavailable"
    PAUSED = "paused"
    TOO_FEW_PROCESSORS = "too_few_processors"  # no eligible type fits the free processors


@dataclass(frozen=True, slots=True)
class NoPlacement:
    """Nothing starts now; `retry_at` is when a machinetype leaves backoff (None: no such time)."""
    reason: NoPlacementReason
    text: str
    retry_at: float | None = None


# When no machinetype is eligible, the headline is the obstacle most likely to
# clear by itself first; the text lists every machinetype's obstacle.
_HEADLINE_ORDER = (
    NoPlacementReason.ALL_IN_BACKOFF,
    NoPlacementReason.CVMFS_UNAVAILABLE,
    NoPlacementReason.MJF_HTTP_UNAVAILABLE,
    NoPlacementReason.PAUSED,
    NoPlacementReason.NOT_ENOUGH_TIME,
    NoPlacementReason.NO_SHARE,
)


def machine_hs06(factory: FactoryCapacity, processors: int) -> float:
    """The HS06 a machine of `processors` processors counts for in share scores."""
    per_processor = factory.hs06_per_processor
    if per_processor is None:
        per_processor = DEFAULT_HS06_PER_PROCESSOR
    return per_processor * processors


def free_processors(factory: FactoryCapacity, running: Iterable[RunningMachine]) -> int:
    """Processors not held by any running machine of this factory."""
    return factory.total_processors - sum(machine.processors for machine in running)


def placed_machine(factory: FactoryCapacity, placement: Placement, slot: int,
                   started_at: float) -> RunningMachine:
    """The running machine a placement becomes, to add to the running set before asking again."""
    return RunningMachine(slot=slot, machinetype=placement.machinetype,
                          processors=placement.processors, started_at=started_at,
                          shutdown_at=placement.shutdown_at, superslot=placement.superslot,
                          hs06=machine_hs06(factory, placement.processors))


def machinetype_backoff_until(machinetype: MachinetypeDemand, history: OutcomeHistory | None,
                              running: Iterable[RunningMachine], now: float) -> float | None:
    """When `machinetype` leaves backoff, or None if it may start at `now`."""
    if history is None:
        return None
    started = [m.started_at for m in running if m.machinetype == machinetype.name]
    return backoff_until(history.last_abort_at, machinetype.backoff_seconds,
                         machinetype.fizzle_seconds, started, now, history.young_elsewhere)


def backoff_table(machinetypes: Iterable[MachinetypeDemand],
                  histories: Mapping[str, OutcomeHistory],
                  running: Sequence[RunningMachine], now: float) -> dict[str, float]:
    """Machinetype name → time it leaves backoff, for the machinetypes in backoff at `now`."""
    table = {}
    for machinetype in machinetypes:
        until = machinetype_backoff_until(machinetype, histories.get(machinetype.name), running, now)
        if until is not None:
            table[machinetype.name] = until
    return table


def share_scores(machinetypes: Iterable[MachinetypeDemand], running: Iterable[RunningMachine],
                 space_hs06: Mapping[str, float]) -> dict[str, float]:
    """Score per machinetype with a share: HS06 running across the space ÷ target share."""
    hs06 = dict(space_hs06)
    for machine in running:
        hs06[machine.machinetype] = hs06.get(machine.machinetype, 0.0) + machine.hs06
    return {machinetype.name: hs06.get(machinetype.name, 0.0) / machinetype.target_share
            for machinetype in machinetypes if machinetype.target_share > 0}


def group_scores(machinetypes: Iterable[MachinetypeDemand],
                 scores: Mapping[str, float]) -> dict[str, float]:
    """Score per machinegroup: the sum of its members' scores."""
    groups: dict[str, float] = {}
    for machinetype in machinetypes:
        if machinetype.name in scores:
            groups[machinetype.group] = groups.get(machinetype.group, 0.0) + scores[machinetype.name]
    return groups


def start_gate(factory: FactoryCapacity, running: Sequence[RunningMachine],
               load_average: float, now: float) -> NoPlacement | None:
    """The factory-wide reason nothing may start now, or None if starts are allowed."""
    if factory.draining:
        return NoPlacement(NoPlacementReason.DRAINING, "the factory is draining")
    if factory.shutdown_time is not None and now >= factory.shutdown_time:
        return NoPlacement(NoPlacementReason.SHUTDOWN_TIME_PASSED,
                           f"shutdown_time {factory.shutdown_time:.0f} has passed")
    overload = factory.overload_per_processor * factory.total_processors
    if load_average > overload:
        return NoPlacement(NoPlacementReason.LOAD_TOO_HIGH,
                           f"load average {load_average:.2f} exceeds "
                           f"{factory.overload_per_processor:g} x {factory.total_processors}"
                           f" processors = {overload:.2f}")
    if free_processors(factory, running) <= 0:
        return NoPlacement(NoPlacementReason.ALL_PROCESSORS_IN_USE,
                           f"all {factory.total_processors} processors are in use")
    return None


@dataclass(frozen=True, slots=True)
class _Obstacle:
    reason: NoPlacementReason
    text: str
    backoff_until: float | None = None


def _obstacle(machinetype: MachinetypeDemand, factory: FactoryCapacity, history: OutcomeHistory | None,
              running: Sequence[RunningMachine], now: float,
              unavailable_repositories: AbstractSet[str], mjf_http_unavailable: str | None) -> _Obstacle | None:
    """Why `machinetype` may not start now, or None if it is eligible."""
    if machinetype.target_share <= 0:
        return _Obstacle(NoPlacementReason.NO_SHARE, "target_share <= 0")
    if machinetype.paused:
        return _Obstacle(NoPlacementReason.PAUSED, "paused")
    missing = sorted(set(machinetype.cvmfs_repositories) & unavailable_repositories)
    if missing:
        return _Obstacle(NoPlacementReason.CVMFS_UNAVAILABLE,
                         "needs unavailable cvmfs " + " ".join(missing))
    if machinetype.mjf_http and mjf_http_unavailable is not None:
        return _Obstacle(NoPlacementReason.MJF_HTTP_UNAVAILABLE,
                         "mjf_http, but Machine/Job Features are not served over HTTP: " + mjf_http_unavailable)
    if factory.shutdown_time is not None:
        left = factory.shutdown_time - now
        if left < machinetype.shortest_wallclock:
            return _Obstacle(NoPlacementReason.NOT_ENOUGH_TIME,
                             f"min_wallclock_seconds {machinetype.shortest_wallclock:g} exceeds the"
                             f" {left:.0f}s left before shutdown_time")
    until = machinetype_backoff_until(machinetype, history, running, now)
    if until is not None:
        where = f" (last abort on {history.abort_elsewhere})" if history.abort_elsewhere else ""
        return _Obstacle(NoPlacementReason.ALL_IN_BACKOFF,
                         f"in backoff for another {until - now:.0f}s{where}", until)
    return None


@dataclass(frozen=True, slots=True)
class _Superslot:
    id: int
    processors: int
    shutdown_at: float


def _superslots(running: Iterable[RunningMachine]) -> list[_Superslot]:
    members: dict[int, list[RunningMachine]] = {}
    for machine in running:
        members.setdefault(machine.superslot, []).append(machine)
    # Members should share one shutdown time; if they differ (a lowering half
    # applied), the earliest is the one a new member must not outlive.
    return [_Superslot(id=ident, processors=sum(m.processors for m in machines),
                       shutdown_at=min(m.shutdown_at for m in machines))
            for ident, machines in sorted(members.items())]


def _fit(machinetype: MachinetypeDemand, factory: FactoryCapacity, running: Sequence[RunningMachine],
         now: float) -> Placement | None:
    """Where `machinetype` goes: an unfinished superslot it fits, else a new superslot, else None."""
    free = free_processors(factory, running)
    superslots = _superslots(running)
    fillable = []
    for superslot in superslots:
        room = min(factory.processors_per_superslot - superslot.processors, free,
                   machinetype.max_processors)
        shutdown_at = superslot.shutdown_at
        if factory.shutdown_time is not None:
            shutdown_at = min(shutdown_at, factory.shutdown_time)
        remaining = shutdown_at - now
        if (room >= machinetype.min_processors and room > 0
                and machinetype.shortest_wallclock <= remaining <= machinetype.max_wallclock_seconds):
            fillable.append((remaining, room, superslot.id, shutdown_at))
    if fillable:
        # The superslot with the most time left lets the machine do the most work.
        remaining, room, ident, shutdown_at = max(fillable, key=lambda f: (f[0], -f[2]))
        return Placement(machinetype.name, room, shutdown_at, ident, new_superslot=False)
    processors = min(free, machinetype.max_processors, factory.processors_per_superslot)
    if processors < machinetype.min_processors or processors <= 0:
        return None
    shutdown_at = now + machinetype.max_wallclock_seconds
    if factory.shutdown_time is not None:
        shutdown_at = min(shutdown_at, factory.shutdown_time)
    # Superslot ids only need to be unique among running machines.
    ident = max((s.id for s in superslots), default=0) + 1
    return Placement(machinetype.name, processors, shutdown_at, ident, new_superslot=True)


def next_placement(factory: FactoryCapacity, machinetypes: Sequence[MachinetypeDemand],
                   running: Sequence[RunningMachine], histories: Mapping[str, OutcomeHistory],
                   *, now: float, load_average: float, rng: random.Random,
                   space_hs06: Mapping[str, float] | None = None,
                   unavailable_repositories: AbstractSet[str] = frozenset(),
                   mjf_http_unavailable: str | None = None,
                   ) -> Placement | NoPlacement:
    """What to start in one free slot now, or why nothing should start.

    `space_hs06` is the HS06 other factories of the space report running per
    machinetype; this factory's `running` machines are added to it.
    `mjf_http_unavailable` says why Machine/Job Features are not served over
    HTTP (None while they are): mjf_http machinetypes wait meanwhile.
    """
    gate = start_gate(factory, running, load_average, now)
    if gate is not None:
        return gate

    obstacles = {}
    eligible = []
    for machinetype in sorted(machinetypes, key=lambda t: t.name):
        obstacle = _obstacle(machinetype, factory, histories.get(machinetype.name), running, now,
                             unavailable_repositories, mjf_http_unavailable)
        if obstacle is None:
            eligible.append(machinetype)
        else:
            obstacles[machinetype.name] = obstacle
    backoff_ends = [o.backoff_until for o in obstacles.values() if o.backoff_until is not None]
    retry_at = min(backoff_ends) if backoff_ends else None

    if eligible:
        scores = share_scores(machinetypes, running, space_hs06 or {})
        groups = group_scores(machinetypes, scores)
        # One draw per eligible machinetype in name order, so a seeded source
        # gives the same order whatever order the configuration listed them in.
        ranked = sorted(((groups[t.group], scores[t.name], rng.random(), t.name, t)
                         for t in eligible), key=lambda r: r[:4])
        for *_, machinetype in ranked:
            placement = _fit(machinetype, factory, running, now)
            if placement is not None:
                return placement
        free = free_processors(factory, running)
        text = (f"{free} free processors and the unfinished superslots fit no eligible"
                " machinetype (" + ", ".join(t.name for t in eligible) + ")")
        return NoPlacement(NoPlacementReason.TOO_FEW_PROCESSORS,
                           _with_obstacles(text, obstacles), retry_at)

    if not obstacles:
        return NoPlacement(NoPlacementReason.NO_SHARE, "no machinetypes are configured")
    present = {o.reason for o in obstacles.values()}
    headline = next(reason for reason in _HEADLINE_ORDER if reason in present)
    return NoPlacement(headline, _with_obstacles("no machinetype may start", obstacles), retry_at)


def _with_obstacles(text: str, obstacles: Mapping[str, _Obstacle]) -> str:
    if not obstacles:
        return text
    return text + "; " + "; ".join(f"{name}: {o.text}" for name, o in obstacles.items())


def fill_free_slots(factory: FactoryCapacity, machinetypes: Sequence[MachinetypeDemand],
                    running: Sequence[RunningMachine], histories: Mapping[str, OutcomeHistory],
                    free_slots: Iterable[int], *, now: float, load_average: float,
                    rng: random.Random, space_hs06: Mapping[str, float] | None = None,
                    unavailable_repositories: AbstractSet[str] = frozenset(),
                    mjf_http_unavailable: str | None = None,
                    ) -> tuple[list[tuple[int, Placement]], NoPlacement | None]:
    """Placements for as many of `free_slots` as may start now, and why the rest stay empty.

    The refusal is None when every free slot got a placement.
    """
    running = list(running)
    placements = []
    for slot in sorted(free_slots):
        decision = next_placement(factory, machinetypes, running, histories, now=now,
                                  load_average=load_average, rng=rng, space_hs06=space_hs06,
                                  unavailable_repositories=unavailable_repositories,
                                  mjf_http_unavailable=mjf_http_unavailable)
        if isinstance(decision, NoPlacement):
            return placements, decision
        placements.append((slot, decision))
        running.append(placed_machine(factory, decision, slot, now))
    return placements, None
