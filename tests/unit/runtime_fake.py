"""A recording, in-memory container runtime and a manual clock for slot-logic tests.

The fake plays the engine: containers run for a scripted time on the fake
clock, `wait` advances the clock as a real wait would block, and every call is
recorded. It follows the protocol as the Docker runtime behaves (see
tests/integration/test_docker_runtime.py): exit 143 on a stop a payload obeys,
137 after the grace or on kill, idempotent create and remove.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerNotStarted,
                               ContainerRequest, ContainerState, ExitInfo, ImageMissing, PayloadPaths,
                               RuntimeUnavailable, StartFailed, Usage, request_labels)
from vac.runtimes.docker_api import PAYLOAD_PATHS, container_name, image_reference
from vac.vocabulary.labels import LABEL_FACTORY, LABEL_SLOT

WALL_CLOCK_AT_ZERO = 1_700_000_000.0
EXIT_TERMINATED = 143
EXIT_KILLED = 137


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def advance_to(self, moment: float) -> None:
        self.now = max(self.now, moment)

    def wall(self) -> float:
        """The Unix time that goes with the current monotonic time."""
        return WALL_CLOCK_AT_ZERO + self.now


@dataclass(frozen=True)
class Behaviour:
    """How a fake container behaves once started."""
    run_seconds: float | None = None        # None: runs until stopped or killed
    exit_code: int = 0
    oom_killed: bool = False
    ignores_term: bool = False
    start_error: str | None = None          # start raises StartFailed with this text
    cpu_per_second: float = 1.0
    memory_bytes: int = 100 * 1024 ** 2


@dataclass
class FakeContainer:
    handle: ContainerHandle
    request: ContainerRequest
    behaviour: Behaviour
    started_monotonic: float | None = None
    ended_monotonic: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True)
class Call:
    method: str
    target: str


@dataclass
class FakeRuntime:
    """The runtime protocol in memory; `engine_down` makes every call raise RuntimeUnavailable."""

    payload_paths = PAYLOAD_PATHS

    def payload_paths_for(self, model: str) -> PayloadPaths:
        """Where this runtime's containers see their machine's MJF and joboutputs."""
        return self.payload_paths
    clock: FakeClock = field(default_factory=FakeClock)
    images: set[str] = field(default_factory=set)
    pullable: dict[str, float] = field(default_factory=dict)     # image -> seconds a pull takes
    behaviours: dict[str, Behaviour] = field(default_factory=dict)  # machine uuid or machinetype -> behaviour
    default_behaviour: Behaviour = field(default_factory=Behaviour)
    engine_down: bool = False
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    last_usage: dict[str, Usage] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def calls_to(self, method: str) -> list[str]:
        """Targets of the recorded calls to `method`, in order."""
        return [call.target for call in self.calls if call.method == method]

    def _record(self, method: str, target: str) -> None:
        self.calls.append(Call(method, target))
        if self.engine_down:
            raise RuntimeUnavailable(f"{method} {target}: the fake engine is down")

    def _container(self, container_id: str) -> FakeContainer:
        for container in self.containers.values():
            if container_id in (container.handle.id, container.handle.name):
                self._settle(container)
                return container
        raise ContainerGone(f"no such container: {container_id}")

    def _settle(self, container: FakeContainer) -> None:
        # A container whose scripted run time has passed on the clock has exited.
        if container.handle.state != ContainerState.RUNNING or container.behaviour.run_seconds is None:
            return
        exit_at = container.started_monotonic + container.behaviour.run_seconds
        if exit_at <= self.clock():
            self._end(container, container.behaviour.exit_code, exit_at, container.behaviour.oom_killed)

    def _end(self, container: FakeContainer, exit_code: int, at: float, oom_killed: bool = False) -> None:
        container.ended_monotonic = at
        container.exit_code = exit_code
        container.oom_killed = oom_killed
        container.handle = replace(container.handle, state=ContainerState.EXITED,
                                   finished_at=WALL_CLOCK_AT_ZERO + at)

    def _exit_info(self, container: FakeContainer) -> ExitInfo | None:
        if not container.handle.state.has_ended:
            return None
        return ExitInfo(container.exit_code, container.handle.finished_at, container.oom_killed,
                        container.handle.started_at)

    def ensure_image(self, image: str, deadline: float) -> None:
        reference = image_reference(image)
        self._record("ensure_image", reference)
        if reference in self.images:
            return
        if reference not in self.pullable:
            raise ImageMissing(f"pull of {reference} failed: not found")
        if self.clock() + self.pullable[reference] > deadline:
            self.clock.advance_to(deadline)
            raise ImageMissing(f"pull of {reference} did not finish before its deadline")
        self.clock.advance(self.pullable[reference])
        self.images.add(reference)

    def create(self, request: ContainerRequest) -> ContainerHandle:
        name = container_name(request)
        self._record("create", name)
        if name in self.containers:
            return self.containers[name].handle
        if image_reference(request.image) not in self.images:
            raise ImageMissing(f"image {image_reference(request.image)} is not present for container {name}")
        behaviour = self.behaviours.get(request.machine_uuid) or self.behaviours.get(request.machinetype) \
            or self.default_behaviour
        handle = ContainerHandle(id=f"{next(self._ids):064x}", name=name, labels=request_labels(request),
                                 state=ContainerState.CREATED, created_at=self.clock.wall())
        self.containers[name] = FakeContainer(handle, request, behaviour)
        return handle

    def start(self, handle: ContainerHandle) -> ContainerHandle:
        self._record("start", handle.name)
        container = self._container(handle.id)
        if container.handle.state != ContainerState.CREATED:
            return container.handle
        if container.behaviour.start_error:
            raise StartFailed(f"the engine could not start container {handle.name}: "
                              f"{container.behaviour.start_error}")
        container.started_monotonic = self.clock()
        container.handle = replace(container.handle, state=ContainerState.RUNNING, started_at=self.clock.wall())
        return container.handle

    def inspect(self, container_id: str) -> ContainerHandle:
        self._record("inspect", container_id)
        return self._container(container_id).handle

    def find(self, factory: str, slot: int | None = None, models=None,
             machine_uuid: str | None = None, brief: bool = False) -> list[ContainerHandle]:
        self._record("find", factory if slot is None else f"{factory}/{slot}")
        found = []
        for container in self.containers.values():
            labels = container.handle.labels
            if (labels[LABEL_FACTORY] == factory and (slot is None or labels[LABEL_SLOT] == str(slot))
                    and machine_uuid in (None, container.handle.machine_uuid)):
                self._settle(container)
                found.append(container.handle)
        return sorted(found, key=lambda handle: (handle.created_at, handle.id))

    def wait(self, handle: ContainerHandle, deadline: float) -> ExitInfo | None:
        self._record("wait", handle.name)
        container = self._container(handle.id)
        if container.handle.state == ContainerState.CREATED:
            raise ContainerNotStarted(f"container {handle.name} was created but never started")
        info = self._exit_info(container)
        if info is not None:
            return info
        run_seconds = container.behaviour.run_seconds
        if run_seconds is not None and container.started_monotonic + run_seconds <= deadline:
            self.clock.advance_to(container.started_monotonic + run_seconds)
            self._settle(container)
            return self._exit_info(container)
        # Blocks until the deadline, as the real wait does.
        self.clock.advance_to(deadline)
        return None

    def exit_status(self, handle: ContainerHandle) -> ExitInfo | None:
        self._record("exit_status", handle.name)
        return self._exit_info(self._container(handle.id))

    def stop(self, handle: ContainerHandle, grace_seconds: float) -> None:
        self._record("stop", handle.name)
        container = self._container(handle.id)
        if container.handle.state != ContainerState.RUNNING:
            return
        if container.behaviour.ignores_term:
            self.clock.advance(grace_seconds)
            self._settle(container)
            if container.handle.state == ContainerState.RUNNING:
                self._end(container, EXIT_KILLED, self.clock())
        else:
            self._end(container, EXIT_TERMINATED, self.clock())

    def kill(self, handle: ContainerHandle) -> None:
        self._record("kill", handle.name)
        container = self._container(handle.id)
        if container.handle.state == ContainerState.RUNNING:
            self._end(container, EXIT_KILLED, self.clock())

    def remove(self, handle: ContainerHandle) -> None:
        self._record("remove", handle.name)
        self.last_usage.pop(handle.id, None)
        for name, container in list(self.containers.items()):
            if container.handle.id == handle.id:
                del self.containers[name]

    def stats(self, handle: ContainerHandle) -> Usage:
        """Usage so far while running; after the exit only what was sampled before it, as with Docker."""
        self._record("stats", handle.name)
        container = self._container(handle.id)
        if container.handle.state != ContainerState.RUNNING:
            return self.last_usage.get(handle.id, Usage(0.0, 0))
        usage = Usage(container.behaviour.cpu_per_second * (self.clock() - container.started_monotonic),
                      container.behaviour.memory_bytes, self.clock.wall())
        self.last_usage[handle.id] = usage
        return usage

    def close(self) -> None:
        self.calls.append(Call("close", ""))
