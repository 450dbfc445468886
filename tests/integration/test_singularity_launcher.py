"""The Singularity launcher with real processes, real cgroups and a throwaway account."""

import grp
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from accounts import kill_pids, throwaway_accounts
from singularity_site import (HOST_PATH, STANDIN, busybox_directory_image,  # noqa: F401 (fixtures)
                              shared_root)

import vac.runtimes.singularity_launcher as launcher_module

LAUNCHER = launcher_module.__file__
UNIFIED = Path("/sys/fs/cgroup/unified")
MEMORY = Path("/sys/fs/cgroup/memory")
LAUNCH_DEADLINE = 60
RECORD_DEADLINE = 30
CGROUP_EMPTY_DEADLINE = 10

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or not (UNIFIED / "cgroup.procs").exists(),
    reason="the launcher needs root, useradd and a cgroup2 mount at /sys/fs/cgroup/unified")


@pytest.fixture(scope="module")
def account(request):
    """A throwaway account with its own group and one supplementary group."""
    suffix = uuid.uuid4().hex[:6]
    user, extra = f"vacsl-{suffix}", f"vacslx-{suffix}"
    [entry] = throwaway_accounts(request, [user], groups=[extra])
    return {"user": user, "uid": entry.pw_uid, "gid": entry.pw_gid, "extra_gid": grp.getgrnam(extra).gr_gid}


def own_cgroup(controller):
    """This process's cgroup path in the v1 hierarchy of controller, or None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def kill_and_remove(directory):
    """Kill what is left in a test cgroup, wait (bounded) until it is empty, remove it."""
    if not directory.exists():
        return
    children = [child for child in directory.iterdir() if child.is_dir()]
    for child in children:
        kill_and_remove(child)
    deadline = time.monotonic() + CGROUP_EMPTY_DEADLINE
    while (pids := (directory / "cgroup.procs").read_text().split()):
        assert time.monotonic() < deadline, f"{directory} still holds {pids}"
        kill_pids(map(int, pids))
        time.sleep(0.05)
    directory.rmdir()


@pytest.fixture
def cgroups():
    """A machine's launcher and payload cgroups (not yet made) in the unified and memory hierarchies."""
    name = f"vac-test-{uuid.uuid4().hex[:8]}"
    tops = [UNIFIED / name]
    memory = own_cgroup("memory")
    if memory is not None and (MEMORY / "cgroup.procs").exists():
        tops.append(MEMORY / memory.lstrip("/") / name)  # below ours: this host's memory limit still holds
    yield {"tops": tops, "name": name}
    for top in tops:
        kill_and_remove(top)


@pytest.fixture
def machine_dir(tmp_path):
    directory = tmp_path / "singularity"
    directory.mkdir()
    return directory


def make_plan(account, cgroups, machine_dir, argv, **changes):
    """A plan as the runtime writes it."""
    tops = cgroups["tops"]
    plan = {
        "argv": argv, "env": {"PATH": HOST_PATH, "LANG": "C"},
        "user": account["user"], "uid": account["uid"], "gid": account["gid"], "cwd": "/",
        "mkdirs": [str(top / child) for top in tops for child in ("launcher", "payload")],
        "launcher_procs": [str(top / "launcher" / "cgroup.procs") for top in tops],
        "payload_procs": [str(top / "payload" / "cgroup.procs") for top in tops],
        "dir": str(machine_dir), "log_limit_bytes": 16 * 1024 * 1024,
    }
    plan.update(changes)
    path = machine_dir / "plan.json"
    path.write_text(json.dumps(plan))
    path.chmod(0o600)
    return path


def launch(plan_path):
    """Run the launcher as the runtime does: the first process's exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-I", "-S", LAUNCHER, str(plan_path)], capture_output=True,
                          text=True, timeout=LAUNCH_DEADLINE)


def started(result):
    """The payload's pid from a successful launch."""
    assert result.returncode == 0, result.stderr
    pid, started_at = result.stdout.split()
    assert abs(float(started_at) - time.time()) < LAUNCH_DEADLINE
    return int(pid)


def wait_for_exit_status(machine_dir, deadline=RECORD_DEADLINE):
    path = machine_dir / "exit_status"
    end = time.monotonic() + deadline
    while not path.exists():
        assert time.monotonic() < end, f"no exit_status in {machine_dir} after {deadline} s"
        time.sleep(0.05)
    return json.loads(path.read_text())


def status_fields(pid):
    """/proc/PID/status as a dict of its lines."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def cgroup_paths(text):
    """hierarchy (controllers, or '' for cgroup2) -> path, from /proc/PID/cgroup text."""
    paths = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def assert_in_machine_cgroup(text, cgroups, child):
    paths = cgroup_paths(text)
    assert paths[""] == f"/{cgroups['name']}/{child}"
    if len(cgroups["tops"]) > 1:
        assert paths["memory"].endswith(f"/{cgroups['name']}/{child}")


def test_help_and_a_root_plan_is_refused(account, cgroups, machine_dir):
    helped = subprocess.run([sys.executable, "-I", "-S", LAUNCHER, "--help"], capture_output=True, text=True,
                            timeout=LAUNCH_DEADLINE)
    assert helped.returncode == 0 and helped.stdout.startswith("usage:")

    for uid, gid in ((0, account["gid"]), (account["uid"], 0)):
        plan = make_plan(account, cgroups, machine_dir, ["/bin/true"], uid=uid, gid=gid)
        refused = launch(plan)
        assert refused.returncode == 1 and "root is not allowed" in refused.stderr
        assert refused.stdout == ""
    assert sorted(path.name for path in machine_dir.iterdir()) == ["plan.json"]
    assert not any(top.exists() for top in cgroups["tops"])


def test_payload_runs_as_the_account_in_its_cgroups_from_the_start(account, cgroups, machine_dir):
    # cat is the payload itself: what it reads is its state right after the exec.
    plan = make_plan(account, cgroups, machine_dir, ["/bin/cat", "/proc/self/status", "/proc/self/cgroup"])
    payload_pid = started(launch(plan))

    assert wait_for_exit_status(machine_dir)["exit_code"] == 0
    output = (machine_dir / "output.log").read_text()
    fields = {line.partition(":")[0]: line.partition(":")[2].split() for line in output.splitlines()}
    assert fields["Pid"] == [str(payload_pid)]
    assert fields["Uid"] == [str(account["uid"])] * 4
    assert fields["Gid"] == [str(account["gid"])] * 4
    assert sorted(map(int, fields["Groups"])) == sorted([account["gid"], account["extra_gid"]])
    assert fields["CapEff"] == ["0000000000000000"]
    cgroup_lines = [line for line in output.splitlines() if re.match(r"\d+:[\w,=]*:/", line)]
    assert_in_machine_cgroup("\n".join(cgroup_lines), cgroups, "payload")
    assert stat.S_IMODE((machine_dir / "output.log").stat().st_mode) == 0o640


def test_the_launcher_keeps_its_cgroup_and_records_a_killed_payload(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/bin/sleep", "60"])
    payload_pid = started(launch(plan))
    record = json.loads((machine_dir / "launcher.pid").read_text())
    launcher_pid = record["pid"]
    stat_fields = Path(f"/proc/{launcher_pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat_fields[19]) == record["start_time"]

    assert_in_machine_cgroup(Path(f"/proc/{launcher_pid}/cgroup").read_text(), cgroups, "launcher")
    assert_in_machine_cgroup(Path(f"/proc/{payload_pid}/cgroup").read_text(), cgroups, "payload")
    assert status_fields(payload_pid)["PPid"] == [str(launcher_pid)]
    assert os.getsid(launcher_pid) == launcher_pid  # a session of its own: its starter's group kill misses it
    assert Path(f"/proc/{payload_pid}/oom_score_adj").read_text().strip() == "0"
    if "CapEff" in status_fields(os.getpid()) and int(status_fields(os.getpid())["CapEff"][0], 16) & (1 << 24):
        assert Path(f"/proc/{launcher_pid}/oom_score_adj").read_text().strip() == "-1000"

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(launcher_pid, signum)
    time.sleep(0.3)
    assert status_fields(launcher_pid)["State"][0] in ("S", "R")
    assert not (machine_dir / "exit_status").exists()

    os.kill(payload_pid, signal.SIGKILL)
    status = wait_for_exit_status(machine_dir)
    assert (status["exit_code"], status["signal"]) == (128 + 9, 9)
    assert abs(status["finished_at"] - time.time()) < RECORD_DEADLINE


def test_exit_code_is_recorded(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/bin/sh", "-c", "echo to stdout; echo to stderr >&2; exit 3"])
    before = time.time()
    started(launch(plan))
    status = wait_for_exit_status(machine_dir)
    assert (status["exit_code"], status["signal"]) == (3, None)
    assert before <= status["finished_at"] <= time.time()
    assert (machine_dir / "output.log").read_text() == "to stdout\nto stderr\n"


def test_output_log_is_capped(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/usr/bin/head", "-c", "100000", "/dev/zero"],
                     log_limit_bytes=1000)
    started(launch(plan))
    assert wait_for_exit_status(machine_dir)["exit_code"] == 0
    log = (machine_dir / "output.log").read_bytes()
    assert log[:1000] == b"\0" * 1000
    assert log[1000:].decode().strip() == "[launcher: 99000 more bytes of output dropped beyond the 1000-byte limit]"


STARTER = """
import subprocess, sys, time
result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
print(result.returncode, result.stdout.strip(), flush=True)
time.sleep(120)
"""


def test_the_launcher_outlives_whoever_started_it(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/bin/sh", "-c", "sleep 1; exit 5"])
    starter = subprocess.Popen([sys.executable, "-I", "-S", "-c", STARTER, sys.executable, "-I", "-S", LAUNCHER,
                                str(plan)], stdout=subprocess.PIPE, start_new_session=True)
    try:
        readable, _, _ = select.select([starter.stdout], [], [], LAUNCH_DEADLINE)
        assert readable, "the starter did not report the launch"
        code, payload_pid, _ = starter.stdout.readline().decode().split()
        assert code == "0"
    finally:
        os.killpg(starter.pid, signal.SIGKILL)  # the starter and everything in its process group
        starter.wait(timeout=LAUNCH_DEADLINE)
        starter.stdout.close()
    launcher_pid = json.loads((machine_dir / "launcher.pid").read_text())["pid"]
    assert status_fields(launcher_pid)["State"][0] in ("S", "R")
    assert status_fields(int(payload_pid))["PPid"] == [str(launcher_pid)]
    status = wait_for_exit_status(machine_dir)
    assert (status["exit_code"], status["signal"]) == (5, None)


def test_a_missing_executable_is_reported_and_recorded_as_127(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/nonexistent/apptainer", "exec"])
    result = launch(plan)
    assert result.returncode == 1
    assert "cannot execute /nonexistent/apptainer" in result.stderr
    assert wait_for_exit_status(machine_dir)["exit_code"] == 127
    assert "cannot execute /nonexistent/apptainer" in (machine_dir / "output.log").read_text()


def test_a_payload_that_cannot_start_is_reported(account, cgroups, machine_dir):
    plan = make_plan(account, cgroups, machine_dir, ["/bin/true"], cwd=str(machine_dir))  # root's 0700 tmp
    result = launch(plan)
    assert result.returncode == 1
    assert f"changing to {machine_dir}" in result.stderr and "Permission denied" in result.stderr
    assert wait_for_exit_status(machine_dir)["exit_code"] == launcher_module.SETUP_FAILED


def test_the_stand_in_runs_under_the_launcher(
        account, cgroups, machine_dir, shared_root, busybox_directory_image):  # noqa: F811
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap (Debian's bubblewrap) is not installed")
    workdir = shared_root / "mnt"
    workdir.mkdir()
    os.chown(workdir, account["uid"], account["gid"])
    argv = [str(STANDIN), "exec", "--contain", "--ipc", "--pid", "--cleanenv", "--hostname", "m1.example",
            "--workdir", str(workdir), str(busybox_directory_image),
            "/bin/sh", "-c", "hostname; id -u; cat /proc/self/cgroup; exit 4"]
    plan = make_plan(account, cgroups, machine_dir, argv)
    started(launch(plan))
    assert wait_for_exit_status(machine_dir)["exit_code"] == 4
    hostname, uid, cgroup_text = (machine_dir / "output.log").read_text().split("\n", 2)
    assert (hostname, uid) == ("m1.example", str(account["uid"]))
    assert_in_machine_cgroup(cgroup_text, cgroups, "payload")
