"""Fakes for driving the slot state machine through scripted histories: a recording
runtime, jobs that run only when the test says so, a clock the test moves."""

from __future__ import annotations

import itertools
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path

from vac.config.model import Machinetype, Settings
from vac.ipc import messages
from vac.machine.layout import MachinePaths
from vac.runtimes.docker_api import PAYLOAD_PATHS
from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerNotStarted, ContainerState, ExitInfo,
                               ImageMissing, RuntimeUnavailable, Usage, request_labels)
from vac.supervisor.scheduler import Placement
from vac.supervisor.machine_spec import machine_spec
from vac.workers.job_runner import JobResult
from vac.workers.machine_run import SlotMachine

FACTORY = "f1.example.com"
SLOT = 3
START = 1_700_000_000.0


class FakeClock:
    """time.time() as the test sets it."""

    def __init__(self, now=START):
        self.now = float(now)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class FakeRuntime:
    """The runtime protocol over a dict of containers; every call is recorded in `calls`."""

    payload_paths = PAYLOAD_PATHS

    def payload_paths_for(self, model):
        return self.payload_paths

    def __init__(self, clock, images=("docker://busybox:latest",)):
        self.clock = clock
        self.images = set(images)
        self.containers: dict[str, ContainerHandle] = {}
        self.exits: dict[str, ExitInfo] = {}
        self.cpu: dict[str, float] = {}
        self.calls: list[tuple] = []
        self.unavailable = False
        self._ids = itertools.count(1)

    def _call(self, *call):
        self.calls.append(call)
        if self.unavailable:
            raise RuntimeUnavailable(f"{call[0]}: connection refused")

    def names(self):
        return [call[0] for call in self.calls]

    def _get(self, container_id):
        if container_id not in self.containers:
            raise ContainerGone(f"no container {container_id}")
        return self.containers[container_id]

    def _set(self, handle, **changes):
        fields = {"id": handle.id, "name": handle.name, "labels": handle.labels, "state": handle.state,
                  "started_at": handle.started_at, "finished_at": handle.finished_at}
        fields.update(changes)
        self.containers[handle.id] = ContainerHandle(**fields)
        return self.containers[handle.id]

    # what the test does to containers behind the worker's back

    def add(self, labels, state=ContainerState.RUNNING, started_at=None, finished_at=None, exit_code=None):
        container_id = f"c{next(self._ids):03d}" + "0" * 60
        handle = ContainerHandle(id=container_id, name=f"vac-{container_id[:4]}", labels=dict(labels),
                                 state=state, started_at=started_at, finished_at=finished_at)
        self.containers[container_id] = handle
        if exit_code is not None:
            self.exits[container_id] = ExitInfo(exit_code, finished_at)
        return handle

    def end(self, container_id, exit_code=0):
        handle = self._get(container_id)
        self.exits[container_id] = ExitInfo(exit_code, self.clock())
        self._set(handle, state=ContainerState.EXITED, finished_at=self.clock())

    def running(self):
        return [h for h in self.containers.values() if h.state is ContainerState.RUNNING]

    # the protocol

    def ensure_image(self, image, deadline):
        self._call("ensure_image", image)
        if image not in self.images:
            raise ImageMissing(f"image {image} is not present and could not be pulled")

    def create(self, request):
        self._call("create", request.machine_uuid)
        for handle in self.containers.values():
            if handle.machine_uuid == request.machine_uuid:
                return handle
        if request.image not in self.images:
            # As the engine: no container without its image.
            raise ImageMissing(f"image {request.image} is not present for container {request.machine_uuid}")
        return self.add(request_labels(request), state=ContainerState.CREATED)

    def start(self, handle):
        self._call("start", handle.id)
        current = self._get(handle.id)
        if current.state is ContainerState.CREATED:
            self._set(current, state=ContainerState.RUNNING, started_at=self.clock())
        return self._get(handle.id)

    def inspect(self, container_id):
        self._call("inspect", container_id)
        return self._get(container_id)

    def find(self, factory, slot=None, models=None, machine_uuid=None, brief=False):
        self._call("find", factory, slot)
        return [h for h in self.containers.values()
                if h.labels.get("vac.factory") == factory and (slot is None or h.slot == slot)
                and machine_uuid in (None, h.machine_uuid)]

    def wait(self, handle, deadline):
        self._call("wait", handle.id)
        current = self._get(handle.id)
        if current.state is ContainerState.CREATED:
            raise ContainerNotStarted(f"{handle.id} was never started")
        return self.exits.get(handle.id)

    def exit_status(self, handle):
        self._call("exit_status", handle.id)
        self._get(handle.id)
        return self.exits.get(handle.id)

    def stop(self, handle, grace_seconds):
        self._call("stop", handle.id, grace_seconds)
        current = self._get(handle.id)
        if not current.state.has_ended:
            self.end(handle.id, 143)

    def kill(self, handle):
        self._call("kill", handle.id)
        current = self._get(handle.id)
        if not current.state.has_ended:
            self.end(handle.id, 137)

    def remove(self, handle):
        self._call("remove", handle.id)
        self.containers.pop(handle.id, None)

    def stats(self, handle):
        self._call("stats", handle.id)
        # Sampled now while it runs; after its exit, as Docker, no new sample.
        running = self._get(handle.id).state is ContainerState.RUNNING
        return Usage(self.cpu.get(handle.id, 0.0), 0, self.clock() if running else None)

    def close(self):
        pass


class FakeJobs:
    """Jobs that run only when the test calls run(); results go to the machine then."""

    def __init__(self):
        self.pending: list[tuple] = []

    def fileno(self):
        raise AssertionError("a fake has no file descriptor")

    def running(self, name):
        return any(job[0] == name for job in self.pending)

    def submit(self, name, call, *args, token=None, fork=False):
        assert not self.running(name), f"job {name} submitted twice"
        self.pending.append((name, call, args, token))

    def names(self):
        return [job[0] for job in self.pending]

    def take(self, name):
        """Run the pending job `name` now and return its result."""
        for index, (job_name, call, args, token) in enumerate(self.pending):
            if job_name == name:
                del self.pending[index]
                try:
                    return JobResult(name, call(*args), None, token)
                except Exception as error:
                    return JobResult(name, None, error, token)
        raise AssertionError(f"no pending job {name}; pending: {self.names()}")


def settle(machine, jobs, leave=("wait", "stats"), limit=50):
    """Run pending jobs (except those named in `leave`) until none is left to run."""
    for _ in range(limit):
        runnable = [name for name in jobs.names() if name not in leave]
        if not runnable:
            return
        machine.on_jobs([jobs.take(runnable[0])])
    raise AssertionError(f"jobs did not settle: {jobs.names()}")


def make_settings(state_dir: Path, **changes):
    fields = dict(vac_space="vac01.example.com", total_processors=4, state_dir=str(state_dir),
                  hs06_per_processor=10.0, gocdb_sitename="UKI-EXAMPLE", mb_per_processor=1000)
    fields.update(changes)
    return Settings(**fields)


def make_machinetype(user_data: Path, **changes):
    fields = dict(name="busy-test", machine_model="docker", root_image="docker://busybox:latest",
                  user_data=str(user_data), target_share=1.0, fizzle_seconds=60,
                  max_wallclock_seconds=3600, min_wallclock_seconds=3600, files_name="busy-test")
    fields.update(changes)
    return Machinetype(**fields)


def place_spec(settings, machinetype, slot, now, machine_uuid=None, shutdown_at=None, processors=1):
    """The Place.machine dict the root would send."""
    placement = Placement(machinetype=machinetype.name, processors=processors,
                          shutdown_at=shutdown_at if shutdown_at is not None else now + 3600, superslot=7,
                          new_superslot=True)
    return machine_spec(uuid=machine_uuid or str(uuid_module.uuid4()), slot=slot, factory_name=FACTORY,
                        machine_name=f"f1-{slot:02d}.example.com", settings=settings, machinetype=machinetype,
                        placement=placement, placed_at=now)


@dataclass
class World:
    """One slot's surroundings: what the root receives, the runtime, the jobs, the clock."""
    tmp_path: Path
    clock: FakeClock = field(default_factory=FakeClock)
    reports: list = field(default_factory=list)
    sent: list = field(default_factory=list)

    def __post_init__(self):
        self.state_dir = self.tmp_path / "state"
        self.state_dir.mkdir()
        self.template = self.tmp_path / "user_data.template"
        self.template.write_text("#!/bin/sh\necho ##user_data_uuid## ##user_data_machinetype##\n")
        self.runtime = FakeRuntime(self.clock)
        self.settings = make_settings(self.state_dir)
        self.jobs = None
        self.slot = None

    def boot(self):
        """A new worker (after a crash: the runtime and the disk stay, the jobs do not)."""
        self.jobs = FakeJobs()
        self.slot = SlotMachine(slot=SLOT, factory_name=FACTORY, state_dir=self.state_dir, runtime=self.runtime,
                                jobs=self.jobs, report=lambda state, **detail: self.reports.append((state, detail)),
                                send=self.sent.append, clock=self.clock, watch_factory=lambda path: None)
        self.slot.start()
        settle(self.slot, self.jobs)
        return self.slot

    def place(self, machinetype=None, leave=("wait", "stats"), **changes):
        machinetype = machinetype or make_machinetype(self.template)
        spec = place_spec(self.settings, machinetype, SLOT, self.clock(), **changes)
        self.slot.on_message(messages.Place(spec))
        settle(self.slot, self.jobs, leave)
        return spec

    def states(self):
        return [state for state, _ in self.reports]

    def paths(self, spec):
        return MachinePaths.for_machine(self.state_dir, spec["uuid"])

    def container_id(self):
        return self.slot.machine.handle.id

    def end_container(self, exit_code=0, message=None):
        """The payload writes `message` and exits; the worker's wait returns."""
        if message is not None:
            (self.paths_of_current() / "joboutputs" / "shutdown_message").write_text(message)
        self.runtime.end(self.container_id(), exit_code)
        self.slot.on_jobs([self.jobs.take("wait")])
        settle(self.slot, self.jobs)

    def paths_of_current(self):
        return self.slot.machine.paths.root

    def finished(self):
        return [m for m in self.sent if isinstance(m, messages.MachineFinished)]

    def apel_files(self):
        archive = self.state_dir / "apel-archive"
        return sorted(p for p in archive.rglob("*") if p.is_file()) if archive.exists() else []

    def tick_at(self, when):
        self.clock.now = float(when)
        wake = self.slot.tick()
        settle(self.slot, self.jobs)
        return wake
