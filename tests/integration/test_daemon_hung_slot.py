"""A whole vacd whose slot worker heartbeats but gets nowhere: the root sees its state outlive
the deadline its heartbeats carry, restarts it, and the next worker adopts the machine.

The worker is made to hang for real: the engine proxy (engine_proxy.py) holds the
answer to the container listing of a new worker's adoption scan, and the test stops
the very process that waits for it (a scan stuck for good, as on a hung disk).
"""

import os
import shutil
import signal

import psutil
import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import (CreateEvents, Machinetype, Site, assert_accounted_once, assert_one_container_each,
                           containers, drain_and_finish, slot_worker)
from engine_proxy import engine_proxy  # noqa: F401 (a fixture)
from vac.machine.layout import UNFINISHED_DIR_NAME

GATE = Machinetype("gate")
# Short engine timeout and heartbeat timeout: the adoption's deadline (a few engine
# calls, slot_rules.step_seconds) and the root's margin then pass within a minute.
DOCKER_TIMEOUT = 5
HEARTBEAT_TIMEOUT = 10
# The listing of slot 0's containers, as a starting worker's scan asks for it.
SLOT_0_LISTING = r"^GET /v[0-9.]+/containers/json\?.*vac\.slot=0"


@pytest.fixture
def site(tmp_path, factory_label, busybox_image, engine_proxy):
    return Site(tmp_path, factory_label, busybox_image, [GATE], processors=1, docker_url=engine_proxy.url,
                docker_timeout=DOCKER_TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT)


@pytest.mark.docker
def test_a_slot_worker_stuck_past_its_state_deadline_is_restarted_and_its_successor_adopts(
        site, daemon_factory, docker_client, engine_proxy, factory_label):  # noqa: F811
    create_events = CreateEvents(docker_client, factory_label).start()
    daemon = daemon_factory(site.config)
    stuck_scan = None
    try:
        [machine] = site.wait_running(1, daemon)
        first = slot_worker(daemon, 0)

        listing = engine_proxy.hold(SLOT_0_LISTING, count=1)
        # A slot whose index names its machine scans in its own thread; one on a state
        # directory from before the index scans in a forked child, which can be stopped alone.
        shutil.rmtree(site.state_dir / UNFINISHED_DIR_NAME)
        os.kill(first, signal.SIGKILL)
        stuck = slot_worker(daemon, 0, other_than=first)
        held = listing.wait_held(timeout=30)
        stuck_scan = held.pid
        assert psutil.Process(stuck_scan).ppid() == stuck, "the scan runs in a child of the new worker"
        os.kill(stuck_scan, signal.SIGSTOP)
        listing.release()

        # It heartbeats all along; its state, adopting, outlives its deadline and the margin.
        daemon.wait_log(f"slot-00 (pid {stuck}) still adopting", timeout=90)
        successor = slot_worker(daemon, 0, other_than=stuck)
        daemon.wait_log(f"slot 00 machine {machine.uuid}: adopted container {machine.container_id[:12]}",
                        timeout=30)
        assert "no heartbeat" not in daemon.text(), "it was restarted as stuck, not as silent"
        assert [m.uuid for m in site.machines()] == [machine.uuid], "nothing placed while it was stuck"

        site.release(machine.uuid)
        done = site.wait_finished(machine.uuid, daemon)
        assert (done.shutdown_code, done.container_id) == (200, machine.container_id)
        assert slot_worker(daemon, 0) == successor
    finally:
        if stuck_scan is not None and psutil.pid_exists(stuck_scan):
            os.kill(stuck_scan, signal.SIGKILL)
    drain_and_finish(site, daemon, docker_client)
    daemon.stop()
    assert daemon.proc.returncode == 0
    create_events.stop()
    assert containers(docker_client, site.factory) == []
    assert_one_container_each(create_events, site)
    assert_accounted_once(site, [daemon.text()])
