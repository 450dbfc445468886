"""The control server's decisions: who may do what, deadlines, turns, floods.

The server runs here over real Unix sockets in a temporary directory, driven
pass by pass by a small stand-in for the root's loop with a fake clock, so
deadlines are tested without waiting for them.
"""

import collections
import os
import re
import selectors
import socket

import pytest

from vac.control import commands, protocol
from vac.control.commands import COMMANDS, Command, CommandFailed
from vac.control.admission import (ADMIN, READ, access_level, group_id, peer_groups, proc_groups,
                                   refusal)
from vac.control.server import (ANSWERS_PER_PASS, LAST_WORDS_SECONDS, MAX_EVENT_BYTES,
                                MAX_QUEUED_REQUESTS, ControlServer)
from vac.ipc.framing import FrameDecoder

ADMIN_GID, READONLY_GID = 1500, 1600


@pytest.mark.parametrize("uid, groups, expected", [
    (0, set(), ADMIN),                          # root needs no group
    (1000, {1000, ADMIN_GID}, ADMIN),
    (1000, {1000, ADMIN_GID, READONLY_GID}, ADMIN),
    (1000, {1000, READONLY_GID}, READ),
    (1000, {1000}, None),
    (1000, {1000, 4242}, None),
])
def test_access_follows_root_and_the_configured_groups(uid, groups, expected):
    assert access_level(uid, groups, ADMIN_GID, READONLY_GID) == expected


def test_unconfigured_groups_grant_nothing():
    assert access_level(1000, {1000, ADMIN_GID, READONLY_GID}, None, None) is None
    assert access_level(0, set(), None, None) == ADMIN


def test_a_missing_group_grants_nothing_and_a_real_one_is_found():
    assert group_id(None) is None and group_id("") is None
    assert group_id("no-such-group-for-vac") is None
    assert group_id("root") == 0


def test_the_peer_groups_are_its_primary_and_supplementary_groups():
    ours, theirs = socket.socketpair()
    try:
        assert peer_groups(ours, os.getpid(), os.getuid(), os.getgid()) == \
            {os.getgid(), *os.getgroups()}
    finally:
        ours.close()
        theirs.close()
    # /proc is believed only while the pid still runs as the peer's uid.
    assert proc_groups(os.getpid(), os.getuid()) == set(os.getgroups())
    assert proc_groups(os.getpid(), os.getuid() + 12345) == set()


def test_readers_may_not_run_any_command_that_changes_the_factory():
    changing = {name for name, command in COMMANDS.items() if command.mutating}
    assert changing == {"drain", "undrain", "stop-machine", "reset-slot", "pause", "resume",
                        "reload", "shutdown"}
    assert all(command.help for command in COMMANDS.values()), "a command's docstring is its help"


@pytest.mark.parametrize("deadline", [-1, float("nan"), float("inf"), float("-inf")])
def test_drain_refuses_a_deadline_that_is_no_number_of_seconds(deadline):
    # Refused before the factory is touched: there is none here.
    with pytest.raises(CommandFailed, match="deadline must be a finite number of seconds"):
        commands.drain(commands.Context(root=None, factory=None), {"deadline": deadline})


# The server over real sockets.

class Loop:
    """What the server uses of the root: readers, writers, services, observers; a fake clock."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.readers, self.writers, self.services, self.observers = {}, {}, [], []
        self.now = 1000.0

    def add_reader(self, fd, callback):
        self.readers[fd] = callback
        self.selector.register(fd, selectors.EVENT_READ)

    def remove_reader(self, fd):
        self.readers.pop(fd)
        self.writers.pop(fd, None)
        self.selector.unregister(fd)

    def want_write(self, fd, callback):
        if callback is None:
            self.writers.pop(fd, None)
            self.selector.modify(fd, selectors.EVENT_READ)
        else:
            self.writers[fd] = callback
            self.selector.modify(fd, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def add_service(self, service):
        self.services.append(service)

    def add_observer(self, callback):
        self.observers.append(callback)

    def emit(self, event, **fields):
        for observer in self.observers:
            observer(dict(fields, event=event))

    def turn(self):
        """One pass of the loop: what is ready, then the services."""
        for key, mask in self.selector.select(0):
            if mask & selectors.EVENT_WRITE and key.fd in self.writers:
                self.writers[key.fd]()
            if mask & selectors.EVENT_READ and key.fd in self.readers:
                self.readers[key.fd]()
        for service in self.services:
            service.on_pass(self.now)


def echo(ctx, args):
    """Give the arguments back."""
    ctx.append(("echo", args))
    return args


def poke(ctx, args):
    """Change something."""
    ctx.append(("poke", args))
    if args["fail"]:
        raise CommandFailed("cannot poke now")
    return "poked"


TEST_COMMANDS = {
    "echo": Command("echo", echo, {"n": ((int,), False, 0)}, mutating=False),
    "big": Command("big", lambda ctx, args: "x" * 50_000, {}, mutating=False),
    "poke": Command("poke", poke, {"fail": ((bool,), False, False)}, mutating=True),
    "watch": Command("watch", lambda ctx, args: {"watching": True}, {}, mutating=False, streams=True),
    # A reply over the frame cap, one msgpack cannot encode, a handler with a bug.
    "huge": Command("huge", lambda ctx, args: "x" * protocol.MAX_REPLY_BYTES, {}, mutating=False),
    "surrogate": Command("surrogate", lambda ctx, args: {"fqan": "\ud800"}, {}, mutating=False),
    "broken": Command("broken", lambda ctx, args: {}["missing"], {}, mutating=False),
}


@pytest.fixture
def served(tmp_path):
    loop = Loop()
    calls = []
    server = ControlServer(loop, str(tmp_path / "control.sock"), TEST_COMMANDS, calls,
                           max_clients=4, read_timeout=10.0, clock=lambda: loop.now)
    server.open()
    yield loop, server, calls
    server.close()


class Peer:
    """A test client: raw bytes out, frames back."""

    def __init__(self, served):
        self.loop, self.server, _ = served
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.server.path)
        self.sock.setblocking(False)
        self.decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        self.loop.turn()   # accepted
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def ask(self, request_id, command, **args):
        self.send(protocol.request_frame(request_id, command, args))

    def frames(self):
        """Every frame the server has sent so far; notes whether it closed the connection."""
        frames = []
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return frames
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return frames
            frames += self.decoder.feed(chunk)


def test_requests_are_answered_in_the_pass_that_reads_them(served):
    peer = Peer(served)
    peer.ask(1, "echo", n=5)
    peer.ask(2, "nope")
    peer.ask(3, "echo", n="five")
    served[0].turn()
    assert peer.frames() == [
        {"v": 1, "id": 1, "ok": True, "result": {"n": 5}},
        {"v": 1, "id": 2, "ok": False, "code": "unknown_command", "error": "unknown command 'nope'"},
        {"v": 1, "id": 3, "ok": False, "code": "bad_request", "error": "n must be int, not str"},
    ]
    assert not peer.closed


def test_a_reader_is_refused_changes_and_the_handler_never_runs(served):
    loop, server, calls = served
    peer = Peer(served)
    [client] = server.clients.values()
    client.access = READ    # as a member of the read-only group would be
    peer.ask(1, "poke")
    peer.ask(2, "echo", n=1)
    loop.turn()
    denied, echoed = peer.frames()
    assert (denied["code"], echoed["result"]) == (protocol.DENIED, {"n": 1})
    assert denied["error"].startswith("permission denied: poke changes the factory")
    assert calls == [("echo", {"n": 1})]


def test_an_admin_change_that_fails_says_why(served):
    loop, _, calls = served
    peer = Peer(served)
    peer.ask(1, "poke", fail=True)
    peer.ask(2, "poke")
    loop.turn()
    assert peer.frames() == [
        {"v": 1, "id": 1, "ok": False, "code": "failed", "error": "cannot poke now"},
        {"v": 1, "id": 2, "ok": True, "result": "poked"},
    ]


def test_a_request_has_the_read_deadline_from_its_first_byte_however_it_trickles(served):
    loop, _, _ = served
    peer = Peer(served)
    frame = protocol.request_frame(1, "echo")
    first_byte_at = loop.now
    for offset in range(len(frame) - 1):
        peer.send(frame[offset:offset + 1])
        loop.turn()
        loop.now += 9.5 / len(frame)
    loop.now = first_byte_at + 9.99
    loop.turn()
    assert peer.frames() == [] and not peer.closed
    loop.now = first_byte_at + 10
    loop.turn()
    assert peer.frames() == [] and peer.closed


def test_each_whole_request_starts_a_new_deadline(served):
    loop, server, _ = served
    peer = Peer(served)
    for request_id in range(5):
        loop.now += 9
        peer.ask(request_id, "echo")
        loop.turn()
    assert len(peer.frames()) == 5 and not peer.closed
    assert server.next_deadline() == loop.now + 10
    loop.now += 10
    loop.turn()
    peer.frames()
    assert peer.closed, "an idle connection goes at the deadline too"


def test_a_watcher_is_kept_past_the_deadline_and_gets_every_event(served):
    loop, server, _ = served
    watcher = Peer(served)
    watcher.ask(1, "watch")
    loop.turn()
    assert watcher.frames() == [{"v": 1, "id": 1, "ok": True, "result": {"watching": True}}]
    loop.now += 3600
    loop.turn()
    loop.emit("ready", child="slot-00")
    assert watcher.frames() == [{"v": 1, "id": 1, "event": {"event": "ready", "child": "slot-00"}}]
    assert not watcher.closed and server.next_deadline() is None


def test_watchers_see_each_change_an_operator_made_and_who_made_it(served):
    loop, _, _ = served
    watcher, operator = Peer(served), Peer(served)
    watcher.ask(1, "watch")
    loop.turn()
    watcher.frames()
    operator.ask(1, "poke")
    operator.ask(2, "poke", fail=True)
    operator.ask(3, "echo")
    loop.turn()
    assert [f["event"] for f in watcher.frames()] == [
        {"event": "command", "command": "poke", "args": {"fail": False}, "uid": os.getuid(),
         "pid": os.getpid()}], "only the change that was made, not the failed one or a read"


def test_requests_sent_ahead_are_answered_a_few_per_pass_taking_clients_in_turn(served):
    loop, server, _ = served
    busy, other = Peer(served), Peer(served)
    busy.send(b"".join(protocol.request_frame(i, "echo", {"n": i}) for i in range(100)))
    other.ask(1, "echo", n=-1)
    loop.turn()
    # The other client's one request did not wait for the hundred.
    assert other.frames() == [{"v": 1, "id": 1, "ok": True, "result": {"n": -1}}]
    answered = busy.frames()
    assert 0 < len(answered) < ANSWERS_PER_PASS
    assert server.next_deadline() == loop.now, "the rest are answered in the very next pass"
    for _ in range(100 // ANSWERS_PER_PASS + 1):
        loop.turn()
    answered += busy.frames()
    assert [f["result"]["n"] for f in answered] == list(range(100))
    assert server.next_deadline() == loop.now + 10


def test_a_flood_of_requests_closes_the_connection_with_a_reason(served):
    loop, _, calls = served
    peer = Peer(served)
    peer.send(b"".join(protocol.request_frame(i, "echo") for i in range(MAX_QUEUED_REQUESTS + 1)))
    loop.turn()
    [refusal] = peer.frames()
    assert refusal["code"] == protocol.BAD_REQUEST
    assert f"more than {MAX_QUEUED_REQUESTS} requests" in refusal["error"]
    assert peer.closed and calls == []


def test_requests_before_a_bad_frame_are_answered_then_the_connection_closes(served):
    loop, _, _ = served
    peer = Peer(served)
    peer.send(protocol.request_frame(1, "echo") + protocol.request_frame(2, "echo")
              + b"\x00\x00\x00\x01\xc1" + protocol.request_frame(3, "echo"))
    loop.turn()
    frames = peer.frames()
    assert [f.get("result") for f in frames[:2]] == [{"n": 0}, {"n": 0}]
    assert frames[2]["code"] == protocol.BAD_REQUEST and "undecodable" in frames[2]["error"]
    assert len(frames) == 3 and peer.closed


def test_an_announced_oversize_frame_is_refused_before_it_arrives(served):
    loop, _, _ = served
    peer = Peer(served)
    peer.send((protocol.MAX_REQUEST_BYTES + 1).to_bytes(4, "big"))
    loop.turn()
    [refusal] = peer.frames()
    assert f"{protocol.MAX_REQUEST_BYTES + 1}-byte frame" in refusal["error"] and peer.closed


def test_past_the_bound_on_clients_a_new_one_is_told_so(served):
    loop, server, _ = served
    peers = [Peer(served) for _ in range(4)]
    extra = Peer(served)
    [refusal] = extra.frames()
    assert (refusal["code"], refusal["error"]) == (
        protocol.DENIED, "too many control connections; try again")
    assert extra.closed and len(server.clients) == 4
    peers[0].sock.close()
    loop.turn()
    again = Peer(served)
    again.ask(1, "echo")
    loop.turn()
    assert again.frames()[0]["ok"]


def test_a_client_that_reads_no_replies_is_dropped_at_the_output_cap(served):
    loop, server, _ = served
    server.max_output_bytes = 256 * 1024
    peer = Peer(served)
    # Each reply is 50 kB: the socket's buffer takes a few, the server holds the rest.
    for request_id in range(64):
        peer.ask(request_id, "big")
        loop.turn()
        if not server.clients:
            break
    assert not server.clients, "a client that never reads was kept"
    assert request_id < 20


# The fault barrier and what cannot be sent.

def test_a_reply_too_large_for_a_frame_is_an_error_and_the_connection_goes_on(served):
    loop, _, _ = served
    peer = Peer(served)
    peer.ask(1, "huge")
    peer.ask(2, "echo", n=2)
    loop.turn()
    frames = peer.frames()
    assert frames[0]["ok"] is False and frames[0]["code"] == protocol.TOO_LARGE
    size = int(re.match(r"reply too large: (\d+) bytes \(at most (\d+)\)", frames[0]["error"]).group(1))
    assert protocol.MAX_REPLY_BYTES < size < protocol.MAX_REPLY_BYTES + 100
    assert "use a narrower command" in frames[0]["error"]
    assert frames[1] == {"v": 1, "id": 2, "ok": True, "result": {"n": 2}}
    assert not peer.closed


def test_a_reply_that_cannot_be_encoded_is_an_error_and_the_connection_goes_on(served):
    loop, _, _ = served
    peer = Peer(served)
    peer.ask(1, "surrogate")
    peer.ask(2, "echo")
    loop.turn()
    failed, echoed = peer.frames()
    assert (failed["code"], failed["error"][:25]) == (protocol.FAILED, "reply cannot be encoded (")
    assert echoed["ok"] and not peer.closed


def test_a_fault_while_serving_one_client_drops_that_client_only(served, caplog):
    loop, server, _ = served
    victim, other = Peer(served), Peer(served)
    victim.ask(1, "broken")
    other.ask(1, "echo", n=7)
    loop.turn()
    assert other.frames() == [{"v": 1, "id": 1, "ok": True, "result": {"n": 7}}]
    victim.frames()
    assert victim.closed and len(server.clients) == 1
    [fault] = [r for r in caplog.records if "fault while serving" in r.getMessage()]
    assert f"a request for uid {os.getuid()} pid {os.getpid()}" in fault.getMessage()
    assert "KeyError" in fault.getMessage() and fault.exc_info is not None, "logged with its traceback"
    # The server goes on: a new client is served.
    again = Peer(served)
    again.ask(1, "echo")
    loop.turn()
    assert again.frames()[0]["ok"]


# Watchers that fall behind.

def watching(served):
    peer = Peer(served)
    peer.ask(1, "watch")
    served[0].turn()
    assert peer.frames() == [{"v": 1, "id": 1, "ok": True, "result": {"watching": True}}]
    return peer


def test_a_watcher_that_falls_behind_is_dropped_and_told_why(served):
    loop, server, _ = served
    server.max_watch_backlog = 64 * 1024
    watcher, other = watching(served), Peer(served)
    emitted = 0
    client = next(iter(server.clients.values()))
    while not client.closing:
        loop.emit("tick", n=emitted, pad="p" * 1000)
        emitted += 1
        assert emitted < 10_000, "the watcher was never dropped"
    # Meanwhile the others are served as ever.
    other.ask(1, "echo", n=1)
    loop.turn()
    assert other.frames()[0]["result"] == {"n": 1}
    # Reading now, it gets whole events in order, then the line saying why, then the end.
    frames = []
    for _ in range(1000):
        frames += watcher.frames()
        loop.turn()
        if watcher.closed:
            break
    *events, last = frames
    assert [f["event"]["n"] for f in events] == list(range(len(events)))
    assert 0 < len(events) < emitted
    assert last["ok"] is False and last["code"] == protocol.FELL_BEHIND
    assert last["error"].startswith("watch dropped:") and "reconnect" in last["error"]
    assert watcher.closed and len(server.clients) == 1


def test_a_watcher_that_never_reads_again_is_closed_after_its_last_words(served):
    loop, server, _ = served
    server.max_watch_backlog = 64 * 1024
    watcher = watching(served)
    [client] = server.clients.values()
    for _ in range(10_000):
        if client.closing:
            break
        loop.emit("tick", pad="p" * 1000)
    assert client.closing and not watcher.closed
    loop.now += LAST_WORDS_SECONDS - 0.01
    loop.turn()
    assert not client.closed
    assert server.next_deadline() == pytest.approx(loop.now + 0.01)
    loop.now += 0.01
    loop.turn()
    assert client.closed and not server.clients


def test_an_event_too_large_to_stream_is_sent_as_its_name_and_size(served):
    loop, _, _ = served
    watcher = watching(served)
    loop.emit("pipe", child="pipe-fetcher", document="d" * MAX_EVENT_BYTES)
    loop.emit("small", child="slot-00", text="\ud800")
    [big, bad] = [f["event"] for f in watcher.frames()]
    assert big["event"] == "pipe" and big["child"] == "pipe-fetcher" and "document" not in big
    assert re.fullmatch(rf"\d+ bytes, more than the {MAX_EVENT_BYTES} an event may have", big["omitted"])
    assert bad == {"event": "small", "child": "slot-00", "omitted": bad["omitted"]}
    assert bad["omitted"].startswith("not encodable")
    assert not watcher.closed


# Places for root, admins and readers.

LIMITS = (64, 8, 8)   # max clients, per uid, reserved for root and admins


@pytest.mark.parametrize("access, uid, connections, of_uid, refused", [
    (None, 1000, 0, 0, "permission denied: uid 1000 is not root"),
    (READ, 1000, 0, 0, None),
    (READ, 1000, 10, 7, None),
    (READ, 1000, 10, 8, "too many control connections from uid 1000 (at most 8)"),
    (READ, 1001, 10, 0, None),                      # another reader has its own count
    (READ, 1001, 56, 0, "too many control connections from readers"),
    (ADMIN, 1002, 56, 0, None),                     # admins may take the reserved places
    (ADMIN, 1002, 60, 8, "too many control connections from uid 1002"),
    (ADMIN, 0, 63, 40, None),                       # root has no per-uid bound
    (ADMIN, 0, 64, 40, "too many control connections; try again"),
])
def test_who_gets_a_place(access, uid, connections, of_uid, refused):
    got = refusal(access, uid, connections, of_uid, LIMITS)
    assert (got is None) if refused is None else got.startswith(refused)


def test_a_reader_holding_every_place_it_may_does_not_lock_out_root(served):
    loop, server, _ = served
    server.limits = (4, 2, 2)
    # Peers here connect as root: play readers by marking their connections so.
    readers = [Peer(served) for _ in range(2)]
    for client in server.clients.values():
        client.access, client.uid = READ, 4242
    server.per_uid = collections.Counter({4242: 2})
    root_peer = Peer(served)
    root_peer.ask(1, "echo")
    loop.turn()
    assert root_peer.frames()[0]["ok"] and len(server.clients) == 3
    for reader in readers:
        assert not reader.closed
    # Dropping the readers gives their places back.
    for reader in readers:
        reader.sock.close()
    loop.turn()
    assert server.per_uid == collections.Counter({0: 1})


def test_the_client_reports_a_watch_dropped_for_falling_behind(tmp_path):
    from vac.control.client import ControlClient, ControlError
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "daemon.sock"))
    listener.listen(1)
    with listener, ControlClient(str(tmp_path / "daemon.sock"), timeout=5) as client:
        daemon_side, _ = listener.accept()
        with daemon_side:
            # What the daemon says to a watcher it drops: events, then why.
            daemon_side.sendall(protocol.reply_frame(1, {"watching": True})
                                + protocol.event_frame(1, {"event": "ready", "child": "slot-00"})
                                + protocol.error_frame(1, protocol.FELL_BEHIND, "watch dropped: ..."))
            events = client.watch()
            assert next(events) == {"event": "ready", "child": "slot-00"}
            with pytest.raises(ControlError) as dropped:
                next(events)
    assert (dropped.value.code, str(dropped.value)) == (protocol.FELL_BEHIND, "watch dropped: ...")
