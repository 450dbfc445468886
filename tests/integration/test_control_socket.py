"""vacd's control socket with real sockets, real accounts and a real daemon.

Accounts and groups are created for the test (it runs as root) and removed
afterwards; their requests run in forked children that drop to each account
the way a login would, so the daemon sees them through SO_PEERCRED as it
would see any operator.
"""

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from accounts import ACCOUNT_TOOL_DEADLINE, account_tool, run_as

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from vac.control import protocol
from vac.control.client import ControlClient, ControlError
from vac.control.admission import MAX_CLIENTS_PER_UID
from vac.ipc.framing import FrameDecoder

READ_DEADLINE = 10.0        # the server's per-request read deadline
PROMPT = 1.0                # what a status round trip may take while others misbehave

CONFIG = """[settings]
vac_space = control.vac.example
factory_name = {factory}
total_processors = 2
heartbeat_timeout_seconds = 20
{extra}
[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = {share}

[machinetype beta]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = beta.user_data
target_share = 0
"""


class Site:
    """A factory's vac.conf under tmp_path and its socket under a short directory others may enter."""

    def __init__(self, tmp_path, socket_dir, extra=""):
        self.config = tmp_path / "vac.conf"
        self.factory = f"control-{uuid.uuid4().hex[:8]}.vac.example"
        self.extra = extra
        self.socket = os.path.join(socket_dir, "control.sock")

    def write_config(self, share=0):
        """Write vac.conf atomically, as configuration managers do."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(CONFIG.format(factory=self.factory, share=share, extra=self.extra))
        os.rename(tmp, self.config)

    def start(self, daemon_factory, share=0):  # noqa: F811
        self.write_config(share)
        daemon = daemon_factory(self.config, extra_args=("--socket", self.socket))
        daemon.wait_log("supervisor running")
        return daemon


@pytest.fixture
def socket_dir():
    """A short directory every account may enter: pytest's tmp_path is neither."""
    directory = tempfile.mkdtemp(prefix="vac-ctl-", dir="/tmp")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# Accounts.

@pytest.fixture(scope="module")
def accounts(request):
    """Groups vacadm-*/vacro-* and accounts: admin (primary group admin), reader
    (read-only as a supplementary group) and outsider (in neither)."""
    if os.geteuid() != 0:
        pytest.skip("creating accounts and groups needs root")
    suffix = uuid.uuid4().hex[:6]
    names = {"admin_group": f"vacadm-{suffix}", "readonly_group": f"vacro-{suffix}",
             "admin": f"vaca-{suffix}", "reader": f"vacr-{suffix}", "outsider": f"vacn-{suffix}"}

    def remove():
        for user in ("admin", "reader", "outsider"):
            subprocess.run(["userdel", names[user]], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)
        # The user groups of reader and outsider go with them; these do not.
        for group in (names["admin_group"], names["readonly_group"], names["reader"], names["outsider"]):
            subprocess.run(["groupdel", group], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)

    request.addfinalizer(remove)
    account_tool("groupadd", names["admin_group"])
    account_tool("groupadd", names["readonly_group"])
    common = ("--no-create-home", "--shell", "/usr/sbin/nologin")
    account_tool("useradd", *common, "--no-user-group", "--gid", names["admin_group"], names["admin"])
    account_tool("useradd", *common, "--user-group", "--groups", names["readonly_group"], names["reader"])
    account_tool("useradd", *common, "--user-group", names["outsider"])
    return names


def as_account(name, path, connections, pause=0.0, timeout=30):
    """Run requests as account `name` in a forked child that drops root as a login does.

    connections: a list of connections, each a list of (command, args) sent on
    it in turn, `pause` s after connecting. Returns {"pid", "uid", "groups", "replies"}: replies[i][j] is
    {"ok": True, "result": ...} or {"ok": False, "code": ..., "error": ...}.
    """
    entry = pwd.getpwnam(name)

    def work():
        return {"pid": os.getpid(), "uid": os.getuid(), "groups": sorted(os.getgroups()),
                "replies": [_session(path, commands, pause) for commands in connections]}

    outcome = run_as(entry.pw_uid, entry.pw_gid, os.getgrouplist(name, entry.pw_gid), work,
                     timeout=timeout, what=f"the requests as {name}")
    assert "crash" not in outcome, f"the client as {name} crashed: {outcome['crash']}"
    assert outcome["uid"] == entry.pw_uid
    return outcome


def _session(path, commands, pause):
    replies = []
    try:
        with ControlClient(path, timeout=10) as client:
            time.sleep(pause)
            for command, args in commands:
                try:
                    replies.append({"ok": True, "result": client.request(command, **args)})
                except ControlError as error:
                    replies.append({"ok": False, "code": error.code, "error": str(error)})
    except ControlError as error:
        replies.append({"ok": False, "code": error.code, "error": str(error)})
    return replies


def each_alone(commands):
    """One connection per command, as the `vac` command makes them."""
    return [[command] for command in commands]


READS = [("status", {}), ("slots", {}), ("machinetypes", {}), ("slot", {"slot": 1}), ("help", {})]
CHANGES = [("drain", {}), ("pause", {"machinetype": "alpha"}), ("undrain", {}),
           ("resume", {"machinetype": "alpha"}), ("reload", {}), ("reset-slot", {"slot": 0}),
           ("stop-machine", {"slot": 0}), ("shutdown", {})]


def assert_denied(reply, command):
    assert not reply["ok"], f"{command} was allowed: {reply}"
    assert reply["code"] == protocol.DENIED, reply
    assert "permission denied" in reply["error"], reply


def factory_state(path):
    """(draining, paused machinetypes) as root sees them."""
    with ControlClient(path) as client:
        status = client.request("status")
    return status["draining"], sorted(name for name, mt in status["machinetypes"].items() if mt["paused"])


def uid_of(name):
    return pwd.getpwnam(name).pw_uid


def test_each_account_may_do_what_its_groups_allow(
        tmp_path, daemon_factory, socket_dir, accounts):  # noqa: F811
    site = Site(tmp_path, socket_dir, extra=f"admin_group = {accounts['admin_group']}\n"
                                            f"readonly_group = {accounts['readonly_group']}\n")
    daemon = site.start(daemon_factory)
    path = site.socket
    assert os.stat(path).st_mode & 0o777 == 0o666, "everyone may connect; SO_PEERCRED decides"

    # Someone in neither group is refused everything, reading included.
    outsider = as_account(accounts["outsider"], path, each_alone(READS + CHANGES))
    for (command, _), [reply] in zip(READS + CHANGES, outsider["replies"]):
        assert_denied(reply, command)
        assert f"uid {uid_of(accounts['outsider'])} is not root" in reply["error"]

    # Even when the refusal is sent before the client has said anything.
    [[reply]] = as_account(accounts["outsider"], path, [[("status", {})]], pause=0.5)["replies"]
    assert_denied(reply, "status")

    # A member of the read-only group reads, and changes nothing.
    reader = as_account(accounts["reader"], path, each_alone(READS + CHANGES))
    assert grp.getgrnam(accounts["readonly_group"]).gr_gid in reader["groups"]
    assert grp.getgrnam(accounts["readonly_group"]).gr_gid != pwd.getpwnam(accounts["reader"]).pw_gid, \
        "the read-only group is a supplementary group of the reader"
    for (command, _), [reply] in zip(READS, reader["replies"]):
        assert reply["ok"], f"{command} refused to a reader: {reply}"
    status, slots, machinetypes, slot, help_ = (reply["result"] for [reply] in reader["replies"][:5])
    assert status["slots"]["slots"] == 2 and len(slots) == 2 and slot["slot"] == 1
    assert sorted(machinetypes) == ["alpha", "beta"]
    assert help_["drain"]["mutating"] and not help_["status"]["mutating"]
    for (command, _), [reply] in zip(CHANGES, reader["replies"][len(READS):]):
        assert_denied(reply, command)
        assert "may only read" in reply["error"]
    assert factory_state(path) == (False, []), "the refused commands changed nothing"
    assert daemon.proc.poll() is None, "a refused shutdown did not stop vacd"

    # A refusal answers one request; the reader's connection goes on.
    [replies] = as_account(accounts["reader"], path, [[("drain", {}), ("status", {})]])["replies"]
    assert_denied(replies[0], "drain")
    assert replies[1]["ok"] and replies[1]["result"]["draining"] is False

    # A member of the admin group (its primary group here) reads and changes.
    admin = as_account(accounts["admin"], path,
                       each_alone(READS + [("drain", {}), ("pause", {"machinetype": "alpha"})]))
    assert all(reply["ok"] for [reply] in admin["replies"]), admin["replies"]
    assert factory_state(path) == (True, ["alpha"])
    admin_uid = uid_of(accounts["admin"])
    daemon.wait_log(f"control: drain {{'deadline': None}} by uid {admin_uid} pid {admin['pid']}")
    daemon.wait_log(f"control: pause {{'machinetype': 'alpha'}} by uid {admin_uid} pid {admin['pid']}")

    # Root needs no group.
    with ControlClient(path) as client:
        assert client.request("status")["draining"] is True
        assert client.request("undrain") == {"draining": False}
        assert client.request("resume", machinetype="alpha") == {"paused": []}
    assert factory_state(path) == (False, [])
    daemon.wait_log(f"control: undrain {{}} by uid 0 pid {os.getpid()}")
    daemon.wait_log(f"control: resume {{'machinetype': 'alpha'}} by uid 0 pid {os.getpid()}")

    log = daemon.text()
    for name in ("reader", "outsider"):
        uid = uid_of(accounts[name])
        assert not re.search(rf"control: .* by uid {uid} ", log), f"{name} changed something"


def test_without_groups_configured_only_root_may_connect(
        tmp_path, daemon_factory, socket_dir, accounts):  # noqa: F811
    site = Site(tmp_path, socket_dir)
    site.start(daemon_factory)
    for name in ("admin", "reader", "outsider"):
        [[reply]] = as_account(accounts[name], site.socket, [[("status", {})]])["replies"]
        assert_denied(reply, "status")
    with ControlClient(site.socket) as client:
        assert client.request("status")["state"] == "running"

    # A socket the account may not even reach is refused as clearly.
    os.chmod(socket_dir, 0o700)
    [[reply]] = as_account(accounts["reader"], site.socket, [[("status", {})]])["replies"]
    assert_denied(reply, "status")
    assert f"cannot connect to {site.socket}" in reply["error"]


# Hostile and broken clients.

def raw_connection(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def read_frames(sock, timeout, count=None):
    """Frames the daemon sends until it closes the connection (or `count` arrived);
    (frames, closed, seconds it took)."""
    started = time.monotonic()
    deadline = started + timeout
    decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
    frames = []
    while count is None or len(frames) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the daemon neither answered nor closed within {timeout} s: {frames}"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return frames, True, time.monotonic() - started
        frames += decoder.feed(chunk)
    return frames, False, time.monotonic() - started


def timed_status(client):
    started = time.monotonic()
    status = client.request("status")
    assert status["state"] == "running"
    return time.monotonic() - started


class Holder:
    """A connection that holds one of the daemon's client places by never finishing a request."""

    def __init__(self, path, kind):
        self.kind = kind
        self.sock = raw_connection(path)
        self.sock.setblocking(False)
        self.frame = protocol.request_frame(1, "status")
        self.sent = 0
        self.first_byte_at = None
        self.closed_at = None
        if kind == "stall":
            self.send(len(self.frame) // 2)
        elif kind == "silent":
            self.first_byte_at = time.monotonic()   # the deadline counts from the connection

    def send(self, count):
        try:
            self.sock.send(self.frame[self.sent:self.sent + count])
        except (BrokenPipeError, ConnectionResetError):
            self.note_closed()
            return
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self.sent += count

    def poll(self):
        if self.closed_at is None:
            try:
                if self.sock.recv(65536) == b"":
                    self.note_closed()
            except BlockingIOError:
                pass
            except ConnectionResetError:
                self.note_closed()

    def note_closed(self):
        if self.closed_at is None:
            self.closed_at = time.monotonic()


# Each is sent on a fresh connection: (bytes, whether the daemon then closes it).
ONE_SHOTS = {
    "garbage": (b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1", True),          # 0xc1 is never msgpack
    "cut msgpack": (b"\x00\x00\x00\x02\x92\x01", True),               # an array of 2 holding 1
    "huge": (b"\xff\xff\xff\xff", True),                               # announces 4 GiB
    "oversize": ((protocol.MAX_REQUEST_BYTES + 1).to_bytes(4, "big") + b"x" * 1000, True),
    "not a map": (b"\x00\x00\x00\x01\x2a", False),                     # 42
    "no command": (protocol.request_frame(3, ""), False),
    "wrong args": (protocol.request_frame(4, "slot", {"slot": "one"}), False),
}


def wait_for_a_place(path, timeout=5):
    """Once the daemon has seen closed connections go, a new one is served again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with ControlClient(path) as client:
                client.request("help")
                return
        except ControlError as error:
            assert error.code == protocol.DENIED and time.monotonic() < deadline, error
        time.sleep(0.01)


def test_hostile_clients_never_stall_the_daemon(tmp_path, daemon_factory, socket_dir):  # noqa: F811
    site = Site(tmp_path, socket_dir)
    daemon = site.start(daemon_factory)
    path = site.socket
    root_pid = daemon.proc.pid
    prober = ControlClient(path, timeout=5)
    latencies = [timed_status(prober)]

    # 60 connections that hold a place: half a frame then silence, a frame
    # trickled a byte at a time, or nothing at all.
    holders = [Holder(path, ("stall", "trickle", "silent")[i % 3]) for i in range(60)]
    # With the prober that is 61; three more fill the 64 places, and the 65th
    # is told so at once instead of hanging.
    fillers = [raw_connection(path) for _ in range(3)]
    extra = raw_connection(path)
    [refusal], closed, took = read_frames(extra, timeout=5)
    assert (refusal["ok"], refusal["code"], closed) == (False, protocol.DENIED, True)
    assert "too many control connections" in refusal["error"]
    assert took < PROMPT
    for sock in fillers + [extra]:
        sock.close()
    wait_for_a_place(path)

    # Until the read deadline has passed for every holder, one-shot hostile
    # clients come and go while the prober keeps asking.
    answered = {}
    trickle_at = time.monotonic()
    end = time.monotonic() + READ_DEADLINE + 3
    while time.monotonic() < end:
        for name, (payload, closes) in ONE_SHOTS.items():
            sock = raw_connection(path)
            sock.sendall(payload)
            frames, closed, took = read_frames(sock, timeout=5, count=None if closes else 1)
            sock.close()
            assert closed == closes, (name, frames)
            assert [f["code"] for f in frames] == [protocol.BAD_REQUEST], (name, frames)
            assert took < PROMPT, f"{name}: answered after {took:.2f} s"
            answered[name] = frames[0]["error"]
        # A frame cut short by the client closing: the daemon just forgets it.
        sock = raw_connection(path)
        sock.sendall(protocol.request_frame(7, "status")[:9])
        sock.close()
        if time.monotonic() >= trickle_at:
            for holder in holders:
                if holder.kind == "trickle" and holder.closed_at is None:
                    holder.send(1)
            trickle_at += 0.5
        for holder in holders:
            holder.poll()
        latencies.append(timed_status(prober))

    assert "65537-byte frame" in answered["oversize"], answered
    assert "slot must be int" in answered["wrong args"], answered
    assert max(latencies) < PROMPT, f"status took up to {max(latencies):.3f} s"
    for holder in holders:
        assert holder.closed_at is not None, f"a {holder.kind} connection is still open"
        held = holder.closed_at - holder.first_byte_at
        # A trickle resets no deadline: a request has READ_DEADLINE s to arrive whole.
        assert READ_DEADLINE - 0.5 <= held <= READ_DEADLINE + 1.5, (holder.kind, held)
        holder.sock.close()
    assert daemon.text().count("read deadline passed") >= 60
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    assert timed_status(prober) < PROMPT
    prober.close()


def test_a_client_that_floods_requests_is_cut_off_while_a_pipelining_one_is_served(
        tmp_path, daemon_factory, socket_dir):  # noqa: F811
    site = Site(tmp_path, socket_dir)
    daemon = site.start(daemon_factory)
    prober = ControlClient(site.socket, timeout=5)

    # A few hundred requests may be sent ahead: each gets its reply, in order.
    pipelining = raw_connection(site.socket)
    pipelining.sendall(b"".join(protocol.request_frame(i, "slot", {"slot": i % 2}) for i in range(200)))
    replies, closed, _ = read_frames(pipelining, timeout=10, count=200)
    assert not closed
    assert [r["id"] for r in replies] == list(range(200))
    assert all(r["ok"] and r["result"]["slot"] == r["id"] % 2 for r in replies)
    pipelining.close()

    # Thousands at once, never reading a reply: the client is told and dropped,
    # and the prober never waits long meanwhile.
    latencies = []
    flood = b"".join(protocol.request_frame(i, "status") for i in range(20000))
    for _ in range(5):
        sock = raw_connection(site.socket)
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "a flooding client was never cut off"
            try:
                sent += sock.send(flood[sent:sent + 65536])
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            latencies.append(timed_status(prober))
        sock.close()
    assert max(latencies) < PROMPT / 4, f"status took up to {max(latencies):.3f} s during floods"
    assert daemon.text().count("control: closing the connection of uid 0") >= 5
    assert timed_status(prober) < PROMPT
    prober.close()


# Watching.

class Watcher:
    """A `watch` connection read frame by frame, with deadlines."""

    def __init__(self, path):
        self.sock = raw_connection(path)
        self.sock.sendall(protocol.request_frame(1, "watch"))
        self.decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        self.pending = []
        self.seen = []
        reply = self._next(5)
        assert reply == {"v": 1, "id": 1, "ok": True, "result": {"watching": True}}

    def _next(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing more streamed; saw {self.seen}"
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            assert chunk, f"the stream ended; saw {self.seen}"
            self.pending += self.decoder.feed(chunk)
        return self.pending.pop(0)

    def wait_for(self, event, child, timeout=15):
        """The next event named `event` about `child`, skipping the others."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._next(max(deadline - time.monotonic(), 0.001))
            assert frame["id"] == 1 and set(frame) == {"v", "id", "event"}, frame
            self.seen.append(frame["event"])
            if frame["event"]["event"] == event and frame["event"].get("child") == child:
                return frame["event"]


def slot_worker_pid(path, number):
    with ControlClient(path) as client:
        return client.request("slot", slot=number)["worker"]["pid"]


def test_watch_streams_a_killed_slot_worker_being_restarted(
        tmp_path, daemon_factory, socket_dir):  # noqa: F811
    site = Site(tmp_path, socket_dir)
    daemon = site.start(daemon_factory)
    watcher = Watcher(site.socket)
    victim = slot_worker_pid(site.socket, 1)
    assert victim in daemon.slot_pids()

    os.kill(victim, signal.SIGKILL)
    exited = watcher.wait_for("exited", "slot-01")
    assert (exited["pid"], exited["status"]) == (victim, "killed by SIGKILL")
    started = watcher.wait_for("started", "slot-01")
    assert started["pid"] != victim
    assert watcher.wait_for("ready", "slot-01")["pid"] == started["pid"]
    assert slot_worker_pid(site.socket, 1) == started["pid"] and started["pid"] in daemon.slot_pids()
    assert all(isinstance(e["t"], float) for e in watcher.seen)

    # Operators' changes are streamed too, with who made them.
    with ControlClient(site.socket) as client:
        client.request("pause", machinetype="alpha")
        client.request("reload")
    paused = watcher.wait_for("command", None)
    assert paused == {"event": "command", "command": "pause", "args": {"machinetype": "alpha"},
                      "uid": 0, "pid": os.getpid(), "t": paused["t"]}
    assert watcher.wait_for("command", None)["command"] == "reload"

    # The stream outlives the read deadline: a watcher sends nothing and is kept.
    time.sleep(READ_DEADLINE + 1)
    victim = slot_worker_pid(site.socket, 0)
    os.kill(victim, signal.SIGKILL)
    assert watcher.wait_for("exited", "slot-00")["pid"] == victim
    assert watcher.wait_for("ready", "slot-00")["pid"] == slot_worker_pid(site.socket, 0) != victim

    # A watcher that goes away costs the daemon nothing.
    watcher.sock.close()
    victim = slot_worker_pid(site.socket, 1)
    os.kill(victim, signal.SIGKILL)
    daemon.wait_log(f"slot-01 (pid {victim}) ended")
    with ControlClient(site.socket) as client:
        assert client.request("status")["state"] == "running"
    assert "closing the connection" not in daemon.text()


# Reload.

def test_reload_applies_a_changed_share(tmp_path, daemon_factory, socket_dir):  # noqa: F811
    site = Site(tmp_path, socket_dir)
    daemon = site.start(daemon_factory, share=0)
    with ControlClient(site.socket) as client:
        assert client.request("machinetypes")["alpha"]["target_share"] == 0
        applied = daemon.text().count("configuration applied")
        site.write_config(share=7)
        # The file watch would notice too, after a while; reload makes it now.
        assert client.request("reload") == {"reloading": True}
        deadline = time.monotonic() + 10
        while client.request("machinetypes")["alpha"]["target_share"] != 7:
            assert time.monotonic() < deadline, "the new share never showed"
            time.sleep(0.05)
        assert client.request("status")["machinetypes"]["alpha"]["target_share"] == 7
    assert daemon.text().count("configuration applied") > applied

    # A broken file is refused and said so in status; the share stays.
    site.config.write_text("[settings\nbroken")
    with ControlClient(site.socket) as client:
        client.request("reload")
        deadline = time.monotonic() + 10
        while not client.request("status")["config_problems"]:
            assert time.monotonic() < deadline, "the broken configuration was not reported"
            time.sleep(0.05)
        assert client.request("machinetypes")["alpha"]["target_share"] == 7


# Draining, on the real Docker engine.

DOCKER_CONFIG = """[settings]
vac_space = control.vac.example
factory_name = {factory}
total_processors = 2
mb_per_processor = 128
overload_per_processor = 1000
heartbeat_timeout_seconds = 20
docker_timeout_seconds = 10

[machinetype sleeper]
machine_model = docker
root_image = docker://{image}
user_data = sleeper.user_data
target_share = 1
max_wallclock_seconds = 600
fizzle_seconds = 1
backoff_seconds = 1
"""

# Runs until it is told to stop (SIGTERM ends the loop within a second).
SLEEPER = """#!/bin/sh
trap 'exit 0' TERM
while true; do sleep 1; done
"""


def wait_slots(client, predicate, what, timeout=60):
    """Poll `slots` until predicate(slots) is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        slots = client.request("slots")
        value = predicate(slots)
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\n{slots}"
        time.sleep(0.2)


def running_machines(slots):
    """{slot: machine uuid} once every slot runs a machine, else None."""
    if all(s["state"] == "running" and s["machine"] for s in slots):
        return {s["slot"]: s["machine"] for s in slots}
    return None


@pytest.mark.docker
def test_drain_with_a_deadline_ends_the_machines_and_starts_no_more(
        tmp_path, factory_label, daemon_factory, socket_dir, busybox_image):  # noqa: F811
    state = tmp_path / "state"
    files = state / "machinetypes" / "sleeper" / "files"
    files.mkdir(parents=True)
    (files / "sleeper.user_data").write_text(SLEEPER)
    config = tmp_path / "vac.conf"
    config.write_text(DOCKER_CONFIG.format(factory=factory_label, image=busybox_image))
    path = os.path.join(socket_dir, "control.sock")
    daemon = daemon_factory(config, extra_args=("--socket", path))
    daemon.wait_log("supervisor running")
    client = ControlClient(path)
    first = wait_slots(client, running_machines, "a machine running in each slot")

    drained_at = time.time()
    assert client.request("drain", deadline=2) == {"draining": True, "deadline": 2}
    assert client.request("status")["draining"] is True
    daemon.wait_log(f"control: drain {{'deadline': 2}} by uid 0 pid {os.getpid()}")

    def ended(slots):
        outcomes = {s["slot"]: s["last_outcome"] for s in slots}
        done = all(o and o["machine"] == first[n] for n, o in outcomes.items())
        return done and all(s["machine"] is None for s in slots) and outcomes

    outcomes = wait_slots(client, ended, "both machines ended by the drain")
    for number, outcome in outcomes.items():
        assert (outcome["code"], outcome["text"]) == (100, "Shutdown requested by the factory")
        assert outcome["ended_at"] >= drained_at + 2 - 0.5, "ended before the deadline"
        message = state / "machines" / first[number] / "joboutputs" / "shutdown_message"
        assert message.read_text().strip() == "100 Shutdown requested by the factory"

    # Draining: nothing new starts in the free slots.
    quiet_until = time.monotonic() + 4
    while time.monotonic() < quiet_until:
        slots = client.request("slots")
        assert all(s["machine"] is None for s in slots), slots
        time.sleep(0.2)
    assert sorted(p.name for p in (state / "machines").iterdir()) == sorted(first.values())
    status = client.request("status")
    assert status["slots"]["running"] == 0 and status["processors"]["used"] == 0

    assert client.request("undrain") == {"draining": False}
    second = wait_slots(client, running_machines, "new machines after undrain")
    assert not set(second.values()) & set(first.values())

    # Leave nothing running: end them at once.
    client.request("drain", deadline=0)
    wait_slots(client, lambda slots: all(s["machine"] is None for s in slots), "the last machines ended")
    client.close()


# Places per uid: a reader at its limit locks out nobody else.

def ask_raw(sock, command):
    """One request on a raw connection; the first frame the daemon answers with."""
    sock.sendall(protocol.request_frame(1, command))
    decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
    frames = []
    while not frames:
        chunk = sock.recv(65536)
        assert chunk, "the daemon closed the connection without a word"
        frames = decoder.feed(chunk)
    return frames[0]


def test_a_reader_holding_its_most_connections_locks_out_neither_root_nor_an_admin(
        tmp_path, daemon_factory, socket_dir, accounts):  # noqa: F811
    site = Site(tmp_path, socket_dir, extra=f"admin_group = {accounts['admin_group']}\n"
                                            f"readonly_group = {accounts['readonly_group']}\n")
    daemon = site.start(daemon_factory)
    path = site.socket
    entry = pwd.getpwnam(accounts["reader"])
    handover, received = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def hold_every_place():
        # Connected as the reader, then handed to the test: the daemon keeps seeing the reader.
        held = [raw_connection(path) for _ in range(MAX_CLIENTS_PER_UID)]
        answers = [ask_raw(sock, "help")["ok"] for sock in held]
        one_more = ask_raw(raw_connection(path), "status")
        socket.send_fds(handover, [b"held"], [sock.fileno() for sock in held])
        return {"answers": answers, "one_more": one_more}

    outcome = run_as(entry.pw_uid, entry.pw_gid, os.getgrouplist(accounts["reader"], entry.pw_gid),
                     hold_every_place, what="the reader holding its places")
    assert "crash" not in outcome, outcome
    assert outcome["answers"] == [True] * MAX_CLIENTS_PER_UID
    refusal = outcome["one_more"]
    assert (refusal["ok"], refusal["code"]) == (False, protocol.DENIED)
    assert refusal["error"].startswith(
        f"too many control connections from uid {entry.pw_uid} (at most {MAX_CLIENTS_PER_UID})")
    _, fds, _, _ = socket.recv_fds(received, 16, MAX_CLIENTS_PER_UID)
    held = [socket.socket(fileno=fd) for fd in fds]
    assert len(held) == MAX_CLIENTS_PER_UID

    # Root and an admin are served at once meanwhile; the reader is still refused a ninth.
    with ControlClient(path) as client:
        assert timed_status(client) < PROMPT
    [[admin_reply]] = as_account(accounts["admin"], path, [[("status", {})]])["replies"]
    assert admin_reply["ok"], admin_reply
    [[reader_reply]] = as_account(accounts["reader"], path, [[("status", {})]])["replies"]
    assert reader_reply["code"] == protocol.DENIED and "too many" in reader_reply["error"]
    # The held places were live all along, and closing them gives them back.
    assert all(ask_raw(sock, "help")["ok"] for sock in held)
    for sock in held:
        sock.close()
    handover.close()
    received.close()
    deadline = time.monotonic() + 5
    while True:
        [[reader_reply]] = as_account(accounts["reader"], path, [[("status", {})]])["replies"]
        if reader_reply["ok"]:
            break
        assert time.monotonic() < deadline, reader_reply
        time.sleep(0.05)
    assert daemon.proc.poll() is None
