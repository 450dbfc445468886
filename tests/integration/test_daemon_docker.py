"""The whole vacd (root, helpers, slot workers) on the real Docker engine: crashes,
restarts, an engine outage, and what a shutdown_message makes the scheduler do.

Each test runs busybox machines that wait until the test releases them, so it
decides when each one ends. After each test the factory is drained and must
hold nothing: every machine finalised once, one APEL record for each that
lived past fizzle_seconds, one container per machine, none left in the engine.
"""

import os
import signal
import time

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import create_events  # noqa: F401 (a fixture)
from docker_daemon import Machinetype, Site, containers, finish_and_check, slot_worker, titles
from outages import DockerEngine, kill_tree

GATE = Machinetype("gate")


@pytest.fixture
def site(tmp_path, factory_label, busybox_image):
    return Site(tmp_path, factory_label, busybox_image, [GATE], processors=2)


def running_ids(docker_client, factory):
    """Container id -> machine uuid of the factory's running containers."""
    return {c.id: c.labels["vac.machine"] for c in containers(docker_client, factory) if c.status == "running"}


@pytest.mark.docker
def test_a_killed_slot_worker_is_restarted_and_adopts_its_running_container(
        site, daemon_factory, docker_client, create_events):  # noqa: F811
    daemon = daemon_factory(site.config)
    first, second = site.wait_running(2, daemon)
    assert running_ids(docker_client, site.factory) == {first.container_id: first.uuid,
                                                        second.container_id: second.uuid}
    victim = slot_worker(daemon, first.slot)
    bystander = slot_worker(daemon, second.slot)

    os.kill(victim, signal.SIGKILL)
    successor = slot_worker(daemon, first.slot, other_than=victim)
    daemon.wait_log(f"slot {first.slot:02d} machine {first.uuid}: adopted container {first.container_id[:12]}")
    assert slot_worker(daemon, second.slot) == bystander, "only the killed slot restarts"
    assert running_ids(docker_client, site.factory) == {first.container_id: first.uuid,
                                                        second.container_id: second.uuid}
    assert [m.uuid for m in site.machines()] == [first.uuid, second.uuid], "no machine placed in its stead"

    site.release(first.uuid)
    done = site.wait_finished(first.uuid, daemon)
    assert (done.shutdown_code, done.container_id) == (200, first.container_id)
    # The restarted worker goes on: the slot gets its next machine.
    site.wait(lambda ms: any(m.slot == first.slot and m.created > done.ended for m in ms),
              f"a new machine in slot {first.slot}", daemon=daemon)
    assert slot_worker(daemon, first.slot) == successor
    finish_and_check(site, daemon, docker_client, create_events, [])


@pytest.mark.docker
def test_after_the_whole_tree_is_killed_a_new_vacd_adopts_every_container(
        site, daemon_factory, docker_client, create_events):  # noqa: F811
    first_daemon = daemon_factory(site.config, log_name="vacd-1.log")
    machines = site.wait_running(2, first_daemon)
    before = running_ids(docker_client, site.factory)
    assert sorted(before.values()) == sorted(m.uuid for m in machines)

    kill_tree(first_daemon)
    assert running_ids(docker_client, site.factory) == before, "the containers live on without vacd"

    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    for machine in machines:
        daemon.wait_log(f"slot {machine.slot:02d} machine {machine.uuid}: adopted container "
                        f"{machine.container_id[:12]}")
    assert running_ids(docker_client, site.factory) == before
    assert [m.uuid for m in site.machines()] == [m.uuid for m in machines], "nothing placed twice"

    for machine in machines:
        site.release(machine.uuid)
    for machine in machines:
        done = site.wait_finished(machine.uuid, daemon)
        assert (done.shutdown_code, done.container_id) == (200, machine.container_id)
    finish_and_check(site, daemon, docker_client, create_events, [first_daemon.text()])


@pytest.mark.docker
def test_a_container_that_ends_while_no_vacd_runs_is_finalised_once_by_the_next(
        site, daemon_factory, docker_client, create_events):  # noqa: F811
    first_daemon = daemon_factory(site.config, log_name="vacd-1.log")
    ending, staying = site.wait_running(2, first_daemon)
    first_daemon.stop()
    assert first_daemon.proc.returncode == 0
    assert set(running_ids(docker_client, site.factory)) == {ending.container_id, staying.container_id}, \
        "stopping vacd leaves the machines running"

    site.release(ending.uuid)
    deadline = time.monotonic() + 20
    while docker_client.containers.get(ending.container_id).status != "exited":
        assert time.monotonic() < deadline, "the released container did not exit"
        time.sleep(0.1)
    assert not site.machine(ending.uuid).finished, "nothing finalises it while no vacd runs"
    restarted_at = time.time()

    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    done = site.wait_finished(ending.uuid, daemon)
    daemon.wait_log(f"slot {staying.slot:02d} machine {staying.uuid}: adopted container")
    assert done.shutdown_code == 200
    # The end is when the container ended, not when a vacd noticed it.
    assert done.ended < restarted_at
    [record] = [text for text in site.apel_records() if ending.uuid in text]
    assert f"EndTime: {int(done.ended)}\n" in record
    assert running_ids(docker_client, site.factory).get(staying.container_id) == staying.uuid

    site.release(staying.uuid)
    site.wait_finished(staying.uuid, daemon)
    finish_and_check(site, daemon, docker_client, create_events, [first_daemon.text()])


@pytest.fixture
def docker_engine(docker_client, factory_label):
    """Stops and starts dockerd; it answers again after the test, pass or fail.

    It depends on factory_label so that the engine is back before that
    fixture removes the test's containers.
    """
    engine = DockerEngine()
    yield engine
    engine.ensure_running()


@pytest.mark.docker
def test_the_slots_ride_out_a_dockerd_restart_and_the_root_never_exits(
        site, daemon_factory, docker_client, create_events, docker_engine):  # noqa: F811
    daemon = daemon_factory(site.config)
    machines = site.wait_running(2, daemon)
    root_pid = daemon.proc.pid
    workers = {m.slot: slot_worker(daemon, m.slot) for m in machines}

    create_events.stop()
    docker_engine.stop()
    # Each slot's wait on its container fails, and the slot says so.
    deadline = time.monotonic() + 20
    while not all(any(t.startswith(f"vacd: slot {slot:02d} gate unavailable") for t in titles(root_pid))
                  for slot in workers):
        assert time.monotonic() < deadline, f"the slots did not report the outage: {titles(root_pid)}"
        time.sleep(0.1)
    time.sleep(2)
    docker_engine.start()
    create_events.start()

    for slot in workers:
        daemon.wait_log(f"slot {slot:02d}: the container engine answers again", timeout=40)
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    assert {m.slot: slot_worker(daemon, m.slot) for m in machines} == workers, "no slot worker crashed"
    # live-restore: the machines ran on, and nobody placed them again.
    assert set(running_ids(docker_client, site.factory).values()) == {m.uuid for m in machines}
    assert [m.uuid for m in site.machines()] == [m.uuid for m in machines]

    for machine in machines:
        site.release(machine.uuid)
    for machine in machines:
        assert site.wait_finished(machine.uuid, daemon).shutdown_code == 200
    # The root goes on placing machines.
    site.wait_running(2, daemon)
    assert daemon.proc.pid == root_pid
    finish_and_check(site, daemon, docker_client, create_events, [])


@pytest.mark.docker
def test_a_300_backs_its_machinetype_off_while_a_200_lets_it_start_again_at_once(
        tmp_path, factory_label, busybox_image, daemon_factory, docker_client, create_events):  # noqa: F811
    # Two slots. The first work machine runs throughout, so work's share is in
    # use and no-work, whose share is not, is the scheduler's first choice
    # whenever it is not in backoff. work's backoff outlasts the test, so a
    # work machine started right after another shows that a 200 is no abort.
    no_work = Machinetype("no-work", "300 No more work", backoff=12)
    work = Machinetype("work", "200 Work completed", backoff=300)
    site = Site(tmp_path, factory_label, busybox_image, [no_work, work], processors=2)
    daemon = daemon_factory(site.config)
    started = site.wait_running(2, daemon)
    assert sorted(m.machinetype for m in started) == ["no-work", "work"], "one of each at first"
    aborting = next(m for m in started if m.machinetype == "no-work")
    anchor = next(m for m in started if m.machinetype == "work")

    def next_in_slot(after):
        return site.wait(lambda ms: next((m for m in ms if m.slot == after.slot and m.created > after.created), None),
                         f"the machine after {after.uuid} in slot {after.slot}", daemon=daemon)

    site.release(aborting.uuid)
    aborted = site.wait_finished(aborting.uuid, daemon)
    assert aborted.shutdown_code == 300
    daemon.wait_log(f"machine {aborted.uuid} (no-work) finished: 300 No more work (abort: the machinetype backs off)")
    after_abort = next_in_slot(aborted)
    assert after_abort.machinetype == "work", "no-work is in backoff: its slot gets work instead"
    assert after_abort.created - aborted.ended < 10, "the slot is filled at once"

    site.wait_running(2, daemon)
    site.release(after_abort.uuid)
    completed = site.wait_finished(after_abort.uuid, daemon)
    assert completed.shutdown_code == 200
    after_200 = next_in_slot(completed)
    assert after_200.machinetype == "work", "a 200 puts no backoff on its machinetype"
    assert after_200.created - completed.ended < 10, "at once, not after its backoff_seconds"
    assert after_200.created < aborted.ended + no_work.backoff

    # Once no-work's backoff is over, it is the first choice again.
    site.wait_running(2, daemon)
    time.sleep(max(0.0, aborted.ended + no_work.backoff + 0.5 - time.time()))
    site.release(after_200.uuid)
    site.wait_finished(after_200.uuid, daemon)
    assert next_in_slot(after_200).machinetype == "no-work"
    assert not site.machine(anchor.uuid).finished
    assert [m.machinetype for m in site.machines() if m.created < aborted.ended + no_work.backoff].count(
        "no-work") == 1, "no no-work machine started during its backoff"
    finish_and_check(site, daemon, docker_client, create_events, [])
