"""Singularity machines in the real slot worker process, with the test playing the root.

Each test forks slot workers over socket pairs (slot_driver.py) whose spec
names the bubblewrap stand-in for apptainer, places busybox directory-image
machines that run as the slot's throwaway account in a cgroup of their own,
and checks what a site would notice: what the machine sees (the Docker
tests' checks, at the Singularity paths), its limits, the wall clock,
adoption after a worker's death, and one accounting record per machine.
Real cgroups, accounts and processes throughout; after each test no process
of its machines or accounts is left and their cgroups are gone.
"""

import json
import os
import shutil
import signal
import time
import uuid as uuid_module
from pathlib import Path

import psutil
import pytest

import test_slot_worker as docker_slot_tests
from accounts import account_processes, pid_alive
from singularity_site import (STANDIN, busybox_directory_image, clean_up_machines,  # noqa: F401 (fixtures)
                              cvmfs_repository, launcher_of, machine_cgroup_directories, machine_cgroups_exist,
                              machine_pids, needs_singularity_tools, reachable_state_dir, shared_root, slot_accounts)
from slot_driver import place, slot_workers
from test_slot_worker import template  # noqa: F401 (a fixture)
from test_slot_worker import assert_accounted_once, joboutputs, release_after_fizzle, wait_for_file
from vac.machine.layout import MachinePaths, machine_name
from vac.machine.record import read_record
from vac.runtimes.singularity_command import PAYLOAD_PATHS

pytestmark = needs_singularity_tools

SLOT = 3
MIB = 1024 ** 2
MB_PER_PROCESSOR = 256
PIDS_LIMIT = 200

# The Docker tests' script, with MJF read where the environment says they are.
SEE_EVERYTHING = (docker_slot_tests.SEE_EVERYTHING.replace("/etc/machinefeatures", "$MACHINEFEATURES")
                  .replace("/etc/jobfeatures", "$JOBFEATURES"))
# What only a Singularity machine is asked: its account, CernVM-FS, scratch.
SEE_MORE = """
echo "$(id -u):$(id -g):$(id -G)" > $out/id
cat /cvmfs/{repository}/README > $out/cvmfs
for path in /cvmfs/{repository}/x /scratch/x /x; do
  if echo x 2>/dev/null > $path; then echo "$path written"; else echo "$path refused"; fi
done > $out/more_writes
"""

WAIT_FOR_GO = docker_slot_tests.WAIT_FOR_GO

# Ignores SIGTERM, as do its forked grandchild and a daemon that left its session.
STUBBORN = """
trap '' TERM
( trap '' TERM; sleep 600 ) &
( setsid sh -c 'trap "" TERM; exec sleep 600' & ) &
sleep 1
touch $out/ready
while true; do sleep 1; done
"""


@pytest.fixture
def site(shared_root, slot_accounts):  # noqa: F811
    """(state directory, factory name); afterwards no process of its machines or accounts, no cgroup."""
    state_dir = reachable_state_dir(shared_root)
    factory = f"test-{uuid_module.uuid4().hex[:8]}"
    yield state_dir, factory
    clean_up_machines(state_dir, {account.pw_uid for account in slot_accounts[1]})
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def workers(site, slot_accounts, tmp_path):  # noqa: F811
    """Starts slot workers running Singularity machines; any still running at the end is killed."""
    state_dir, factory = site
    singularity = {"command": str(STANDIN), "cgroups": "vac", "sweep_seconds": 2,
                   "accounts": [account.pw_name for account in slot_accounts[1]]}
    with slot_workers(state_dir, factory, SLOT, tmp_path, singularity=singularity) as start:
        yield start


@pytest.fixture
def machine_place(site, slot_accounts, busybox_directory_image, template):  # noqa: F811
    """A Place message for a Singularity machine of the slot whose user_data runs `then`."""
    state_dir, factory = site

    def make(then, settings_changes=None, **changes):
        settings = {"singularity_user_prefix": slot_accounts[0], **(settings_changes or {})}
        fields = dict(machine_model="singularity", root_image=str(busybox_directory_image),
                      tmp_binds=("/scratch",), user_data_options={"then": then})
        fields.update(changes)
        return place(state_dir, factory, SLOT, template, settings_changes=settings, **fields)
    return make


def slot_account(slot_accounts):  # noqa: F811
    return slot_accounts[1][SLOT]


def expected_mjf(machine_uuid, shutdown_at, jobstart):
    """The Docker tests' Machine/Job Features, at the paths a Singularity machine sees them."""
    machinefeatures = {"total_cpu": "1", "hs06": "10.0", "shutdowntime": str(shutdown_at), "phys_cores": "1",
                       "log_cores": "1", "jobslots": "1", "grace_secs": "600"}
    limit = str(shutdown_at - jobstart)
    jobfeatures = {
        "allocated_cpu": "1", "wall_limit_secs": limit, "cpu_limit_secs": limit, "jobstart_secs": str(jobstart),
        "shutdowntime_job": str(shutdown_at), "max_rss_bytes": str(MB_PER_PROCESSOR * MIB), "hs06_job": "10.0",
        "job_id": machine_uuid, "max_swap_bytes": "0", "grace_secs_job": "600", "allocated_CPU": "1",
        "cpufactor_lrms": "1.0", "cpu_limit_secs_lrms": limit, "wall_limit_secs_lrms": limit,
        "mem_limit_MB": str(MB_PER_PROCESSOR * MIB // 10 ** 6)}
    return {**{f"{PAYLOAD_PATHS.machinefeatures}/{key}": value for key, value in machinefeatures.items()},
            **{f"{PAYLOAD_PATHS.jobfeatures}/{key}": value for key, value in jobfeatures.items()}}


def cgroup_limits(machine_uuid):
    """(memory bytes, CPU quota in processors, pids) as the machine's cgroup holds them, v1 or v2."""
    values = {}
    for directory in map(Path, machine_cgroup_directories(machine_uuid)):
        files = {path.name: path for path in directory.iterdir() if path.is_file()}
        if "memory.max" in files:
            values["memory"] = int(files["memory.max"].read_text())
        if "memory.limit_in_bytes" in files:
            values["memory"] = int(files["memory.limit_in_bytes"].read_text())
        if "cpu.max" in files and files["cpu.max"].read_text().split()[0] != "max":
            quota, period = files["cpu.max"].read_text().split()
            values["cpus"] = int(quota) / int(period)
        if "cpu.cfs_quota_us" in files:
            quota, period = (int(files[name].read_text()) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
            values["cpus"] = quota / period
        if "pids.max" in files and files["pids.max"].read_text().strip() != "max":
            values["pids"] = int(files["pids.max"].read_text())
    return values.get("memory"), values.get("cpus"), values.get("pids")


def finish_cleanly(driver, finished, machine_uuid):
    """After `finished`, the worker goes back to idle; nothing of the machine runs, its cgroups are gone."""
    driver.state("idle", after=finished, machine=None)
    assert not machine_cgroups_exist(machine_uuid), machine_cgroup_directories(machine_uuid)


def test_the_machine_sees_what_docker_machines_see_at_its_own_paths_as_its_account(
        site, workers, machine_place, slot_accounts, cvmfs_repository):  # noqa: F811
    state_dir, factory = site
    worker = workers()
    place_msg = machine_place(SEE_MORE.format(repository=cvmfs_repository) + SEE_EVERYTHING,
                              cvmfs_repositories=(cvmfs_repository,))
    uuid = worker.send_place(place_msg)
    running = worker.state("running")
    machine = running.detail["machine"]
    assert (machine["uuid"], machine["machinetype"], machine["processors"], machine["superslot"]) == (
        uuid, "busybox-test", 1, SLOT)
    assert machine["container_id"] == f"singularity-{uuid}"
    out = joboutputs(state_dir, uuid)
    wait_for_file(out / "ready")

    assert cgroup_limits(uuid) == (MB_PER_PROCESSOR * MIB, 1.0, PIDS_LIMIT)
    account = slot_account(slot_accounts)
    assert (out / "id").read_text().split(":") == [str(account.pw_uid), str(account.pw_gid), f"{account.pw_gid}\n"]
    assert (out / "hostname").read_text().strip() == machine_name(factory, SLOT)
    assert (out / "environment").read_text().strip() == " ".join(
        (PAYLOAD_PATHS.machinefeatures, PAYLOAD_PATHS.jobfeatures, PAYLOAD_PATHS.joboutputs))
    assert (out / "uuid").read_text().strip() == uuid
    seen_user_data = (out / "user_data_seen").read_text()
    assert f'echo "{uuid}"' in seen_user_data and "##user_data_" not in seen_user_data
    assert (out / "writes").read_text().split("\n")[:-1] == [
        "/user_data refused", f"{PAYLOAD_PATHS.machinefeatures}/total_cpu refused",
        f"{PAYLOAD_PATHS.machinefeatures}/new refused", f"{PAYLOAD_PATHS.jobfeatures}/new refused"]
    seen = dict(line.split("=", 1) for line in (out / "mjf").read_text().splitlines())
    jobstart = int(seen[f"{PAYLOAD_PATHS.jobfeatures}/jobstart_secs"])
    assert abs(jobstart - time.time()) < 60
    assert seen == expected_mjf(uuid, place_msg.machine["shutdown_at"], jobstart)
    assert (out / "cvmfs").read_text() == "repository content\n"
    assert (out / "more_writes").read_text().split("\n")[:-1] == [
        f"/cvmfs/{cvmfs_repository}/x refused", "/scratch/x written", "/x refused"]
    [scratch_file] = MachinePaths.for_machine(state_dir, uuid).scratch.rglob("x")
    assert scratch_file.read_text() == "x\n" and scratch_file.stat().st_uid == account.pw_uid

    release_after_fizzle(out, machine["started_at"])
    finished = worker.finished(uuid)
    assert (finished.code, finished.text, finished.machinetype, finished.processors) == (
        200, "Seen everything", "busybox-test", 1)
    finish_cleanly(worker, finished, uuid)
    assert_accounted_once(state_dir, [finished], fizzle_seconds=1)


def test_a_payload_allocating_past_its_memory_is_oom_killed_and_the_machine_says_so(
        site, workers, machine_place):
    state_dir, _ = site
    worker = workers()
    # sort holds all its input: 100 MiB of short lines cannot fit in 256 MiB.
    uuid = worker.send_place(machine_place("yes | head -c 100m | sort > /dev/null\n"))
    finished = worker.finished(uuid, timeout=60)
    assert "the container exited with code 137 (killed for lack of memory)" in worker.log()
    assert finished.code is None and finished.text == "no shutdown_message"
    assert read_record(MachinePaths.for_machine(state_dir, uuid)).exit_code == 137
    finish_cleanly(worker, finished, uuid)


def test_the_pids_limit_holds_against_a_payload_that_forks_without_end(site, workers, machine_place):
    state_dir, _ = site
    pids_limit = 40
    worker = workers()
    fork_storm = """
( n=0; while [ $n -lt 100 ]; do sleep 300 & n=$((n+1)); echo $n > $out/started; done ) 2> $out/fork_errors
count=$(cat $out/started)
killall sleep
echo "200 Started $count" > $out/shutdown_message
"""
    uuid = worker.send_place(machine_place(fork_storm, settings_changes={"pids_limit": pids_limit}))
    finished = worker.finished(uuid, timeout=30)
    out = joboutputs(state_dir, uuid)
    started = int((out / "started").read_text())
    assert "fork" in (out / "fork_errors").read_text()
    assert 10 < started < pids_limit, "the launcher, Apptainer and the shells count against the limit"
    assert (finished.code, finished.text) == (200, f"Started {started}")
    finish_cleanly(worker, finished, uuid)


def test_the_wall_clock_limit_ends_a_payload_that_ignores_sigterm_with_its_children_and_daemon(
        site, workers, machine_place, slot_accounts):  # noqa: F811
    state_dir, _ = site
    worker = workers()
    place_msg = machine_place(STUBBORN, fizzle_seconds=1)
    shutdown_at = int(time.time()) + 5
    place_msg.machine["shutdown_at"] = shutdown_at
    uuid = worker.send_place(place_msg)
    wait_for_file(joboutputs(state_dir, uuid) / "ready")
    processes = machine_pids(uuid)
    launcher, _ = launcher_of(state_dir, uuid)
    sleepers = [p for p in map(psutil.Process, processes - {launcher}) if p.name() == "sleep"]
    assert len(sleepers) >= 2 and any(p.pid == os.getsid(p.pid) for p in sleepers), "a daemon in its own session"

    finished = worker.finished(uuid, timeout=20)
    assert (finished.code, finished.text) == (700, "Exceeded max_wallclock_seconds")
    assert shutdown_at <= finished.ended_at <= shutdown_at + 2, finished.ended_at - shutdown_at
    assert [pid for pid in processes if pid_alive(pid)] == []
    assert account_processes({slot_account(slot_accounts).pw_uid}) == []
    finish_cleanly(worker, finished, uuid)
    assert_accounted_once(state_dir, [finished], fizzle_seconds=1)


def test_a_killed_worker_s_machine_is_adopted_by_the_next_and_finalised_once(site, workers, machine_place):
    state_dir, _ = site
    first = workers()
    uuid = first.send_place(machine_place(WAIT_FOR_GO))
    container_id = first.state("running").detail["machine"]["container_id"]
    out = joboutputs(state_dir, uuid)
    wait_for_file(out / "ready")
    launcher = launcher_of(state_dir, uuid)
    first.signal(signal.SIGKILL)
    first.reap()
    assert pid_alive(launcher[0]), "the launcher outlives its worker"

    second = workers(idle=False)
    adopted = second.state("running")
    assert adopted.detail["machine"]["container_id"] == container_id
    assert launcher_of(state_dir, uuid) == launcher and pid_alive(launcher[0]), "the same launcher, not a new one"
    release_after_fizzle(out, adopted.detail["machine"]["started_at"])
    finished = second.finished(uuid)
    assert (finished.code, finished.text) == (200, "Done")
    finish_cleanly(second, finished, uuid)
    assert first.finished_messages() == [] and second.finished_messages() == [finished]
    assert_accounted_once(state_dir, [finished], fizzle_seconds=1)


def test_a_machine_that_ends_while_no_worker_runs_is_finalised_once_with_its_exit_code_and_end(
        site, workers, machine_place):
    state_dir, _ = site
    first = workers()
    uuid = first.send_place(machine_place(WAIT_FOR_GO + "exit 3\n"))
    first.state("running")
    out = joboutputs(state_dir, uuid)
    wait_for_file(out / "ready")
    launcher, _ = launcher_of(state_dir, uuid)

    began = time.monotonic()
    first.stop()          # SIGTERM: the worker goes at once and leaves its machine running
    assert time.monotonic() - began < 3
    assert os.WIFEXITED(first.exit_status) and os.WEXITSTATUS(first.exit_status) == 0
    assert pid_alive(launcher)
    time.sleep(1.2)
    (out / "go").touch()
    deadline = time.monotonic() + 20
    while pid_alive(launcher):
        assert time.monotonic() < deadline, "the machine did not end"
        time.sleep(0.05)
    status = json.loads((MachinePaths.for_machine(state_dir, uuid).root / "singularity" / "exit_status").read_text())
    time.sleep(1.5)       # a successor that took its own clock for the end would be seen
    restarted_at = time.time()

    second = workers(idle=False)
    finished = second.finished(uuid)
    assert (finished.code, finished.text) == (200, "Done")
    assert finished.ended_at == pytest.approx(status["finished_at"], abs=0.01) and finished.ended_at < restarted_at
    record = read_record(MachinePaths.for_machine(state_dir, uuid))
    assert (record.exit_code, record.end_estimated) == (3, False)
    finish_cleanly(second, finished, uuid)
    second.stop()

    third = workers()
    third.drain(1.0)
    assert third.finished_messages() == [] and first.finished_messages() == []
    assert_accounted_once(state_dir, [finished], fizzle_seconds=1)


# Burns CPU in one shell only once the slot's first usage sample (1 s after the
# start) is taken, ends before the next (5 s later), and records its own CPU time.
LATE_BURNER = """
sleep 2
sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; read stat < /proc/$$/stat; echo "$stat" > $JOBOUTPUTS/burner'
echo "200 Busy" > $out/shutdown_message
"""


def own_cpu_seconds(stat_line):
    """utime + stime of a /proc/PID/stat line, in seconds."""
    fields = stat_line[stat_line.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_whole_cpu_time_of_the_machine_is_accounted(site, workers, machine_place):
    state_dir, _ = site
    worker = workers()
    uuid = worker.send_place(machine_place(LATE_BURNER))
    finished = worker.finished(uuid, timeout=20)
    assert (finished.code, finished.text) == (200, "Busy"), finished
    burnt = own_cpu_seconds((joboutputs(state_dir, uuid) / "burner").read_text())
    assert burnt >= 0.3
    # Its cgroup's total, not only what the slot sampled while it ran; never more than its life on one processor.
    assert burnt - 0.02 <= finished.cpu_seconds <= finished.ended_at - finished.started_at + 0.5, (burnt, finished)
    finish_cleanly(worker, finished, uuid)
    assert_accounted_once(state_dir, [finished], fizzle_seconds=1)
