"""Throwaway accounts for tests, and running code as one of them in a forked child."""

import json
import os
import select
import signal
import subprocess
import time

ACCOUNT_TOOL_DEADLINE = 30  # useradd and friends wait for each other's lock files


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
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what} did not finish in {timeout} s"
            ready, _, _ = select.select([read_end], [], [], remaining)
            chunk = os.read(read_end, 65536) if ready else b""
            if ready and not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(data)
