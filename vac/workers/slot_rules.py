"""Pure decisions of a slot worker: limits, retries and what to do with what a predecessor left.

Plain functions over plain data with `now` passed in; the slot machine
(machine_run.py) carries them out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Sequence

from vac.machine.joboutputs import (EXCEEDED_WALLCLOCK, HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED,
                                    ShutdownMessage)
from vac.machine.record import MachineRecord
from vac.runtimes.base import ContainerHandle, ContainerState
from vac.vocabulary.slot_states import MachineState, SlotState, machine_state

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# At its shutdown time the payload has had its warning (MJF shutdowntime):
# a second of SIGTERM, then SIGKILL, so the kill lands within 2 s of the deadline.
WALLCLOCK_GRACE_SECONDS = 1.0
# A machine ended by the factory or found hung gets a little longer to tidy up.
END_GRACE_SECONDS = 10.0
HEARTBEAT_GRACE_SECONDS = 1.0

# A step of the slot (adopting, finishing, one try at stopping) makes a few
# engine calls, each bounded by the engine timeout, and writes a few files.
ENGINE_CALLS_PER_STEP = 3
STEP_SLACK_SECONDS = 15.0
# Preparing is bounded by its own commands' timeouts: two user_data fetches,
# a scratch volume's creation, mkfs and mount (machine/scratch.py).
PREPARING_SECONDS = 900.0
# How long an image may take to arrive before the machine fails to start.
IMAGE_DEADLINE_SECONDS = 300.0
# Cleaning destroys the scratch space: umount and losetup, or lvremove.
SCRATCH_DESTROY_SECONDS = 240.0


def retry_delay(attempt: int) -> float:
    """Seconds before retry number `attempt` (0, 1, 2 …) of an unavailable engine: 1, 2, 4 … 30."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, attempt))


def wall_limit_reached(now: float, shutdown_at: float) -> bool:
    """True once the machine's shutdown time has come."""
    return now >= shutdown_at


def heartbeat_verdict(now: float, started_at: float, fizzle_seconds: float, heartbeat_file: str | None,
                      heartbeat_seconds: float, heartbeat_age: float | None) -> ShutdownMessage | None:
    """The message that ends a machine for its heartbeat file, or None while it may run on.

    `heartbeat_age` is the file's age in seconds, None if it does not exist.
    """
    if not heartbeat_file or heartbeat_seconds <= 0 or now < started_at + fizzle_seconds:
        return None
    if heartbeat_age is None:
        return HEARTBEAT_NOT_CREATED
    if heartbeat_age > heartbeat_seconds:
        return HEARTBEAT_NOT_UPDATED
    return None


def next_heartbeat_check(now: float, started_at: float, fizzle_seconds: float, heartbeat_file: str | None,
                         heartbeat_seconds: float, heartbeat_age: float | None) -> float | None:
    """When heartbeat_verdict can next change if the file is not touched; None if it never will."""
    if not heartbeat_file or heartbeat_seconds <= 0:
        return None
    fizzled_at = started_at + fizzle_seconds
    if now < fizzled_at:
        return fizzled_at
    if heartbeat_age is None:
        return now
    # Just past the moment the file becomes older than heartbeat_seconds.
    return now - heartbeat_age + heartbeat_seconds + 0.001


def stop_grace_seconds(message: ShutdownMessage) -> float:
    """How long a payload ended for `message` gets between SIGTERM and SIGKILL (not MJF's grace_secs, a notice)."""
    if message == EXCEEDED_WALLCLOCK:
        return WALLCLOCK_GRACE_SECONDS
    if message in (HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED):
        return HEARTBEAT_GRACE_SECONDS
    return END_GRACE_SECONDS


# ---------------------------------------------------------------- progress deadlines


def step_seconds(engine_timeout: float) -> float:
    """How long one step of the slot may take when every engine call it makes runs to its timeout."""
    return ENGINE_CALLS_PER_STEP * engine_timeout + STEP_SLACK_SECONDS


def state_deadline(state: SlotState, since: float, engine_timeout: float, shutdown_at: float | None = None,
                   stop_grace: float = 0.0) -> float | None:
    """When a slot in `state` since `since` (or since its last sign of progress) must have moved on.

    None while nothing is due (idle). RUNNING ends at the shutdown time;
    every other state is one bounded step, retried or asked again after it.
    """
    step = step_seconds(engine_timeout)
    if state is SlotState.IDLE:
        return None
    if state is SlotState.RUNNING:
        return shutdown_at
    if state is SlotState.PREPARING:
        return since + PREPARING_SECONDS
    if state is SlotState.STARTING:
        return since + IMAGE_DEADLINE_SECONDS + step
    if state is SlotState.STOPPING:
        return since + stop_grace + step
    if state is SlotState.CLEANING:
        return since + step + SCRATCH_DESTROY_SECONDS
    # ADOPTING, FINISHING (and UNAVAILABLE, never a slot's own state).
    return since + step


def is_overdue(deadline: float | None, now: float) -> bool:
    """True once a state deadline has passed."""
    return deadline is not None and now >= deadline


def adopted_start(record: MachineRecord, container: ContainerHandle | None) -> float | None:
    """When an adopted machine started, if its record does not say: the engine's own start time.

    A container the engine never started has none; a container removed behind
    our back leaves the time its start was asked for (recorded before the call).
    A record whose outcome is fixed already keeps what it says.
    """
    if record.started is not None or machine_state(record.state) in (
            MachineState.FINISHING, MachineState.CLEANING, MachineState.DONE):
        return record.started
    if container is not None:
        return container.started_at if container.state is not ContainerState.CREATED else None
    return record.start_requested


# ---------------------------------------------------------------- adoption


class Adopt(enum.Enum):
    """What a starting worker does with one machine its predecessor left."""
    WATCH = "watch"                  # the container runs: wait for it again
    STOP = "stop"                    # it runs, and was being stopped: stop it again
    START = "start"                  # created but never started: start it
    FAIL_TO_START = "fail_to_start"  # preparing or starting, and no container: 700 Failed to start
    FINALISE = "finalise"            # it ended (or vanished): finalise it once
    CLEAN = "clean"                  # finalised already: remove what is left
    END_EXTRA = "end_extra"          # a second live machine in one slot: end it


LIVE_ACTIONS = (Adopt.WATCH, Adopt.STOP, Adopt.START)


@dataclass(frozen=True, slots=True)
class Adoption:
    """One machine to take over: its record, its container (None if there is none) and the action."""
    record: MachineRecord
    container: ContainerHandle | None
    action: Adopt
    finished: bool = False


@dataclass(frozen=True, slots=True)
class AdoptionPlan:
    """Machines to take over (the live one, if any, last) and labelled containers no record owns."""
    machines: tuple[Adoption, ...]
    orphans: tuple[ContainerHandle, ...]


def _action(record: MachineRecord, finished: bool, container: ContainerHandle | None) -> Adopt:
    state = machine_state(record.state)
    if state in (MachineState.CLEANING, MachineState.DONE):
        return Adopt.CLEAN
    if finished or state is MachineState.FINISHING:
        # The outcome is fixed on disk: repeating the finalisation is idempotent.
        return Adopt.FINALISE
    if container is None:
        if state is MachineState.PREPARING or (state is MachineState.STARTING and record.start_requested is None):
            return Adopt.FAIL_TO_START
        # Removed behind our back while it ran (or after its start was asked for).
        return Adopt.FINALISE
    if container.state.has_ended or container.state is ContainerState.REMOVING:
        return Adopt.FINALISE
    if container.state is ContainerState.CREATED:
        return Adopt.START
    return Adopt.STOP if state is MachineState.STOPPING else Adopt.WATCH


def adoption_plan(records: Iterable[tuple[MachineRecord, bool]],
                  containers: Sequence[ContainerHandle]) -> AdoptionPlan:
    """Decide what to do with this slot's unfinished records ((record, finished marker exists)) and containers."""
    by_machine = {}
    for container in containers:
        if container.machine_uuid is not None:
            by_machine[container.machine_uuid] = container
    machines = []
    owned = set()
    for record, finished in sorted(records, key=lambda item: (item[0].created, item[0].machine_uuid)):
        container = by_machine.get(record.machine_uuid)
        if container is not None:
            owned.add(container.id)
        machines.append(Adoption(record, container, _action(record, finished, container),
                                 finished))
    live = [adoption for adoption in machines if adoption.action in LIVE_ACTIONS]
    # One slot runs one machine: the newest live one stays, any other is ended.
    extra = {id(adoption) for adoption in live[:-1]}
    machines = [Adoption(a.record, a.container, Adopt.END_EXTRA, a.finished) if id(a) in extra else a
                for a in machines]
    ordered = ([a for a in machines if a.action not in LIVE_ACTIONS]
               + [a for a in machines if a.action in LIVE_ACTIONS])
    orphans = tuple(container for container in containers if container.id not in owned)
    return AdoptionPlan(tuple(ordered), orphans)
