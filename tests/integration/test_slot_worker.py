"""The real slot worker process against the real Docker engine, with the test playing the root.

Each test forks workers over socket pairs (slot_driver.py), places busybox
machines whose /user_data records what the container sees into joboutputs,
and checks what a site would notice: what the container sees, the limits it
runs under, the messages the root gets, the wall clock, heartbeats, hostile
joboutputs, adoption after a crash, and one accounting record per machine.
"""

import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from vac import history
from vac.ipc import messages
from vac.machine.layout import MachinePaths, machine_name
from vac.machine.record import read_record
from vac.runtimes.docker_api import parse_docker_time

from engine_proxy import engine_proxy  # noqa: F401 (a fixture)
from slot_driver import SlotDriver, place, slot_workers

SLOT = 3
MIB = 1024 ** 2

TEMPLATE = """#!/bin/sh
out=$JOBOUTPUTS
echo "##user_data_uuid##" > $out/uuid
##user_data_option_then##
"""

SEE_EVERYTHING = """
hostname > $out/hostname
echo "$MACHINEFEATURES $JOBFEATURES $JOBOUTPUTS" > $out/environment
for f in /etc/machinefeatures/* /etc/jobfeatures/*; do echo "$f=$(cat $f)"; done > $out/mjf
cp /user_data $out/user_data_seen
for path in /user_data /etc/machinefeatures/total_cpu /etc/machinefeatures/new /etc/jobfeatures/new; do
  if echo x 2>/dev/null >> $path; then echo "$path written"; else echo "$path refused"; fi
done > $out/writes
touch $out/ready
while [ ! -e $out/go ]; do sleep 0.1; done
echo "200 Seen everything" > $out/shutdown_message
"""

WAIT_FOR_GO = """
touch $out/ready
while [ ! -e $out/go ]; do sleep 0.1; done
echo "200 Done" > $out/shutdown_message
"""

SLEEP = """
touch $out/ready
exec sleep 300
"""


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "user_data.template"
    path.write_text(TEMPLATE)
    return path


@pytest.fixture
def workers(tmp_state_dir, factory_label, tmp_path):
    """Starts slot workers for the test (start(idle=True, docker_url=None)); any still running at the end is killed."""
    with slot_workers(tmp_state_dir, factory_label, SLOT, tmp_path) as start:
        yield start


def labelled(docker_client, factory_label):
    return docker_client.containers.list(all=True, filters={"label": f"vac.factory={factory_label}"}, ignore_removed=True)


def wait_for_file(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def joboutputs(state_dir, uuid):
    return MachinePaths.for_machine(state_dir, uuid).joboutputs


def release_after_fizzle(out, started_at):
    """Let the machine end (its user_data waits for joboutputs/go) once it has lived past fizzle_seconds."""
    time.sleep(max(0.0, started_at + 1.2 - time.time()))
    (out / "go").touch()


def machine_place(tmp_state_dir, factory_label, template, then, **changes):
    options = {"then": then}
    return place(tmp_state_dir, factory_label, SLOT, template, user_data_options=options, **changes)


def assert_accounted_once(state_dir, finished, fizzle_seconds):
    """Exactly one APEL record for each finished machine that lived at least fizzle_seconds, none for others."""
    archive = Path(state_dir) / "apel-archive"
    records = [p.read_text() for p in archive.rglob("*") if p.is_file()] if archive.exists() else []
    for machine in finished:
        expected = 1 if machine.ended_at - machine.started_at >= fizzle_seconds else 0
        assert sum(f"LocalJobId: {machine.uuid}\n" in text for text in records) == expected, machine
    assert len(records) == sum(1 for m in finished if m.ended_at - m.started_at >= fizzle_seconds)


def finish_cleanly(docker_client, factory_label, driver, finished):
    """After `finished`, the worker goes back to idle and leaves no container of the test behind."""
    driver.state("idle", after=finished, machine=None)
    assert labelled(docker_client, factory_label) == []


@pytest.mark.docker
def test_the_container_sees_what_interfaces_promise_and_runs_under_its_limits(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, SEE_EVERYTHING)
    uuid = place_msg.machine["uuid"]
    worker.send(place_msg)
    running = worker.state("running")
    machine = running.detail["machine"]
    assert (machine["uuid"], machine["machinetype"], machine["processors"], machine["superslot"]) == (
        uuid, "busybox-test", 1, SLOT)
    out = joboutputs(tmp_state_dir, uuid)
    wait_for_file(out / "ready")

    container = docker_client.containers.get(machine["container_id"])
    host_config = container.attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["PidsLimit"]) == (256 * MIB, 10 ** 9, 200)
    assert container.attrs["Config"]["Hostname"] == machine_name(factory_label, SLOT)
    assert container.labels["vac.machine"] == uuid and container.labels["vac.slot"] == str(SLOT)
    mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
    assert mounts == {"/user_data": False, "/etc/machinefeatures": False, "/etc/jobfeatures": False,
                      "/var/spool/joboutputs": True}

    assert (out / "hostname").read_text().strip() == machine_name(factory_label, SLOT)
    assert (out / "environment").read_text().strip() == "/etc/machinefeatures /etc/jobfeatures /var/spool/joboutputs"
    assert (out / "uuid").read_text().strip() == uuid
    seen_user_data = (out / "user_data_seen").read_text()
    assert f'echo "{uuid}"' in seen_user_data and "##user_data_" not in seen_user_data
    assert (out / "writes").read_text().split("\n")[:-1] == [
        "/user_data refused", "/etc/machinefeatures/total_cpu refused", "/etc/machinefeatures/new refused",
        "/etc/jobfeatures/new refused"]
    seen = dict(line.split("=", 1) for line in (out / "mjf").read_text().splitlines())
    shutdown_at = place_msg.machine["shutdown_at"]
    jobstart = int(seen["/etc/jobfeatures/jobstart_secs"])
    assert abs(jobstart - time.time()) < 60
    assert seen == {
        "/etc/machinefeatures/total_cpu": "1", "/etc/machinefeatures/hs06": "10.0",
        "/etc/machinefeatures/shutdowntime": str(shutdown_at), "/etc/machinefeatures/phys_cores": "1",
        "/etc/machinefeatures/log_cores": "1", "/etc/machinefeatures/jobslots": "1",
        "/etc/machinefeatures/grace_secs": "600",
        "/etc/jobfeatures/allocated_cpu": "1", "/etc/jobfeatures/wall_limit_secs": str(shutdown_at - jobstart),
        "/etc/jobfeatures/cpu_limit_secs": str(shutdown_at - jobstart),
        "/etc/jobfeatures/jobstart_secs": str(jobstart), "/etc/jobfeatures/shutdowntime_job": str(shutdown_at),
        "/etc/jobfeatures/max_rss_bytes": str(256 * MIB), "/etc/jobfeatures/hs06_job": "10.0",
        "/etc/jobfeatures/job_id": uuid, "/etc/jobfeatures/max_swap_bytes": "0",
        "/etc/jobfeatures/grace_secs_job": "600", "/etc/jobfeatures/allocated_CPU": "1",
        "/etc/jobfeatures/cpufactor_lrms": "1.0", "/etc/jobfeatures/cpu_limit_secs_lrms": str(shutdown_at - jobstart),
        "/etc/jobfeatures/wall_limit_secs_lrms": str(shutdown_at - jobstart),
        "/etc/jobfeatures/mem_limit_MB": str(256 * MIB // 10 ** 6)}

    release_after_fizzle(out, machine["started_at"])
    finished = worker.finished(uuid)
    assert (finished.code, finished.text, finished.machinetype, finished.processors) == (
        200, "Seen everything", "busybox-test", 1)
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
@pytest.mark.parametrize("line, code, text", [("200 Work completed", 200, "Work completed"),
                                              ("300 No more work", 300, "No more work")])
def test_the_machine_s_shutdown_message_reaches_the_root(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers, line, code, text):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, f'echo "{line}" > $out/shutdown_message')
    worker.send(place_msg)
    finished = worker.finished(place_msg.machine["uuid"])
    assert (finished.code, finished.text) == (code, text)
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_the_wall_clock_limit_ends_a_sleeping_machine_within_two_seconds(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, SLEEP, fizzle_seconds=1)
    shutdown_at = int(time.time()) + 4
    place_msg.machine["shutdown_at"] = shutdown_at
    worker.send(place_msg)
    finished = worker.finished(place_msg.machine["uuid"], timeout=20)
    assert (finished.code, finished.text) == (700, "Exceeded max_wallclock_seconds")
    assert shutdown_at <= finished.ended_at <= shutdown_at + 2, finished.ended_at - shutdown_at
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_a_missing_heartbeat_file_ends_the_machine_after_fizzle(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, SLEEP, heartbeat_file="heartbeat",
                              heartbeat_seconds=2, fizzle_seconds=2)
    worker.send(place_msg)
    finished = worker.finished(place_msg.machine["uuid"], timeout=20)
    assert (finished.code, finished.text) == (700, "Heartbeat file not created")
    assert 2 <= finished.ended_at - finished.started_at <= 5
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=2)


@pytest.mark.docker
@pytest.mark.parametrize("target_exists", [True, False])
def test_a_planted_shutdown_message_symlink_leaks_nothing_and_is_never_written_through(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers, tmp_path, target_exists):
    secret = tmp_path / "root-only"
    if target_exists:
        secret.write_text("TOP-SECRET 200 trust me")
        secret.chmod(0o600)
    worker = workers()
    plant = f"ln -s {secret} $out/shutdown_message\n" + SLEEP
    place_msg = machine_place(tmp_state_dir, factory_label, template, plant)
    place_msg.machine["shutdown_at"] = int(time.time()) + 4
    uuid = place_msg.machine["uuid"]
    worker.send(place_msg)
    finished = worker.finished(uuid, timeout=20)

    assert finished.code is None and "symlink" in finished.text and "SECRET" not in finished.text
    if target_exists:
        assert secret.read_text() == "TOP-SECRET 200 trust me" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    else:
        assert not secret.exists()
    assert (joboutputs(tmp_state_dir, uuid) / "shutdown_message").is_symlink()
    assert "TOP-SECRET" not in worker.log()
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_a_killed_worker_s_container_is_adopted_by_the_next_and_finalised_once(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    first = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, WAIT_FOR_GO)
    uuid = place_msg.machine["uuid"]
    first.send(place_msg)
    container_id = first.state("running").detail["machine"]["container_id"]
    out = joboutputs(tmp_state_dir, uuid)
    wait_for_file(out / "ready")
    first.signal(signal.SIGKILL)
    first.reap()

    second = workers(idle=False)
    adopted = second.state("running")
    assert adopted.detail["machine"]["container_id"] == container_id
    assert [c.id for c in labelled(docker_client, factory_label)] == [container_id]
    release_after_fizzle(out, adopted.detail["machine"]["started_at"])
    finished = second.finished(uuid)
    assert (finished.code, finished.text) == (200, "Done")
    finish_cleanly(docker_client, factory_label, second, finished)
    assert first.finished_messages() == [] and second.finished_messages() == [finished]
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_a_container_that_ends_while_no_worker_runs_is_finalised_once_by_the_next(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    first = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, WAIT_FOR_GO)
    uuid = place_msg.machine["uuid"]
    first.send(place_msg)
    container_id = first.state("running").detail["machine"]["container_id"]
    out = joboutputs(tmp_state_dir, uuid)
    wait_for_file(out / "ready")

    began = time.monotonic()
    first.stop()          # SIGTERM: the worker goes at once and leaves its container running
    assert time.monotonic() - began < 3
    assert os.WIFEXITED(first.exit_status) and os.WEXITSTATUS(first.exit_status) == 0
    container = docker_client.containers.get(container_id)
    assert container.status == "running"
    time.sleep(1.2)
    (out / "go").touch()
    container.wait(timeout=20)

    second = workers(idle=False)
    finished = second.finished(uuid)
    assert (finished.code, finished.text) == (200, "Done")
    finish_cleanly(docker_client, factory_label, second, finished)
    second.stop()

    third = workers()
    third.state("idle")
    third.drain(1.0)
    assert third.finished_messages() == [] and first.finished_messages() == []
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_an_image_that_cannot_be_pulled_fails_the_start_with_700(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, SLEEP,
                              root_image="docker://localhost:1/vac-no-such-image:latest")
    worker.send(place_msg)
    finished = worker.finished(place_msg.machine["uuid"], timeout=30)
    assert (finished.code, finished.text) == (700, "Failed to start")
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_end_machine_from_the_root_stops_the_container_with_its_message(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    place_msg = machine_place(tmp_state_dir, factory_label, template, SLEEP)
    uuid = place_msg.machine["uuid"]
    worker.send(place_msg)
    worker.state("running")
    worker.send(messages.EndMachine(uuid, 100, "Shutdown requested by the factory"))
    finished = worker.finished(uuid, timeout=20)
    assert (finished.code, finished.text) == (100, "Shutdown requested by the factory")
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


@pytest.mark.docker
def test_cpu_time_is_sampled_while_the_container_runs_and_accounted(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers):
    worker = workers()
    busy = 'timeout 3 yes > /dev/null\necho "200 Busy" > $out/shutdown_message\n'
    place_msg = machine_place(tmp_state_dir, factory_label, template, busy)
    worker.send(place_msg)
    finished = worker.finished(place_msg.machine["uuid"], timeout=20)
    assert finished.code == 200
    # The engine forgets a container's CPU time when it exits: this is what was sampled while it ran.
    assert 0.5 <= finished.cpu_seconds <= finished.ended_at - finished.started_at + 0.5
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)


def test_an_unreachable_engine_is_reported_while_the_worker_keeps_heartbeating(tmp_state_dir, tmp_path):
    worker = SlotDriver(tmp_state_dir, "test-no-engine", SLOT, tmp_path / "slot.log",
                        docker_url=f"unix://{tmp_path}/no-engine.sock").start()
    try:
        report = worker.state("unavailable", timeout=10)
        assert report.detail["machine"] is None and "no-engine.sock" in report.detail["error"]
        began = len(worker.received)
        worker.drain(3.0)
        heartbeats = [m for m in worker.received[began:] if isinstance(m, messages.Heartbeat)]
        assert len(heartbeats) >= 4
        status = worker.stop(timeout=3)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        worker.kill()


def placed_through(engine_proxy, workers, tmp_state_dir, factory_label, template, then):
    """A worker that reaches the engine through `engine_proxy`, placed a machine that runs `then`: (worker, uuid)."""
    worker = workers(docker_url=engine_proxy.url)
    place_msg = machine_place(tmp_state_dir, factory_label, template, then)
    worker.send(place_msg)
    return worker, place_msg.machine["uuid"]


def history_of(state_dir, uuid):
    [span] = [m for m in history.machines_between(state_dir, 0, time.time() + 3600) if m.uuid == uuid] or [None]
    return span


def cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# An engine slow to answer statistics, as just after a dockerd restart.
STATS_REQUEST = r"^GET /v[0-9.]+/containers/[0-9a-f]+/stats"
START_REQUEST = r"^POST /v[0-9.]+/containers/[0-9a-f]+/start"
# Every request about one container: its creation, and each call on its id.
CONTAINER_REQUEST = r"^[A-Z]+ /v[0-9.]+/containers/(create|[0-9a-f]{64}([/?]|$))"
STATS_HELD_SECONDS = 7.0


@pytest.mark.docker
def test_a_wall_clock_limit_falling_due_while_a_stats_call_hangs_ends_and_accounts_the_machine(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers, engine_proxy):
    slow_stats = engine_proxy.hold(STATS_REQUEST, seconds=STATS_HELD_SECONDS)
    worker, uuid = placed_through(engine_proxy, workers, tmp_state_dir, factory_label, template, SLEEP)
    worker.state("running")
    began, cpu_before = time.monotonic(), cpu_seconds(worker.pid)

    slow_stats.wait_held()          # a CPU sample is under way and the engine sits on it
    shutdown_at = int(time.time()) + 2
    worker.send(messages.LowerShutdown(uuid, shutdown_at))
    finished = worker.finished(uuid, timeout=30)

    assert (finished.code, finished.text) == (700, "Exceeded max_wallclock_seconds")
    assert shutdown_at <= finished.ended_at <= shutdown_at + 2, finished.ended_at - shutdown_at
    assert slow_stats.held[0].answered_at is None or slow_stats.held[0].answered_at > shutdown_at, \
        "the limit fell due while the statistics call hung"
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert (joboutputs(tmp_state_dir, uuid).parent / "finished").exists()
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)
    span = history_of(tmp_state_dir, uuid)
    assert (span.started_at, span.ended_at, span.shutdown_code) == (finished.started_at, finished.ended_at, 700)

    # The slot goes on: its next machine runs and ends as usual.
    next_msg = machine_place(tmp_state_dir, factory_label, template, 'echo "200 Next" > $out/shutdown_message')
    worker.send(next_msg)
    following = worker.finished(next_msg.machine["uuid"], timeout=30)
    assert (following.code, following.text) == (200, "Next")
    finish_cleanly(docker_client, factory_label, worker, following)
    # A worker that spins burns a whole processor; a waiting one next to nothing.
    elapsed, used = time.monotonic() - began, cpu_seconds(worker.pid) - cpu_before
    assert used < 0.25 * elapsed, f"the worker used {used:.1f} s of CPU in {elapsed:.1f} s"


@pytest.mark.docker
def test_a_worker_killed_while_its_container_starts_leaves_a_machine_accounted_from_the_engine_s_start(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers, engine_proxy):
    start_answer = engine_proxy.hold(START_REQUEST, count=1)
    first, uuid = placed_through(engine_proxy, workers, tmp_state_dir, factory_label, template, WAIT_FOR_GO)

    held = start_answer.wait_held()   # the engine has been asked to start it; the worker waits for the answer
    first.kill()
    start_answer.release()
    record = read_record(MachinePaths.for_machine(tmp_state_dir, uuid))
    assert (record.state, record.started) == ("starting", None), "killed before it could record the start"
    assert record.start_requested is not None and record.start_requested <= held.asked_at

    [container] = labelled(docker_client, factory_label)
    out = joboutputs(tmp_state_dir, uuid)
    wait_for_file(out / "ready")
    engine_started = parse_docker_time(container.attrs["State"]["StartedAt"])
    release_after_fizzle(out, engine_started)
    container.wait(timeout=20)      # it ends before any worker adopts it

    second = workers(idle=False)
    finished = second.finished(uuid)
    assert (finished.code, finished.text, finished.started_at) == (200, "Done", engine_started)
    finish_cleanly(docker_client, factory_label, second, finished)
    assert read_record(MachinePaths.for_machine(tmp_state_dir, uuid)).started == engine_started
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)
    span = history_of(tmp_state_dir, uuid)
    assert (span.started_at, span.ended_at, span.shutdown_code) == (engine_started, finished.ended_at, 200)


@pytest.mark.docker
def test_a_machine_s_life_takes_five_engine_calls_and_is_accounted_from_the_engine_s_start(
        busybox_image, docker_client, factory_label, tmp_state_dir, template, workers, engine_proxy):
    calls = engine_proxy.hold(CONTAINER_REQUEST, seconds=0)
    worker, uuid = placed_through(engine_proxy, workers, tmp_state_dir, factory_label, template, WAIT_FOR_GO)
    out = joboutputs(tmp_state_dir, uuid)
    wait_for_file(out / "ready")
    worker.state("running")         # reported once the running record is written (the payload may be quicker)
    [container] = labelled(docker_client, factory_label)
    engine_started = parse_docker_time(container.attrs["State"]["StartedAt"])
    running = read_record(MachinePaths.for_machine(tmp_state_dir, uuid))
    # While it runs, the record has the time the start returned: the start's answer carries none.
    assert engine_started <= running.started <= engine_started + 5
    release_after_fizzle(out, engine_started)

    finished = worker.finished(uuid)
    assert (finished.code, finished.started_at) == (200, engine_started)
    finish_cleanly(docker_client, factory_label, worker, finished)
    assert read_record(MachinePaths.for_machine(tmp_state_dir, uuid)).started == engine_started
    assert history_of(tmp_state_dir, uuid).started_at == engine_started
    assert_accounted_once(tmp_state_dir, [finished], fizzle_seconds=1)
    # Create, start, wait, the inspection after the exit, remove; CPU samples while it ran (one a few seconds).
    asked = [held.request.split(" ", 2)[:2] for held in calls.held]
    kinds = [f"{method} {path.split('?')[0].rsplit('/', 1)[-1]}" for method, path in asked]
    assert [kind for kind in kinds if kind != "GET stats"] == [
        "POST create", "POST start", "POST wait", "GET json", "DELETE " + container.id], kinds
