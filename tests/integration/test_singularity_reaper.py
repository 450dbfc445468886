"""The reaper's Singularity sweep with a real account, real cgroups and a real machine record."""

import logging
import os
import shutil
import subprocess
import time
import uuid

import psutil
import pytest

from accounts import account_processes, kill_account_processes, read_child, throwaway_accounts
from singularity_site import (layout, new_cgroup_base, remove_test_cgroup, scrap_test_cgroup,  # noqa: F401
                              tracking)
from vac.cgroups.machine import Limits, MachineCgroup
from vac.machine.layout import create_machine_directory
from vac.machine.record import MachineRecord, mark_finished, write_record
from vac.workers.singularity_reaper import sweep_singularity

DEADLINE = 20
SLEEP = shutil.which("sleep") or "/bin/sleep"

pytestmark = pytest.mark.skipif(shutil.which("useradd") is None or shutil.which("su") is None,
                                reason="useradd and su are needed")


@pytest.fixture
def account(request, layout):  # noqa: F811
    """A throwaway account; its processes (all this test's) are killed and it is deleted afterwards."""
    [entry] = throwaway_accounts(request, [f"vsr{uuid.uuid4().hex[:8]}"])
    yield entry
    kill_account_processes({entry.pw_uid})


@pytest.fixture
def machine_cgroup(layout, tracking):  # noqa: F811
    """An active machine's cgroup under a base of this test's own; removed afterwards."""
    base = new_cgroup_base()
    machine_uuid = str(uuid.uuid4())
    cgroup = MachineCgroup(layout, f"{base}/machine-{machine_uuid}", tracking)
    cgroup.create(Limits(cpus=1, memory_bytes=256 * 1024 * 1024, pids=100))
    yield base, machine_uuid, cgroup
    scrap_test_cgroup(cgroup)


def write_running_record(state_dir, machine_uuid):
    now = time.time()
    paths = create_machine_directory(state_dir, machine_uuid)
    write_record(paths, MachineRecord(
        machine_uuid=machine_uuid, slot=0, machine_name="m-0", machinetype="kind",
        machine_model="singularity", processors=1, created=now, shutdown_time=int(now) + 86400,
        state="running", started=now))
    return paths


def start_as(entry, argv, procs=(), daemon=False):
    """Exec argv as the account in a child forked from the test (after joining `procs`); its pid.

    daemon: the child escapes first, as a daemon does (setsid and a second fork)."""
    read_end, write_end = os.pipe()  # not inherited across exec: EOF once the command runs
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            if daemon:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
            for path in procs:
                with open(path, "w") as stream:
                    stream.write(str(os.getpid()))
            os.write(write_end, f"{os.getpid()}\n".encode())
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.execv(argv[0], argv)
        except BaseException as error:  # noqa: B036 - a forked child must never return into pytest
            os.write(write_end, f"! {error!r}\n".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    text = read_child(read_end, DEADLINE, f"starting {argv} as {entry.pw_name}")
    if daemon:
        os.waitpid(child, 0)  # the middle process, gone at once
    lines = text.decode().split()
    assert lines and not text.startswith(b"!"), f"starting {argv} failed: {text.decode()}"
    return int(lines[0])


def account_pids(uid):
    """The account's live processes (zombies are dead)."""
    return {process.pid for process in account_processes({uid})}


def wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {DEADLINE} s"
        time.sleep(0.02)


def reap_when_dead(pid):
    """Reap a child of the test (the killed insider) so that it leaves no zombie."""
    wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, f"child {pid} ended")


def test_one_sweep_kills_the_escaped_and_keeps_the_machine_then_ends_the_finished_machine(
        layout, tracking, account, machine_cgroup, tmp_state_dir, caplog):  # noqa: F811
    base, machine_uuid, cgroup = machine_cgroup
    paths = write_running_record(tmp_state_dir, machine_uuid)
    uid = account.pw_uid
    su = subprocess.Popen(["su", "-s", "/bin/sh", account.pw_name, "-c", f"{SLEEP} 600"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        escaped = start_as(account, [SLEEP, "601"], daemon=True)
        insider = start_as(account, [SLEEP, "602"], procs=cgroup.payload_procs())
        wait_for(lambda: any(process.name() == "sleep" and process.uids().real == uid
                             for process in psutil.Process(su.pid).children(recursive=True)),
                 "the account's sleep under su running")
        # su's shell and its sleep, and the daemon.
        outsiders = account_pids(uid) - {insider}
        assert escaped in outsiders and len(outsiders) >= 2

        caplog.set_level(logging.WARNING, logger="vac.workers.singularity_reaper")
        processes = len(psutil.pids())
        started = time.perf_counter()
        killed, removed = sweep_singularity(layout, base, tmp_state_dir, {uid}, tracking)
        elapsed = time.perf_counter() - started
        print(f"one sweep: {elapsed * 1000:.1f} ms with {processes} processes ({tracking} tracking)")

        assert (killed, removed) == (len(outsiders), 0)
        wait_for(lambda: account_pids(uid) == {insider}, "the outsiders gone")
        assert su.wait(timeout=DEADLINE) != 0, "su saw its shell killed"
        assert cgroup.payload_pids() == {insider}
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == len(outsiders)
        assert any(f"pid {escaped} of {account.pw_name}, outside the cgroup of any machine" in message
                   and f"{SLEEP} 601" in message for message in messages), messages

        assert sweep_singularity(layout, base, tmp_state_dir, {uid}, tracking) == (0, 0), "nothing else to do"

        mark_finished(paths, time.time())
        killed, removed = sweep_singularity(layout, base, tmp_state_dir, {uid}, tracking)

        assert (killed, removed) == (1, 1)
        reap_when_dead(insider)
        assert account_pids(uid) == set()
        assert not cgroup.exists()
        assert [directory for directory in cgroup.mkdirs() if directory.exists()] == []
        assert f"pid {insider} of {account.pw_name}, in the cgroup of machine {machine_uuid}, which is finished" in (
            caplog.records[-1].getMessage())
    finally:
        if su.poll() is None:
            su.kill()
            su.wait(timeout=DEADLINE)


def test_another_factorys_cgroup_is_left_alone_and_a_running_one_stays(
        layout, tracking, machine_cgroup, tmp_state_dir):  # noqa: F811
    base, machine_uuid, cgroup = machine_cgroup
    other_base = f"{base}-other"  # both placements are swept at once
    # A machine of another vacd on this host: its record is in another state directory.
    stray = MachineCgroup(layout, f"{other_base}/machine-{uuid.uuid4()}", tracking)
    stray.create(None)
    write_running_record(tmp_state_dir, machine_uuid)
    try:
        assert sweep_singularity(layout, (base, other_base), tmp_state_dir, set(), tracking) == (0, 0)
        assert stray.exists()
        assert cgroup.exists()
    finally:
        remove_test_cgroup(stray)


def test_a_sweep_with_no_base_cgroup_and_no_state_does_nothing(layout, tracking, tmp_path):  # noqa: F811
    assert sweep_singularity(layout, new_cgroup_base(), tmp_path / "none", set(), tracking) == (0, 0)
