"""Throwaway accounts for tests, running code as one of them in a forked child, and
finding and killing the processes of accounts."""

import grp
import json
import os
import pwd
import select
import signal
import subprocess
import time

import psutil

ACCOUNT_TOOL_DEADLINE = 30  # useradd and friends wait for each other's lock files
KILL_DEADLINE = 15


def account_tool(*argv):
    """Run useradd/groupadd/...; retry while another run holds the account files' locks."""
    deadline = time.monotonic() + ACCOUNT_TOOL_DEADLINE
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=ACCOUNT_TOOL_DEADLINE)
        if result.returncode == 0:
            return
        if "lock" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        time.sleep(0.2)


def add_group(name):
    """A new group; its gid."""
    account_tool("groupadd", name)
    return grp.getgrnam(name).gr_gid


def add_account(name, groups=()):
    """A new account without a home or a login shell, with a group of its own and in `groups`; its pwd entry."""
    also = ["--groups", ",".join(groups)] if groups else []
    account_tool("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", *also, name)
    return pwd.getpwnam(name)


def remove_accounts(names, groups=()):
    """Delete the accounts, their own groups and `groups`; whatever is already gone is fine."""
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)
    for group in (*names, *groups):
        subprocess.run(["groupdel", group], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)


def throwaway_accounts(request, names, groups=()):
    """New accounts `names`, each with its own group and in the new groups `groups`; their pwd entries.

    They are deleted with their groups when request's scope ends (after its
    fixture's own teardown)."""
    request.addfinalizer(lambda: remove_accounts(names, groups))
    for group in groups:
        add_group(group)
    return [add_account(name, groups) for name in names]


def read_child(read_end, timeout, what, line=False):
    """What a forked child writes into its pipe until it closes it (line: up to its first newline).

    Closes read_end."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not (line and data.endswith(b"\n")):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what} did not answer within {timeout} s"
            ready, _, _ = select.select([read_end], [], [], remaining)
            chunk = os.read(read_end, 65536) if ready else b""
            if ready and not chunk:
                assert not line, f"{what} closed its pipe without a line"
                break
            data += chunk
    finally:
        os.close(read_end)
    return data


def run_as(uid, gid, groups, work, *, prepare=None, timeout=30, what="the child"):
    """work() in a forked child that dropped root to uid/gid/groups; its JSON-able result.

    The interpreter may live where other accounts cannot read it, so it cannot
    be started again as them: the child forks from the test instead. prepare()
    runs before the privileges are dropped (to import what work() needs). A
    child that raises yields {"crash": repr(error)}.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if prepare is not None:
                prepare()
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            outcome = work()
        except BaseException as error:  # noqa: B036 - a forked child must never return into pytest
            outcome = {"crash": repr(error)}
        finally:
            try:
                os.write(write_end, json.dumps(outcome).encode())
            finally:
                os._exit(0)
    os.close(write_end)
    try:
        data = read_child(read_end, timeout, what)
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(data)


# The processes of accounts.

def process_alive(process):
    """True while the psutil process runs (a zombie has ended)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_alive(pid):
    """True while the process runs (a zombie has ended)."""
    try:
        return process_alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def kill_pids(pids):
    """SIGKILL each pid; one that is gone already is fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def account_processes(uids):
    """Live processes (not zombies) whose real or effective uid is one of `uids`."""
    found = []
    for process in psutil.process_iter(["uids"]):
        uids_of = process.info["uids"]
        if uids_of is not None and (uids_of.real in uids or uids_of.effective in uids) and process_alive(process):
            found.append(process)
    return found


def kill_account_processes(uids):
    """SIGKILL every process of the accounts; wait until none is left."""
    deadline = time.monotonic() + KILL_DEADLINE
    while processes := account_processes(uids):
        assert time.monotonic() < deadline, f"processes of the test accounts survive: {processes}"
        kill_pids(p.pid for p in processes)
        time.sleep(0.05)
