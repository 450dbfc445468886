"""Plays the root for one real slot worker: forks it with a socket pair, sends it
messages and reads what it reports, as the supervisor would."""

import contextlib
import logging
import os
import select
import signal
import sys
import time
import traceback
import uuid as uuid_module
from pathlib import Path

from vac import logs
from vac.config.model import Machinetype, Settings
from vac.ipc import messages
from vac.ipc.channel import RootChannel, WorkerChannel, channel_pair
from vac.machine.layout import machine_name
from vac.supervisor.scheduler import Placement
from vac.supervisor.machine_spec import machine_spec
from vac.workers import slot_worker

HEARTBEAT_INTERVAL = 0.5


class SlotDriver:
    """One forked slot worker and everything it has sent."""

    def __init__(self, state_dir, factory, slot, log_path, docker_url=None, singularity=None):
        self.docker_url = docker_url
        # The factory's Singularity settings as the root hands them to slots (SingularitySettings.from_plain).
        self.singularity = singularity
        self.state_dir = state_dir
        self.factory = factory
        self.slot = slot
        self.log_path = log_path
        self.pid = None
        self.channel = None
        self.received = []
        self.exit_status = None

    def start(self):
        root_sock, worker_sock = channel_pair()
        spec = {"child_id": f"slot-{self.slot:02d}", "heartbeat_interval": HEARTBEAT_INTERVAL,
                "root_pid": os.getpid(), "slot": self.slot, "state_dir": str(self.state_dir),
                "factory_name": self.factory, "docker_timeout_seconds": 20}
        if self.docker_url is not None:
            spec["docker_url"] = self.docker_url
        if self.singularity is not None:
            spec["singularity"] = self.singularity
        pid = os.fork()
        if pid == 0:
            root_sock.close()
            _child(worker_sock, spec, self.log_path)
        worker_sock.close()
        self.pid = pid
        self.channel = RootChannel(root_sock)
        return self

    def send(self, msg):
        self.channel.send(msg)

    def send_place(self, place_msg):
        """Send a Place message; the uuid of its machine."""
        self.send(place_msg)
        return place_msg.machine["uuid"]

    def _read(self, timeout):
        ready, _, _ = select.select([self.channel], [], [], timeout)
        if ready:
            new = self.channel.receive()
            self.received.extend(new)
            return new
        return []

    def wait_for(self, predicate, timeout=30, what="a message", after=None):
        """The first message (received after `after`, or arriving within `timeout`) for which predicate is true."""
        deadline = time.monotonic() + timeout
        seen = 0 if after is None else next(i for i, msg in enumerate(self.received) if msg is after) + 1
        while True:
            for msg in self.received[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.received)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; received: {self.summary()}\n{self.log()}")
            if self.channel.failure is not None:
                raise AssertionError(f"the worker closed its channel ({self.channel.failure}) before {what}; "
                                     f"received: {self.summary()}\n{self.log()}")
            self._read(min(remaining, 0.2))

    def state(self, state, timeout=30, after=None, **detail):
        """The first StateReport in `state` (after message `after`) whose detail holds `detail`."""
        def matches(msg):
            return (isinstance(msg, messages.StateReport) and msg.state == state
                    and all(msg.detail.get(key) == value for key, value in detail.items()))
        return self.wait_for(matches, timeout, f"report {state} {detail or ''}", after)

    def finished(self, uuid, timeout=30):
        return self.wait_for(lambda msg: isinstance(msg, messages.MachineFinished) and msg.uuid == uuid,
                             timeout, f"MachineFinished for {uuid}")

    def finished_messages(self):
        return [msg for msg in self.received if isinstance(msg, messages.MachineFinished)]

    def drain(self, seconds):
        """Collect whatever arrives during `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(deadline - time.monotonic())

    def summary(self):
        return [(type(msg).__name__, getattr(msg, "state", None)) for msg in self.received
                if not isinstance(msg, messages.Heartbeat)]

    def log(self):
        try:
            with open(self.log_path) as stream:
                return stream.read()[-6000:]
        except FileNotFoundError:
            return "(no log)"

    def signal(self, signum):
        os.kill(self.pid, signum)

    def reap(self, timeout=10):
        """Wait for the worker to exit; its wait status."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = status
                self.channel.close()
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} did not exit within {timeout} s\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout=10):
        """SIGTERM, and wait for the exit; the worker must go promptly."""
        if self.exit_status is None:
            self.signal(signal.SIGTERM)
            return self.reap(timeout)
        return self.exit_status

    def kill(self):
        if self.exit_status is None:
            self.signal(signal.SIGKILL)
            self.reap()


@contextlib.contextmanager
def slot_workers(state_dir, factory, slot, log_dir, **options):
    """Yields start(idle=True, **more_options), which forks a worker of the slot, logging to a file of its
    own in log_dir (a SlotDriver given options and more_options: docker_url, singularity), and waits until
    it reports idle unless idle is false: the root places machines only in slots that do. On leaving, every
    worker still running is killed."""
    started = []

    def start(idle=True, **more_options):
        driver = SlotDriver(state_dir, factory, slot, Path(log_dir) / f"slot-{len(started)}.log",
                            **options, **more_options).start()
        started.append(driver)
        if idle:
            driver.state("idle")
        return driver

    try:
        yield start
    finally:
        for driver in started:
            driver.kill()


def _child(sock, spec, log_path):
    status = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        logs.configure("DEBUG", log_path)
        slot_worker.run(WorkerChannel(sock), spec)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        logging.getLogger(__name__).exception("slot worker crashed")
        status = 1
    finally:
        logging.shutdown()
        os._exit(status)


def place(state_dir, factory, slot, template, now=None, shutdown_in=600, settings_changes=None,
          **machinetype_changes):
    """A Place message for a busybox machine whose user_data is `template`.

    settings_changes are further factory settings (singularity_user_prefix for a Singularity machine).
    """
    now = time.time() if now is None else now
    settings_fields = dict(vac_space="space.example.org", total_processors=4, state_dir=str(state_dir),
                           mb_per_processor=256, hs06_per_processor=10.0, gocdb_sitename="UKI-TEST", pids_limit=200)
    settings_fields.update(settings_changes or {})
    settings = Settings(**settings_fields)
    fields = dict(name="busybox-test", machine_model="docker", root_image="docker://vac-test-busybox:latest",
                  user_data=str(template), target_share=1.0, fizzle_seconds=1, max_wallclock_seconds=600,
                  min_wallclock_seconds=600, files_name="busybox-test")
    fields.update(machinetype_changes)
    machinetype = Machinetype(**fields)
    placement = Placement(machinetype=machinetype.name, processors=1, shutdown_at=int(now) + shutdown_in,
                          superslot=slot, new_superslot=True)
    spec = machine_spec(uuid=str(uuid_module.uuid4()), slot=slot, factory_name=factory,
                        machine_name=machine_name(factory, slot), settings=settings, machinetype=machinetype,
                        placement=placement, placed_at=now)
    return messages.Place(spec)
