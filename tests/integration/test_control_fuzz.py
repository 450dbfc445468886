"""Thousands of generated frames and byte strings against a real vacd's control socket.

Each example opens a connection, sends what hypothesis made (arbitrary
bytes, valid length prefixes around random msgpack or random bytes, valid
requests naming any command with arguments of any type, several of these in
a row, cut anywhere), closes its sending side and reads whatever comes back
until the daemon closes. Meanwhile another client keeps asking for status,
and watchers that never read and one that reads slowly are fed a stream of
events (pipelined pause and resume); the stalled ones are dropped, told why.
At the end the daemon is the same process, still answering, and it logged
no traceback.

A second run does the same against a factory whose status is too large for
a frame, each example asking for it (or machinetypes) first: every such
reply is an error saying so, and small replies keep coming promptly.
"""

import collections
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from vac.control import protocol
from vac.control.client import ControlClient, ControlError
from vac.control.commands import COMMANDS
from vac.ipc.framing import FrameDecoder

EXAMPLES = 2500
PROMPT = 1.0          # the longest a status round trip may take meanwhile
REPLY_DEADLINE = 5.0  # for the daemon to answer and close one fuzzing connection

CONFIG = """[settings]
vac_space = fuzz.vac.example
factory_name = fuzz-{factory}.vac.example
total_processors = 2
heartbeat_timeout_seconds = 20

[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = 0
"""

ERROR_CODES = {protocol.DENIED, protocol.BAD_REQUEST, protocol.UNKNOWN_COMMAND, protocol.FAILED,
               protocol.TOO_LARGE}

integers = st.integers(-2**63, 2**64 - 1)   # what msgpack carries
values = st.recursive(
    st.none() | st.booleans() | integers | st.floats() | st.text(max_size=30) | st.binary(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | integers, inner,
                                                                  max_size=5),
    max_leaves=20)

arg_names = st.sampled_from(sorted({name for c in COMMANDS.values() for name in c.schema} | {"x"}))
# Values of the right type as often as not, so that handlers run and refuse too.
plausible = st.integers(-3, 5) | st.sampled_from(["alpha", "beta", ""]) | st.floats() | values


@st.composite
def requests(draw):
    """A request naming a registered command (or not), its arguments of any type."""
    command = draw(st.sampled_from(sorted(COMMANDS)) | st.text(max_size=12))
    schema = sorted(COMMANDS[command].schema) if command in COMMANDS else []
    names = st.sampled_from(schema) | arg_names if schema else arg_names
    args = draw(st.dictionaries(names, plausible, max_size=3))
    request = {"v": 1, "id": draw(integers), "command": command, "args": args}
    if draw(st.booleans()):
        # Fields changed, dropped or added.
        for field in draw(st.lists(st.sampled_from(["v", "id", "command", "args", "extra"]), max_size=2)):
            if draw(st.booleans()):
                request.pop(field, None)
            else:
                request[field] = draw(values)
    if request.get("command") == "shutdown" and isinstance(request.get("args", {}), dict):
        # A valid shutdown (also one whose args were dropped or replaced by {})
        # would stop the daemon under test: refused for an unknown argument instead.
        request["args"] = dict(request.get("args", {}), x=1)
    return request


def packed(obj):
    return msgpack.packb(obj, use_bin_type=True)


def framed(payload):
    return len(payload).to_bytes(4, "big") + payload


frames = st.one_of(
    st.binary(max_size=200),                                      # anything at all
    values.map(packed).map(framed),                               # a frame of random msgpack
    st.binary(max_size=200).map(framed),                          # a frame of random bytes
    requests().map(packed).map(framed),                           # a request, mostly wrong
    st.integers(protocol.MAX_REQUEST_BYTES + 1, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
)


@st.composite
def exchanges(draw):
    """What one short-lived connection sends: a few frames, perhaps cut short."""
    data = b"".join(draw(st.lists(frames, min_size=1, max_size=4)))
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data) - 1))]
    return data


class Prober(threading.Thread):
    """Asks for status over one connection, again and again, timing each answer."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.client = ControlClient(path, timeout=5)
        self.latencies = []
        self.failure = None
        self.stopping = threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                state = self.client.request("status")["state"]
                self.latencies.append(time.monotonic() - started)
                if state != "running":
                    raise AssertionError(f"status says {state}")
                self.stopping.wait(0.005)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.failure = error

    def stop(self):
        self.stopping.set()
        self.join(10)
        self.client.close()


def exchange(path, data):
    """Send `data`, close the sending side, and return every frame the daemon sent before closing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(REPLY_DEADLINE)
        sock.connect(path)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it was refused already (an announced oversize frame); read why
        decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        replies = []
        deadline = time.monotonic() + REPLY_DEADLINE
        while True:
            assert time.monotonic() < deadline, f"no end of the answer to {data!r}"
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return replies
            replies += decoder.feed(chunk)
    finally:
        sock.close()


def check_reply(frame, data):
    """Every frame the daemon sends is a well-formed reply, an error it names, or an event."""
    assert isinstance(frame, dict) and frame.get("v") == 1 and isinstance(frame.get("id"), int), frame
    if "event" in frame:
        return
    if frame["ok"] is True:
        assert set(frame) == {"v", "id", "ok", "result"}, frame
    else:
        assert frame["ok"] is False and frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["error"], str) and frame["error"], frame


@pytest.fixture
def socket_path():
    directory = tempfile.mkdtemp(prefix="vac-fuzz-", dir="/tmp")
    yield os.path.join(directory, "control.sock")
    shutil.rmtree(directory, ignore_errors=True)


def test_generated_frames_never_crash_or_stall_the_daemon(
        tmp_path, daemon_factory, socket_path):  # noqa: F811
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(factory=uuid.uuid4().hex[:8]))
    daemon = daemon_factory(config, extra_args=("--socket", socket_path))
    daemon.wait_log("supervisor running")
    root_pid = daemon.proc.pid
    prober = Prober(socket_path)
    prober.start()
    crowd = WatchCrowd(socket_path)
    crowd.start()
    sent = {"connections": 0, "bytes": 0}
    answers = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(exchanges())
    def fuzz(data):
        replies = exchange(socket_path, data)
        sent["connections"] += 1
        sent["bytes"] += len(data)
        for frame in replies:
            check_reply(frame, data)
            answers["ok" if frame.get("ok") else frame.get("code", "event")] += 1
        assert prober.failure is None, f"status failed meanwhile: {prober.failure!r}"
        assert crowd.failure is None, f"the watchers' events failed meanwhile: {crowd.failure!r}"

    started = time.monotonic()
    try:
        fuzz()
        check_watch_crowd(crowd, daemon)
    finally:
        prober.stop()
        crowd.stop()
    took = time.monotonic() - started

    assert prober.failure is None, repr(prober.failure)
    assert sent["connections"] == EXAMPLES
    # The examples reached every layer: framing, request checks and commands. (A handler's
    # own refusal, FAILED, needs arguments valid enough that generation reaches it only
    # sometimes; tests/unit/test_control_server.py covers it by example.)
    assert {"ok", protocol.BAD_REQUEST, protocol.UNKNOWN_COMMAND} <= set(answers), answers
    # "event": a generated `watch` saw the factory change while its connection lasted.
    assert set(answers) <= {"ok", protocol.BAD_REQUEST, protocol.UNKNOWN_COMMAND,
                            protocol.FAILED, protocol.DENIED, "event"}, answers
    assert len(prober.latencies) > 100, "the prober hardly got a turn"
    assert max(prober.latencies) < PROMPT, f"status took up to {max(prober.latencies):.3f} s"
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    with ControlClient(socket_path) as client:
        assert client.request("status")["state"] == "running"
    assert "Traceback" not in daemon.text()
    print(f"{sent['connections']} connections, {sent['bytes']} bytes, answers {dict(answers)}, "
          f"{crowd.changes} changes streamed to {STALLED_WATCHERS + 1} watchers "
          f"in {took:.1f} s; status p50 {statistics.median(prober.latencies) * 1000:.1f} ms, "
          f"max {max(prober.latencies) * 1000:.1f} ms over {len(prober.latencies)} requests")


# Oversize replies and slow watchers.

OVERSIZE_EXAMPLES = 100
# 1,000 machinetypes with 4,600-character names: their status is about 4.7 MB,
# over the 4 MiB a reply may have, yet few enough to keep each pass cheap.
OVERSIZE_MACHINETYPES = 1_000
STALLED_WATCHERS = 3
# Changes made for the watchers: their events are over twice what a stalled
# watcher's socket and backlog hold.
CROWD_CHANGES = 20_000


def oversize_config(factory):
    lines = [CONFIG.format(factory=factory)]
    for n in range(OVERSIZE_MACHINETYPES):
        lines.append(f"[machinetype mt{n:05d}-{'x' * 4600}]\nmachine_model = docker\n"
                     "root_image = docker://vac-nonexistent:latest\nuser_data = u.user_data\n"
                     "target_share = 0\n")
    return "\n".join(lines)


# Each exchange first asks for a reply too large to send, then goes on as hypothesis likes.
oversize_exchanges = st.tuples(st.sampled_from(["status", "machinetypes"]), integers, exchanges()).map(
    lambda drawn: protocol.request_frame(drawn[1] % 2**31, drawn[0]) + drawn[2])


class WatchCrowd(threading.Thread):
    """Watchers that never read, one that reads slowly, and a stream of events for them."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stalled = []
        for _ in range(STALLED_WATCHERS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(protocol.request_frame(1, "watch"))
            self.stalled.append(sock)
        self.slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.slow.connect(path)
        self.slow.sendall(protocol.request_frame(1, "watch"))
        self.slow.settimeout(0.05)
        self.slow_frames = []
        self.slow_decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        self.slow_closed = False
        self.changes = 0
        self.failure = None
        self.stopping = threading.Event()

    def run(self):
        """Pause and resume one machinetype in pipelined batches; read the slow watcher a little."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(self.path)
                decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
                while not self.stopping.wait(0 if self.changes < CROWD_CHANGES else 0.2):
                    if self.changes >= CROWD_CHANGES:
                        self.read_slowly(4096)   # enough events sent: only read now
                        continue
                    sock.sendall(b"".join(
                        protocol.request_frame(n, "pause" if n % 2 == 0 else "resume",
                                               {"machinetype": "alpha"}) for n in range(100)))
                    replies = []
                    while len(replies) < 100:
                        replies += decoder.feed(sock.recv(65536))
                    assert all(reply["ok"] for reply in replies), replies[:2]
                    self.changes += 100
                    self.read_slowly(4096)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.failure = error

    def read_slowly(self, size):
        if self.slow_closed:
            return
        try:
            chunk = self.slow.recv(size)
        except TimeoutError:
            return
        if not chunk:
            self.slow_closed = True
        self.slow_frames += self.slow_decoder.feed(chunk)

    def stop(self):
        self.stopping.set()
        self.join(30)


def read_to_the_end(sock):
    sock.settimeout(10)
    decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
    frames = []
    while chunk := sock.recv(65536):
        frames += decoder.feed(chunk)
    sock.close()
    return frames


def check_watch_crowd(crowd, daemon):
    """Every stalled watcher was dropped, told why; the slow reader got whole frames."""
    deadline = time.monotonic() + 60
    while daemon.text().count("a watcher fell behind") < STALLED_WATCHERS:
        assert time.monotonic() < deadline, "a stalled watcher was never dropped"
        assert crowd.failure is None, repr(crowd.failure)
        time.sleep(0.1)
    crowd.stop()
    assert crowd.failure is None, repr(crowd.failure)
    for sock in crowd.stalled:
        # Read long after the drop: what the socket held, whole frames, then the end (the
        # last line saying why waits only LAST_WORDS_SECONDS for a reader to take it).
        first, *events = read_to_the_end(sock)
        assert first["result"] == {"watching": True} and events
        if events[-1].get("ok") is False:
            assert events.pop()["code"] == protocol.FELL_BEHIND
        assert all(set(frame) == {"v", "id", "event"} for frame in events)
    # The slow reader is kept or, if it fell behind too, told why; its frames are whole either way.
    assert crowd.slow_frames[0]["result"] == {"watching": True}
    if crowd.slow_closed and crowd.slow_frames[-1].get("ok") is False:
        assert crowd.slow_frames[-1]["code"] == protocol.FELL_BEHIND
    crowd.slow.close()


def test_oversize_replies_never_crash_or_stall_the_daemon(
        tmp_path, daemon_factory, socket_path):  # noqa: F811
    config = tmp_path / "vac.conf"
    config.write_text(oversize_config(uuid.uuid4().hex[:8]))
    daemon = daemon_factory(config, extra_args=("--socket", socket_path))
    daemon.wait_log("supervisor running", timeout=60)
    root_pid = daemon.proc.pid
    latencies = []
    answers = collections.Counter()

    @settings(max_examples=OVERSIZE_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(oversize_exchanges)
    def fuzz(data):
        replies = exchange(socket_path, data)
        for frame in replies:
            check_reply(frame, data)
            answers["ok" if frame.get("ok") else frame.get("code", "event")] += 1
        # A small reply keeps coming promptly meanwhile.
        with ControlClient(socket_path, timeout=5) as client:
            started = time.monotonic()
            assert len(client.request("slots")) == 2
            latencies.append(time.monotonic() - started)

    fuzz()
    assert answers[protocol.TOO_LARGE] >= OVERSIZE_EXAMPLES, answers
    assert max(latencies) < PROMPT, f"slots took up to {max(latencies):.3f} s"
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    with ControlClient(socket_path) as client:
        with pytest.raises(ControlError) as refused:
            client.request("status")
        assert refused.value.code == protocol.TOO_LARGE
        assert len(client.request("slots")) == 2
    assert "Traceback" not in daemon.text()
    print(f"{OVERSIZE_EXAMPLES} connections, answers {dict(answers)}; slots p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
