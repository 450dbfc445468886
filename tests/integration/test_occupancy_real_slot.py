"""A real slot worker running a real container puts it in the history that `vac occupancy` reads."""

import os
import signal
import subprocess
import sys
import time

import pytest

import vac
from vac import history
from vac.machine.layout import MachinePaths
from vac.runtimes.docker_api import parse_docker_time

from slot_driver import SlotDriver, place

SLOT = 5
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(vac.__file__)))

TEMPLATE = """#!/bin/sh
touch $JOBOUTPUTS/ready
while [ ! -e $JOBOUTPUTS/go ]; do sleep 0.1; done
echo "200 Work completed" > $JOBOUTPUTS/shutdown_message
"""


def wait_for_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def table(state_dir, since="10m", until="now"):
    """`vac occupancy --table` over a period, as {machinetype: (mean, peak, machines)}."""
    result = subprocess.run([sys.executable, "-m", "vac.cli", "occupancy", "--state-dir", str(state_dir),
                             "--processors", "4", "--since", since, "--until", until, "--table"],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=CHECKOUT))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    return {row[0]: (float(row[1]), int(row[2]), int(row[4])) for row in rows if row[0] not in ("all", "idle")}


@pytest.fixture
def workers(tmp_state_dir, factory_label, tmp_path):
    started = []

    def start(idle=True):
        driver = SlotDriver(tmp_state_dir, factory_label, SLOT, tmp_path / f"slot-{len(started)}.log").start()
        started.append(driver)
        if idle:
            driver.state("idle")
        return driver

    yield start
    for driver in started:
        driver.kill()


@pytest.mark.docker
def test_a_machine_is_in_the_history_while_it_runs_and_after_it_ends_across_a_worker_crash(
        busybox_image, docker_client, factory_label, tmp_state_dir, tmp_path, workers):
    template = tmp_path / "user_data.template"
    template.write_text(TEMPLATE)
    worker = workers()
    place_msg = place(tmp_state_dir, factory_label, SLOT, template)
    uuid = place_msg.machine["uuid"]
    worker.send(place_msg)
    machine = worker.state("running").detail["machine"]
    joboutputs = MachinePaths.for_machine(tmp_state_dir, uuid).joboutputs
    wait_for_file(joboutputs / "ready")

    [running] = history.machines_between(tmp_state_dir, 0, time.time() + 60)
    assert (running.uuid, running.factory, running.slot, running.machinetype, running.processors) == (
        uuid, factory_label, SLOT, "busybox-test", 1)
    assert running.ended_at is None
    container = docker_client.containers.get(machine["container_id"])
    assert container.attrs["State"]["Running"]
    assert abs(running.started_at - machine["started_at"]) < 1
    assert running.shutdown_at == place_msg.machine["shutdown_at"]
    assert table(tmp_state_dir)["busybox-test"][1:] == (1, 1)   # running now: peak 1, one machine

    # The worker dies; the next adopts the running container, and its end is recorded once.
    worker.signal(signal.SIGKILL)
    worker.reap()
    successor = workers(idle=False)
    successor.state("running")
    (joboutputs / "go").touch()
    finished = successor.finished(uuid)
    [ended] = history.machines_between(tmp_state_dir, 0, time.time() + 60)
    assert (ended.uuid, ended.shutdown_code, ended.shutdown_text) == (uuid, 200, "Work completed")
    assert ended.ended_at == pytest.approx(finished.ended_at)
    # While it ran, the time its start returned; once it ended, the engine's own start time.
    engine_started = parse_docker_time(container.attrs["State"]["StartedAt"])
    assert engine_started <= running.started_at <= engine_started + 5
    assert ended.started_at == engine_started
    assert table(tmp_state_dir)["busybox-test"][1:] == (1, 1)
    # Over its own life and as long again after it, it occupied one processor half the time.
    life = ended.ended_at - ended.started_at
    mean, _, _ = table(tmp_state_dir, f"@{ended.started_at}", f"@{ended.ended_at + life}")["busybox-test"]
    assert mean == pytest.approx(0.5, abs=0.01)
