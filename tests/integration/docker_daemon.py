"""A whole vacd on the real Docker engine, seen from outside as a site sees it.

Site writes a factory's configuration and machinetype files and reads what the
factory leaves in its state directory (machine records, `finished` markers,
APEL records); given SingularitySettings, its pool runs Singularity
machinetypes too. CreateEvents records every container the engine creates
for a factory label. The rest finds the daemon's processes (outages.py kills
them, and stops and starts the host's dockerd).
"""

import dataclasses
import os
import threading
import time

import docker
import psutil
import pytest
import requests

from state_records import accounting, apel_records, read_machines
from vac.runtimes.base import SINGULARITY_ID_PREFIX

# One template for every machinetype: it waits until the test releases it by
# creating joboutputs/go, then leaves the machinetype's own shutdown_message.
# $JOBOUTPUTS: joboutputs is elsewhere in a Singularity machine than in a Docker one.
GATED_USER_DATA = """#!/bin/sh
out=$JOBOUTPUTS
echo "##user_data_machinetype## machine ##user_data_uuid##"
touch $out/ready
while [ ! -e $out/go ]; do sleep 0.1; done
echo "##user_data_option_message##" > $out/shutdown_message
"""

FIZZLE_SECONDS = 1

SETTINGS = """[settings]
vac_space = {space}
factory_name = {factory}
total_processors = {processors}
mb_per_processor = 128
hs06_per_processor = 10
overload_per_processor = 1000
heartbeat_timeout_seconds = {heartbeat_timeout}
docker_timeout_seconds = {docker_timeout}
draining = {draining}
"""

SINGULARITY_SETTINGS = """singularity_user_prefix = {user_prefix}
singularity_command = {command}
singularity_cgroups = {cgroups}
singularity_sweep_seconds = {sweep_seconds}
"""

MACHINETYPE = """
[machinetype {name}]
machine_model = {model}
root_image = {image}
user_data = {name}.user_data
user_data_option_message = {message}
target_share = {share}
max_wallclock_seconds = {wallclock}
fizzle_seconds = {fizzle}
backoff_seconds = {backoff}
{options}
"""


@dataclasses.dataclass(frozen=True)
class Machinetype:
    """A gated busybox machinetype that ends with `message`."""
    name: str
    message: str = "200 Work completed"
    share: float = 1
    backoff: float = 10
    wallclock: int = 300
    user_data: str = GATED_USER_DATA
    # Further "name = value" lines of its section.
    options: tuple[str, ...] = ()
    # docker, or singularity (the Site then needs SingularitySettings).
    model: str = "docker"


@dataclasses.dataclass(frozen=True)
class SingularitySettings:
    """What a Site's factory needs to run Singularity machinetypes: one account per slot, PREFIX00 …"""
    user_prefix: str
    command: str
    # An unpacked image directory every slot account can read.
    image: str
    cgroups: str = "vac"
    sweep_seconds: int = 2


class Site:
    """A factory's configuration and state directory under one test's tmp_path."""

    def __init__(self, tmp_path, factory, image, machinetypes, processors=2, docker_url=None, docker_timeout=10,
                 heartbeat_timeout=20, singularity=None, extra_settings="",
                 space="crash.vac.example"):
        self.tmp_path = tmp_path
        self.factory = factory
        # The vac_space it belongs to.
        self.space = space
        self.image = image
        self.singularity = singularity
        # Further [settings] lines; a test may change them and write the configuration again.
        self.extra_settings = extra_settings
        self.processors = processors
        self.docker_url = docker_url
        self.docker_timeout = docker_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.config = tmp_path / "vac.conf"
        self.state_dir = tmp_path / "state"
        self.machinetypes = {}
        self.write_config(machinetypes)

    def write_config(self, machinetypes=None, draining=False):
        """Write vac.conf atomically (a running vacd reloads it) and each machinetype's user_data."""
        if machinetypes is not None:
            self.machinetypes = {mt.name: mt for mt in machinetypes}
        for name, machinetype in self.machinetypes.items():
            files = self.state_dir / "machinetypes" / name / "files"
            files.mkdir(parents=True, exist_ok=True)
            (files / f"{name}.user_data").write_text(machinetype.user_data)
        text = SETTINGS.format(space=self.space, factory=self.factory, processors=self.processors,
                               draining="yes" if draining else "no", docker_timeout=self.docker_timeout,
                               heartbeat_timeout=self.heartbeat_timeout)
        if self.docker_url is not None:
            text += f"docker_url = {self.docker_url}\n"
        if self.singularity is not None:
            text += SINGULARITY_SETTINGS.format(**dataclasses.asdict(self.singularity))
        text += self.extra_settings
        text += "".join(MACHINETYPE.format(name=mt.name, model=mt.model, image=self.image_of(mt), message=mt.message,
                                           share=mt.share, fizzle=FIZZLE_SECONDS, backoff=mt.backoff,
                                           wallclock=mt.wallclock, options="\n".join(mt.options))
                        for mt in self.machinetypes.values())
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.rename(tmp, self.config)

    def image_of(self, machinetype):
        """The root_image of a machinetype of this site."""
        if machinetype.model == "singularity":
            return self.singularity.image
        return f"docker://{self.image}"

    def machines(self):
        """Every machine with a readable record, in the order the slots created them."""
        return read_machines(self.state_dir)

    def machine(self, uuid):
        return next(m for m in self.machines() if m.uuid == uuid)

    def wait(self, predicate, what, timeout=30, daemon=None):
        """Poll the machines until predicate(machines) is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            machines = self.machines()
            value = predicate(machines)
            if value:
                return value
            if time.monotonic() > deadline:
                log = daemon.text()[-8000:] if daemon is not None else ""
                raise AssertionError(f"not within {timeout} s: {what}\nmachines: {machines}\n{log}")
            time.sleep(0.1)

    def wait_running(self, count, daemon, timeout=30):
        """The `count` unfinished machines once each one's container waits to be released."""
        def running(machines):
            live = [m for m in machines if not m.finished]
            return len(live) == count and all(m.state == "running" and m.ready for m in live) and live
        return self.wait(running, f"{count} machines running", timeout, daemon)

    def release(self, uuid):
        """Let the machine end once it has lived past fizzle_seconds (so it is accounted)."""
        machine = self.machine(uuid)
        time.sleep(max(0.0, machine.started + FIZZLE_SECONDS + 0.2 - time.time()))
        (machine.joboutputs / "go").touch()

    def wait_finished(self, uuid, daemon, timeout=30):
        """The machine once it is finalised and cleaned."""
        return self.wait(lambda machines: next((m for m in machines if m.uuid == uuid and m.finished
                                                and m.state == "done"), None),
                         f"machine {uuid} finished", timeout, daemon)

    def release_all(self, machines, daemon):
        """Release the machines, then wait until each is finalised; each one's Machine then, in order."""
        for machine in machines:
            self.release(machine.uuid)
        return [self.wait_finished(machine.uuid, daemon) for machine in machines]

    def apel_records(self):
        """The text of each APEL record in the archive."""
        return apel_records(self.state_dir)


def drain_and_finish(site, daemon, docker_client, timeout=40):
    """Drain the factory, release every machine, and wait until it holds nothing.

    Done when every machine is finalised and cleaned, every slot is idle and
    the engine has no container of the factory, twice in a row a second apart
    (a placement sent just before the drain may still be on its way).
    """
    applied = daemon.text().count("configuration applied")
    site.write_config(draining=True)
    daemon.wait_log("configuration applied", count=applied + 1)
    deadline = time.monotonic() + timeout
    calm = 0
    while calm < 2:
        assert time.monotonic() < deadline, (
            f"the factory did not drain within {timeout} s\nmachines: {site.machines()}\n"
            f"titles: {titles(daemon.proc.pid)}\ncontainers: {containers(docker_client, site.factory)}\n"
            f"{daemon.text()[-8000:]}")
        machines = site.machines()
        for machine in machines:
            if (machine.state == "running" and machine.ready
                    and not (machine.joboutputs / "go").exists()):
                site.release(machine.uuid)
        slots = [title for title in titles(daemon.proc.pid) if title.startswith("vacd: slot ")]
        quiet = (all(m.finished and m.state == "done" for m in machines)
                 and len(slots) == site.processors and all(" - idle " in title for title in slots)
                 and not containers(docker_client, site.factory))
        calm = calm + 1 if quiet else 0
        time.sleep(0.5 if quiet else 0.2)


def finish_and_check(site, daemon, docker_client, create_events, logs):
    """Drain, then check what every test must leave: nothing running, each machine accounted once."""
    drain_and_finish(site, daemon, docker_client)
    daemon.stop()
    assert daemon.proc.returncode == 0
    assert containers(docker_client, site.factory) == []
    assert_one_container_each(create_events, site)
    assert_accounted_once(site, [*logs, daemon.text()])


@pytest.fixture
def create_events(docker_client, factory_label):
    """Every container the engine creates for this test's factory label, recorded while the test runs."""
    events = CreateEvents(docker_client, factory_label).start()
    yield events
    events.stop()


def assert_accounted_once(site, logs):
    """One APEL record and one finalisation per machine that lived at least fizzle_seconds.

    `logs` are the texts of every vacd that ran on the state directory.
    """
    records = site.apel_records()
    machines = site.machines()
    counts = accounting(machines, records, logs)
    for machine in machines:
        assert machine.finished and machine.ended is not None, machine
        lived = machine.ended - machine.started if machine.started is not None else 0
        expected = 1 if lived >= FIZZLE_SECONDS else 0
        assert counts[machine.uuid].apel_records == expected, machine
        assert (counts[machine.uuid].finalised, counts[machine.uuid].reported) == (1, 1), \
            (machine, counts[machine.uuid])
    assert len(records) == sum(1 for m in machines
                               if m.started is not None and m.ended - m.started >= FIZZLE_SECONDS)


def containers(docker_client, factory):
    """The engine's containers of `factory`, in any state (one removed while they are listed is left out)."""
    return docker_client.containers.list(all=True, filters={"label": f"vac.factory={factory}"}, ignore_removed=True)


class CreateEvents:
    """Every container the engine creates for a factory label, from the engine's event stream."""

    def __init__(self, docker_client, factory):
        self.client = docker_client
        self.factory = factory
        self.created = []          # (machine uuid, container id)
        self._lock = threading.Lock()
        self._stream = None
        self._thread = None

    def start(self):
        """Listen from now on (again after an engine restart: nothing is created while it is down)."""
        self._stream = self.client.events(
            decode=True, filters={"type": "container", "event": "create",
                                  "label": f"vac.factory={self.factory}"})
        self._thread = threading.Thread(target=self._listen, args=(self._stream,), daemon=True)
        self._thread.start()
        return self

    def _listen(self, stream):
        try:
            for event in stream:
                attributes = event.get("Actor", {}).get("Attributes", {})
                with self._lock:
                    self.created.append((attributes.get("vac.machine"), event.get("id")))
        except (requests.exceptions.RequestException, docker.errors.DockerException, OSError,
                AttributeError, ValueError):
            # The stream ends when it is closed or the engine stops.
            pass

    def stop(self):
        if self._stream is not None:
            self._stream.close()
            self._thread.join(10)
            self._stream = None

    def per_machine(self):
        """Machine uuid -> ids of the containers created for it."""
        with self._lock:
            result = {}
            for machine, container_id in self.created:
                result.setdefault(machine, []).append(container_id)
            return result


def assert_one_container_each(events, site):
    """Each machine that got a container got exactly one, the one its record names."""
    created = events.per_machine()
    # Singularity machines have no container in the engine.
    machines = {m.uuid: m for m in site.machines()
                if m.container_id is None or not m.container_id.startswith(SINGULARITY_ID_PREFIX)}
    assert set(created) == {uuid for uuid, m in machines.items() if m.container_id is not None}, (
        f"containers created {created} for machines {machines}")
    for uuid, ids in created.items():
        assert ids == [machines[uuid].container_id], (uuid, ids, machines[uuid])


# The daemon's processes.

def titles(root_pid):
    """The process titles of the root and its descendants."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    result = []
    for process in processes:
        try:
            result.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return result


def slot_worker(daemon, slot, other_than=None, timeout=15):
    """The pid of the worker of `slot` (other than pid `other_than`), waiting for one to run."""
    prefix = f"vacd: slot {slot:02d} "
    deadline = time.monotonic() + timeout
    while True:
        for child in psutil.Process(daemon.proc.pid).children():
            try:
                if child.pid != other_than and " ".join(child.cmdline()).startswith(prefix) \
                        and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except psutil.NoSuchProcess:
                pass
        assert time.monotonic() < deadline, f"no worker for slot {slot}\n{daemon.text()[-6000:]}"
        time.sleep(0.05)
