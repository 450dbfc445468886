"""A machine's cgroups on this host's real hierarchies, in each tracking mode it offers.

Each test makes its machine under a base of its own (/vac-test-<random>) and
removes it afterwards, killing what is left, even when it fails.
"""

import json
import os
import signal
import time
import uuid

import pytest

from accounts import pid_alive as alive
from accounts import read_child
from singularity_site import layout, new_cgroup_base, scrap_test_cgroup, tracking  # noqa: F401 (fixtures)
from vac.cgroups import layout as layout_module
from vac.cgroups import machine as machine_module
from vac.cgroups.layout import unified_kill_offered
from vac.cgroups.machine import CgroupError, Limits, MachineCgroup, cgroup_of, machine_cgroup_names

MiB = 1024 * 1024
CHILD_DEADLINE = 20


@pytest.fixture
def base():
    return new_cgroup_base()


@pytest.fixture
def machine(layout, tracking, base):  # noqa: F811
    """A machine cgroup made by the test; killed and removed afterwards, with its base."""
    if tracking == "unified" and not unified_kill_offered(layout.unified):
        pytest.skip("this kernel has no cgroup.kill")
    cgroup = MachineCgroup(layout, f"{base}/machine-{uuid.uuid4()}", tracking)
    yield cgroup
    scrap_test_cgroup(cgroup)


def limits(cpus=2, memory_bytes=512 * MiB, pids=200):
    return Limits(cpus=cpus, memory_bytes=memory_bytes, pids=pids)


# Children: forked from the test, they join their cgroups first, as the launcher's do.

def spawn(procs_files, work):
    """Fork a child that writes its pid into each of `procs_files`, then runs work() -> JSON-able.

    Returns (pid, read end of the pipe carrying work's result)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            for procs in procs_files:
                with open(procs, "w") as stream:
                    stream.write(str(os.getpid()))
            outcome = work()
        except BaseException as error:  # noqa: B036 - a forked child must never return into pytest
            outcome = {"crash": repr(error)}
        try:
            os.write(write_end, json.dumps(outcome).encode() + b"\n")
        finally:
            os._exit(0) if not outcome.get("stay") else _stay()
    os.close(write_end)
    return pid, read_end


def _stay():
    # The child lives on in its cgroup until it is killed.
    while True:
        time.sleep(600)


def result_of(read_end, timeout=CHILD_DEADLINE):
    """The first line the child wrote (its JSON result)."""
    outcome = json.loads(read_child(read_end, timeout, "the child", line=True))
    assert "crash" not in outcome, outcome["crash"]
    return outcome


def reap(pid, timeout=CHILD_DEADLINE):
    """waitpid with a deadline; the raw status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    raise AssertionError(f"child {pid} did not end in {timeout} s")


def tree_with_daemon():
    """Two grandchildren and a daemon (setsid, double fork); their pids. The caller stays."""
    pids = []
    for _ in range(2):
        child = os.fork()
        if child == 0:
            _stay()
        pids.append(child)
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            _stay()
        os.write(write_end, f"{daemon}\n".encode())
        os._exit(0)
    os.waitpid(middle, 0)
    pids.append(int(os.read(read_end, 64)))
    return {"pids": pids, "stay": True}


# The tests.

def test_create_writes_the_limits_where_this_host_keeps_them(layout, machine):  # noqa: F811
    machine.create(limits(cpus=3, memory_bytes=300 * MiB, pids=123))
    machine.create(limits(cpus=3, memory_bytes=300 * MiB, pids=123))  # idempotent

    assert all(directory.is_dir() for directory in machine.mkdirs())
    assert machine.exists()
    relative = machine.path.lstrip("/")
    if layout.has_controllers_v2():
        directory = layout.unified / relative
        assert (directory / "cpu.max").read_text().split() == ["300000", "100000"]
        assert int((directory / "memory.max").read_text()) == 300 * MiB
        assert (directory / "pids.max").read_text().strip() == "123"
    else:
        cpu, memory = layout.v1["cpu"] / relative, layout.v1["memory"] / relative
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 300000
        assert int((cpu / "cpu.cfs_period_us").read_text()) == 100000
        assert int((memory / "memory.limit_in_bytes").read_text()) == 300 * MiB
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 300 * MiB, "no swap beyond the memory limit"
        assert (layout.v1["pids"] / relative / "pids.max").read_text().strip() == "123"


def test_a_larger_memory_limit_replaces_a_smaller_one(layout, machine):  # noqa: F811
    machine.create(limits(memory_bytes=100 * MiB))
    machine.create(limits(memory_bytes=400 * MiB))

    _, peak = machine.usage()
    assert peak >= 0
    if not layout.has_controllers_v2():
        memory = layout.v1["memory"] / machine.path.lstrip("/")
        assert int((memory / "memory.limit_in_bytes").read_text()) == 400 * MiB


def test_killing_the_payload_leaves_no_process_and_spares_the_launcher(layout, machine, base):  # noqa: F811
    machine.create(limits())
    launcher, launcher_pipe = spawn(machine.launcher_procs(), lambda: {"stay": True})
    payload, payload_pipe = spawn(machine.payload_procs(), tree_with_daemon)
    try:
        result_of(launcher_pipe)
        tree = [payload, *result_of(payload_pipe)["pids"]]

        assert machine.payload_pids() == set(tree)
        assert machine.pids() == {launcher, *tree}
        assert machine.populated()
        assert cgroup_of(tree[-1], layout, machine.tracking) == f"{machine.path}/payload"
        assert cgroup_of(launcher, layout, machine.tracking) == f"{machine.path}/launcher"
        assert machine_cgroup_names(layout, base, machine.tracking) == [machine.path.rpartition("/")[2]]

        machine.kill_payload(timeout=5)

        assert os.WTERMSIG(reap(payload)) == signal.SIGKILL
        assert [pid for pid in tree if alive(pid)] == [], "the grandchildren and the daemon are gone"
        assert not machine.populated()
        assert machine.payload_pids() == set()
        assert alive(launcher), "the launcher outlives its payload"
        with pytest.raises(CgroupError):
            machine.remove()
        assert machine.exists(), "a cgroup with a process in it stays"
    finally:
        machine.kill_all(timeout=5)
        reap(launcher)
        reap(payload) if alive(payload) else None
    assert not alive(launcher)


def test_a_v2_kernel_without_cgroup_kill_is_killed_through_the_v2_freezer(layout, machine, monkeypatch):  # noqa: F811
    if machine.tracking != "unified":
        pytest.skip("the v2 freezer is for unified tracking")
    monkeypatch.setattr(machine_module, "unified_kill_offered", lambda unified: False)
    machine.create(limits())
    payload, payload_pipe = spawn(machine.payload_procs(), tree_with_daemon)
    tree = [payload, *result_of(payload_pipe)["pids"]]

    machine.kill_payload(timeout=5)

    reap(payload)
    assert [pid for pid in tree if alive(pid)] == []
    frozen = (layout.unified / machine.path.lstrip("/") / "payload" / "cgroup.freeze").read_text()
    assert frozen.strip() == "0", "the payload cgroup is left thawed"


def test_the_pids_limit_bounds_a_fork_bomb(machine):
    machine.create(limits(pids=20))

    def fork_bomb():
        started = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    _stay()
            except BlockingIOError:
                break
            started += 1
        return {"started": started}

    bomb, pipe = spawn(machine.payload_procs(), fork_bomb)
    started = result_of(pipe)["started"]
    reap(bomb)

    assert 10 <= started < 20, "the bomb itself counts against the limit"
    assert len(machine.payload_pids()) == started
    machine.kill_payload(timeout=5)
    assert machine.payload_pids() == set()


def test_a_payload_that_never_stops_forking_is_killed_to_the_last_process(machine, monkeypatch):
    machine.create(limits(pids=30))

    def forking_forever():
        # Every process forks as fast as the pids limit lets it, and its children do too.
        os.write(ready_w, b"forking\n")
        while True:
            try:
                os.fork()
            except BlockingIOError:
                time.sleep(0.001)

    ready_r, ready_w = os.pipe()
    bomb, _ = spawn(machine.payload_procs(), forking_forever)
    os.close(ready_w)
    read_child(ready_r, CHILD_DEADLINE, "the forking payload", line=True)

    def no_sleep(seconds):
        raise AssertionError("the kill waits on pidfds or cgroup.events, never a fixed sleep")
    monkeypatch.setattr(machine_module.time, "sleep", no_sleep)
    machine.kill_payload(timeout=5)
    monkeypatch.undo()

    assert machine.payload_pids() == set()
    assert os.WTERMSIG(reap(bomb)) == signal.SIGKILL


def test_a_payload_allocating_past_the_memory_limit_is_oom_killed(machine):
    machine.create(limits(memory_bytes=128 * MiB))

    def allocate():
        chunks = [b"\x01" * (16 * MiB) for _ in range(64)]  # 1 GiB, touched
        return {"allocated": len(chunks)}

    hog, pipe = spawn(machine.payload_procs(), allocate)
    status = reap(hog)
    os.close(pipe)

    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert machine.oom_killed()
    _, peak = machine.usage()
    assert 64 * MiB < peak <= 128 * MiB


def test_a_quiet_machine_was_not_oom_killed(machine):
    machine.create(limits())
    assert not machine.oom_killed()


def test_usage_counts_the_cpu_the_payload_burnt(machine):
    machine.create(limits())

    def burn():
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        return {}

    burner, pipe = spawn(machine.payload_procs(), burn)
    result_of(pipe)
    reap(burner)
    cpu_seconds, peak = machine.usage()

    assert 0.45 <= cpu_seconds < 5
    assert peak > 0


def test_signal_payload_counts_the_processes_it_reached(machine):
    machine.create(limits())
    payload, pipe = spawn(machine.payload_procs(), tree_with_daemon)
    result_of(pipe)

    assert machine.signal_payload(signal.SIGTERM) == 4
    reap(payload)
    deadline = time.monotonic() + CHILD_DEADLINE
    while machine.populated() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert machine.signal_payload(signal.SIGTERM) == 0


def test_remove_cleans_every_directory_and_absent_ones_are_fine(machine):
    machine.create(limits())
    payload, pipe = spawn(machine.payload_procs(), tree_with_daemon)
    result_of(pipe)
    machine.kill_all(timeout=5)
    reap(payload)

    machine.remove()
    machine.remove()

    assert [directory for directory in machine.mkdirs() if directory.exists()] == []
    assert not machine.exists()


def test_a_nested_cgroup_the_payload_made_is_killed_and_removed(machine):
    machine.create(limits())
    nested = [path.parent / "apptainer" / "cgroup.procs" for path in machine.payload_procs()[:1]]
    nested[0].parent.mkdir()
    payload, pipe = spawn(nested, tree_with_daemon)
    tree = [payload, *result_of(pipe)["pids"]]

    assert machine.payload_pids() == set(tree)
    assert machine.populated()
    machine.kill_payload(timeout=5)
    reap(payload)
    machine.remove()

    assert not nested[0].parent.exists()


def test_machine_cgroups_are_listed_by_name_and_systemd_scopes_on_request(layout, machine, base):  # noqa: F811
    machine.create(None)
    scope = MachineCgroup(layout, f"{base}/vac-machine-{uuid.uuid4()}.scope", machine.tracking)
    scope.create(None)
    other = MachineCgroup(layout, f"{base}/machine-not-a-uuid", machine.tracking)
    other.create(None)
    try:
        name = machine.path.rpartition("/")[2]
        assert machine_cgroup_names(layout, base, machine.tracking) == [name]
        assert machine_cgroup_names(layout, base, machine.tracking, scopes=True) == sorted(
            [name, scope.path.rpartition("/")[2]])
    finally:
        scope.remove()
        other.remove()


def test_a_process_that_is_gone_has_no_cgroup(layout, tracking):  # noqa: F811
    pid, pipe = spawn([], lambda: {})
    result_of(pipe)
    reap(pid)

    assert cgroup_of(pid, layout, tracking) is None
    assert cgroup_of(os.getpid(), layout, tracking).startswith("/")


def test_the_layout_module_sees_this_host_as_it_is(layout):  # noqa: F811
    assert layout.kind in ("v2", "hybrid", "v1")
    assert layout_module.tracking_of(layout) in ("unified", "freezer")
