"""The supervisor tree with real processes: forks, signals, waitpid, no mocks."""

import os
import signal
import socket
import time

import psutil
import pytest

from treehost_client import TreeHost


@pytest.fixture
def host_factory(tmp_path):
    hosts = []

    def start(scenario, env=None):
        host = TreeHost(scenario, tmp_path, env)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.cleanup()


def all_ready(host, children):
    pids = host.ready_pids()
    return pids if all(child in pids for child in children) else None


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


SLOTS = ["slot-00", "slot-01", "slot-02"]
FACTORY = ["cvmfs-keeper", "reaper", "pipe-fetcher"] + SLOTS


def test_killed_slot_is_restarted_and_siblings_keep_their_pids(host_factory):
    host = host_factory("factory")
    before = host.wait_for(lambda: all_ready(host, FACTORY), what="the factory ready")
    os.kill(before["slot-01"], signal.SIGKILL)
    host.wait_events("ready", 2, child="slot-01")
    after = host.ready_pids()
    assert after["slot-01"] != before["slot-01"]
    for child in FACTORY:
        if child != "slot-01":
            assert after[child] == before[child], f"{child} was disturbed"
            assert psutil.pid_exists(before[child])
    exited = host.events("exited", child="slot-01")
    assert exited[0]["status"] == "killed by SIGKILL"


def open_files(pid):
    """The targets of a process's descriptors: 'socket:[123]', 'anon_inode:[pidfd]', paths."""
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed while we looked
    return targets


def test_children_hold_none_of_the_roots_channels_or_pidfds(host_factory):
    # The pool is forked as one batch before the root takes any of it in: a
    # child must still shed the root's ends of the siblings forked before it.
    host = host_factory("factory")
    pids = host.wait_for(lambda: all_ready(host, FACTORY), what="the factory ready")
    root_sockets = {target for target in open_files(host.pid) if target.startswith("socket:")}
    assert len(root_sockets) >= len(FACTORY)
    for child in FACTORY:
        held = open_files(pids[child])
        assert not held & root_sockets, f"{child} holds the root's end of a channel"
        assert "anon_inode:[pidfd]" not in held, f"{child} holds a pidfd of the root's"


def test_process_titles_are_visible_in_ps(host_factory):
    host = host_factory("factory")
    pids = host.wait_for(lambda: all_ready(host, FACTORY), what="the factory ready")
    host.wait_for(lambda: "idle" in cmdline(pids["slot-02"]) and "[" in cmdline(host.pid))
    assert cmdline(host.pid) == "vacd: supervisor [3 slots: 0 running, 3 idle, 0 backoff]"
    assert cmdline(pids["slot-02"]).startswith("vacd: slot 02 - idle 0:00:0")
    assert cmdline(pids["cvmfs-keeper"]).startswith("vacd: cvmfs-keeper [")
    assert cmdline(pids["reaper"]).startswith("vacd: reaper [")
    ps = psutil.Process(host.pid).children()
    assert sorted(p.cmdline()[0].split(" ")[1] for p in ps) == sorted(
        ["cvmfs-keeper", "reaper", "pipe-fetcher", "slot", "slot", "slot"])


def test_slot_crashing_at_start_backs_off_goes_fatal_and_reset_revives_it(host_factory, tmp_path):
    (tmp_path / "crash-marker").touch()
    host = host_factory("crashing-slot")
    host.wait_for(lambda: host.events("fatal") or "FATAL" in host.log_text(), timeout=15,
                  what="slot-01 to become FATAL")
    starts = [e["t"] for e in host.events("started", child="slot-01")]
    assert len(starts) == 4, "max_failed_starts=4: four attempts, then FATAL"
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # Backoff 0.2, 0.4, 0.8 s (plus the time a crash takes): each wait longer than the last.
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8
    assert gaps[0] < gaps[1] < gaps[2]
    time.sleep(1.5)
    assert len(host.events("started", child="slot-01")) == 4, "a FATAL slot stays down"
    pids = host.ready_pids()
    assert "slot-00" in pids and "slot-02" in pids, "healthy slots were unaffected"

    (tmp_path / "crash-marker").unlink()
    host.command("reset slot-01")
    host.wait_events("ready", 1, child="slot-01")
    assert host.ready_pids()["slot-00"] == pids["slot-00"]


def test_a_failed_fork_is_a_failed_start_of_that_child_alone(host_factory):
    host = host_factory("fork-fails")
    pids = host.wait_for(lambda: all_ready(host, SLOTS), what="all three slots ready")
    assert "slot-01: fork failed: [Errno 11]" in host.log_text()
    first = {e["child"]: e["t"] for e in reversed(host.events("started"))}
    assert len(host.events("started", child="slot-01")) == 1
    # slot-01 waited out its first backoff (0.2 s, counted from before the
    # batch was forked); its siblings of the same batch started at once and
    # were not disturbed.
    assert first["slot-01"] - first["slot-02"] >= 0.15
    assert len(host.events("started", child="slot-00")) == 1
    assert len(host.events("started", child="slot-02")) == 1
    assert host.ready_pids()["slot-00"] == pids["slot-00"]


def test_crash_storm_opens_the_pool_breaker_without_touching_healthy_slots(host_factory):
    host = host_factory("crash-storm")
    healthy = host.wait_for(lambda: all_ready(host, ["slot-00", "slot-01"]))
    host.wait_for(lambda: "crash storm" in host.log_text(), what="the breaker to open")
    opened = time.time()
    time.sleep(1.0)
    crashers = [f"slot-{n:02d}" for n in (2, 3, 4)]
    during = [e for e in host.events("started") if e["child"] in crashers and e["t"] > opened + 0.2]
    assert during == [], "no restart while the breaker is open"
    host.wait_for(lambda: [e for e in host.events("started")
                           if e["child"] in crashers and e["t"] > opened + 1.5],
                  what="restarts to resume after the pause")
    assert host.ready_pids() == healthy | {}, "healthy slots kept their pids"
    assert not host.events("stop"), "nothing was stopped"


def test_helper_crash_storm_escalates_to_a_group_restart_then_degraded(host_factory):
    host = host_factory("helper-storm")
    first = host.wait_for(lambda: all_ready(host, ["good-helper", "slot-00"]))
    host.wait_for(lambda: "DEGRADED" in host.log_text(), what="DEGRADED")
    log = host.log_text()
    assert "services: more than 2 restarts" in log and "escalating to vacd" in log
    # The services group restarted as a whole: the good helper was stopped and started again.
    assert host.events("stop", child="good-helper")
    host.wait_events("ready", 2, child="good-helper")
    # The slot pool was never touched by the helpers' escalation.
    assert host.ready_pids()["slot-00"] == first["slot-00"]
    assert not host.events("stop", child="slot-00")
    assert psutil.pid_exists(first["slot-00"])
    # DEGRADED retries the group after degraded_retry (1 s), not in a tight loop.
    degraded_at = time.time()
    time.sleep(2.5)
    retries = [e for e in host.events("started", child="bad-helper") if e["t"] > degraded_at]
    assert 1 <= len(retries) <= 12
    assert "DEGRADED" in cmdline(host.pid)


def test_rest_for_one_restarts_exactly_the_later_siblings(host_factory):
    links = [f"link-{n}" for n in range(4)]
    host = host_factory("rest-for-one")
    before = host.wait_for(lambda: all_ready(host, links))
    os.kill(before["link-1"], signal.SIGKILL)
    host.wait_for(lambda: all(len(host.events("ready", child=c)) == 2 for c in links[1:]),
                  what="link-1..3 restarted")
    after = host.ready_pids()
    assert after["link-0"] == before["link-0"]
    assert all(after[c] != before[c] for c in links[1:])
    stopped = [e["child"] for e in host.events("stop")]
    assert stopped == ["link-3", "link-2"], "later siblings stopped, last first"
    starts = [e["child"] for e in host.events("started")][4:]
    assert starts == ["link-1", "link-2", "link-3"], "then started again in order"


def test_hung_garbage_and_oversize_children_fail_alone(host_factory):
    host = host_factory("misbehaving")
    first = host.wait_for(lambda: all_ready(host, ["slot-00", "slot-04"]))
    for child in ("slot-01", "slot-02", "slot-03"):
        host.wait_events("ready", 2, child=child, timeout=15)
    bad_frames = {e["child"] for e in host.events("bad_frame")}
    assert bad_frames == {"slot-02", "slot-03"}
    assert [e["child"] for e in host.events("hung")] == ["slot-01"]
    # slot-01 ignores SIGTERM: it needed the SIGKILL after its 0.5 s budget.
    assert [e["child"] for e in host.events("kill")] == ["slot-01"]
    later = host.ready_pids()
    assert later["slot-00"] == first["slot-00"] and later["slot-04"] == first["slot-04"]
    assert host.proc.poll() is None, "the root survived"


def test_a_child_heartbeating_past_its_state_deadline_is_restarted_as_hung(host_factory):
    host = host_factory("stuck")
    first = host.wait_for(lambda: all_ready(host, ["slot-00", "slot-01"]))
    host.wait_events("ready", 2, child="slot-01", timeout=15)
    [hung] = host.events("hung")
    assert (hung["child"], hung["state"]) == ("slot-01", "stopping")
    # Its deadline passed as it became ready; the root waited out the margin (heartbeat_timeout,
    # 1.5 s), less however long its Ready took to arrive.
    [ready] = host.events("ready", child="slot-01")[:1]
    assert hung["t"] - ready["t"] > 1.0
    # It obeyed SIGTERM (no SIGKILL), and the one with a far deadline was left alone.
    assert host.events("kill") == []
    assert host.ready_pids()["slot-00"] == first["slot-00"]
    assert host.proc.poll() is None


def test_sigterm_stops_slots_first_then_helpers_in_reverse_order(host_factory):
    host = host_factory("factory")
    pids = host.wait_for(lambda: all_ready(host, FACTORY))
    descendants = host.descendants()
    assert len(psutil.Process(host.pid).children()) == 6
    started = time.monotonic()
    assert host.terminate() == 0
    assert time.monotonic() - started < 5
    order = [e["child"] for e in host.events("stop")]
    assert sorted(order[:3]) == SLOTS
    assert order[3:] == ["pipe-fetcher", "reaper", "cvmfs-keeper"]
    exits = [e["child"] for e in host.events("exited")]
    assert set(exits[:3]) == set(SLOTS) and exits[3:] == ["pipe-fetcher", "reaper", "cvmfs-keeper"]
    assert all(e["status"] == "exit status 0" for e in host.events("exited"))
    assert not any(psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE
                   for p in descendants)
    assert all(not psutil.pid_exists(pid) for pid in pids.values())


def test_shutdown_budget_is_enforced_with_sigkill(host_factory):
    host = host_factory("shutdown-budget")
    host.wait_for(lambda: all_ready(host, ["helper-a", "helper-b", "slot-00"]))
    started = time.monotonic()
    assert host.terminate() == 0
    took = time.monotonic() - started
    # Slots stop in 0.3 s within their 2 s budget; helper-b needs 30 s but
    # has 1 s before SIGKILL. Nothing else may stretch the shutdown.
    assert took < 4.0
    assert [e["child"] for e in host.events("kill")] == ["helper-b"]
    exits = {e["child"]: e["status"] for e in host.events("exited")}
    assert exits["helper-b"] == "killed by SIGKILL"
    assert exits["slot-01"] == "exit status 0"
    assert host.descendants() == []


def test_orphaned_grandchildren_are_reaped_by_the_root(host_factory):
    host = host_factory("orphans")
    state = host.wait_events("state", 1, child="orphan-maker")[0]
    orphan = state["detail"]["pid"]
    assert psutil.Process(orphan).ppid() == host.pid, "reparented to the subreaper root"
    reaped = host.wait_events("orphan_reaped", 1)
    assert reaped[0]["pid"] == orphan and reaped[0]["status"] == "exit status 7"
    assert not psutil.pid_exists(orphan)


def test_sd_notify_sequence(host_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    host = host_factory("factory", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    received = []

    def collect_until(predicate):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not predicate():
            received.append(sock.recv(4096).decode())

    collect_until(lambda: any("READY=1" in m for m in received)
                  and sum("WATCHDOG=1" in m for m in received) >= 2)
    ready = next(m for m in received if "READY=1" in m)
    assert "STATUS=3 slots: 0 running, 3 idle, 0 backoff" in ready
    # A slot in backoff changes the summary, and STATUS= follows the change.
    pids = host.wait_for(lambda: all_ready(host, FACTORY))
    os.kill(pids["slot-00"], signal.SIGKILL)
    collect_until(lambda: any(m.startswith("STATUS=") and "1 backoff" in m for m in received))
    assert any(m.startswith("STATUS=") and "1 backoff" in m for m in received)
    host.terminate()
    collect_until(lambda: any("STOPPING=1" in m for m in received))
    order = [m.split("=")[0] for m in received]
    assert order.index("READY") < order.index("STOPPING")
    # Children never notify: every datagram came from the root.
    sock.close()
