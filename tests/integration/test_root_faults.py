"""The root survives faults in its own services and output too large to send, as real processes.

A real Root (tests/integration/treehost.py, scenario "faults") whose factory,
one service and one observer each fail once; and a real vacd whose status
no longer fits in a frame, and whose watchers stop reading.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from treehost_client import TreeHost
from vac.control import protocol
from vac.control.client import ControlClient, ControlError
from vac.control.server import MAX_WATCH_BACKLOG_BYTES
from vac.ipc.framing import FrameDecoder

PROMPT = 1.0   # what a status round trip may take while others misbehave


@pytest.fixture
def host(tmp_path):
    hosts = []

    def start(scenario):
        host = TreeHost(scenario, tmp_path)
        hosts.append(host)
        return host

    yield start
    for started in hosts:
        started.cleanup()


def test_a_fault_in_a_service_costs_only_what_it_served_and_large_output_is_delivered(host):
    root = host("faults")
    # The talker's large message arrives whole, though the root never sends it anything more.
    received = root.wait_for(lambda: root.events("state", child="talker")
                             and [e for e in root.events("state", child="talker")
                                  if e["state"] == "received"], timeout=20, what="the large message")
    assert received[0]["detail"] == {"names": 10_000, "last": "09999." + "r" * 50}
    # The message the factory choked on was dropped; the one after it was handled.
    states = [e["state"] for e in root.events("state", child="talker")]
    assert states[:3] == ["bug", "fine", "received"]
    log = root.log_text()
    talker_pid = root.ready_pids()["talker"]
    for fault in (f"factory: fault while serving talker (pid {talker_pid}) message state: KeyError",
                  "factory: fault while serving its tick: ValueError",
                  "loop: fault while serving a pass of FaultyService: RuntimeError",
                  "observer: fault while serving"):
        assert fault in log, f"{fault!r} not logged:\n{log}"
    assert log.count("Traceback") == 4, "each fault logged with its traceback"
    # None of it was the talker's fault, and the root goes on.
    assert len(root.events("started", child="talker")) == 1
    assert root.proc.poll() is None
    assert root.terminate() == 0


# A real vacd.

def write_config(path, machinetypes, extra="", name_chars=50):
    """A factory with `machinetypes` machinetypes that never start (share 0)."""
    lines = ["[settings]", "vac_space = faults.vac.example",
             f"factory_name = faults-{uuid.uuid4().hex[:8]}.vac.example", "total_processors = 2",
             "heartbeat_timeout_seconds = 30", extra, ""]
    for n in range(machinetypes):
        lines += [f"[machinetype mt{n:05d}-" + "x" * name_chars + "]", "machine_model = docker",
                  "root_image = docker://vac-nonexistent:latest", "user_data = u.user_data",
                  "target_share = 0", ""]
    path.write_text("\n".join(lines))


@pytest.fixture
def socket_path():
    directory = tempfile.mkdtemp(prefix="vac-faults-", dir="/tmp")
    yield os.path.join(directory, "control.sock")
    shutil.rmtree(directory, ignore_errors=True)


def vac(socket_path, *argv):
    return subprocess.run([sys.executable, "-m", "vac.cli", "--socket", socket_path, *argv],
                          capture_output=True, text=True, timeout=60)


def test_a_status_too_large_for_a_frame_is_an_error_and_vacd_goes_on(
        tmp_path, daemon_factory, socket_path):  # noqa: F811
    # 4,000 machinetypes with long names: their status is over 6 MB, their metrics
    # snapshot far over a frame.
    config = tmp_path / "vac.conf"
    write_config(config, 4_000, extra=f"metrics_textfile = {tmp_path / 'vac.prom'}",
                 name_chars=1500)
    daemon = daemon_factory(config, extra_args=("--socket", socket_path))
    daemon.wait_log("supervisor running", timeout=60)
    root_pid = daemon.proc.pid

    for _ in range(2):   # again, as NRPE would ask
        status = vac(socket_path, "status")
        assert status.returncode == 1, status
        assert "reply too large: " in status.stderr and "use a narrower command" in status.stderr
        size = int(status.stderr.split("reply too large: ")[1].split(" bytes")[0])
        assert size > 6_000_000
    check = vac(socket_path, "check")
    assert check.returncode == 3 and "reply too large" in check.stdout, check

    # The same connection goes on: a smaller reply follows the refused one.
    with ControlClient(socket_path) as client:
        with pytest.raises(ControlError) as refused:
            client.request("status")
        assert refused.value.code == protocol.TOO_LARGE
        assert [s["slot"] for s in client.request("slots")] == [0, 1]
    # The metrics child never got a snapshot it could not be sent; it was not failed for it.
    daemon.wait_log("cannot encode a metrics_snapshot message for it")
    assert "treating it as failed" not in daemon.text()
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    assert "Traceback" not in daemon.text()


class Watcher:
    """A `watch` connection that reads when asked to, with a deadline."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.sendall(protocol.request_frame(1, "watch"))
        self.decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
        self.pending = []
        assert self.next() == {"v": 1, "id": 1, "ok": True, "result": {"watching": True}}

    def next(self):
        while not self.pending:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed the watch"
            self.pending += self.decoder.feed(chunk)
        return self.pending.pop(0)

    def commands(self, count):
        """The next `count` command events (other events pass by)."""
        seen = []
        while len(seen) < count:
            event = self.next()["event"]
            if event["event"] == "command":
                seen.append(event)
        return seen


class Prober:
    """One connection asking for status, timing each answer."""

    def __init__(self, path):
        self.client = ControlClient(path, timeout=5)
        self.latencies = []

    def ask(self):
        started = time.monotonic()
        assert self.client.request("status")["state"] == "running"
        self.latencies.append(time.monotonic() - started)


def pipelined_changes(path, count):
    """`count` pause/resume requests sent ahead in batches; each makes one watch event."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
    batch = 200
    try:
        for start in range(0, count, batch):
            sock.sendall(b"".join(
                protocol.request_frame(n, "pause" if n % 2 == 0 else "resume",
                                       {"machinetype": "mt00000-" + "x" * 50})
                for n in range(start, start + batch)))
            replies = []
            while len(replies) < batch:
                replies += decoder.feed(sock.recv(65536))
            assert all(reply["ok"] for reply in replies), replies[:3]
    finally:
        sock.close()


def test_a_watcher_that_stops_reading_is_dropped_told_why_and_status_still_answers(
        tmp_path, daemon_factory, socket_path):  # noqa: F811
    config = tmp_path / "vac.conf"
    write_config(config, 2)
    daemon = daemon_factory(config, extra_args=("--socket", socket_path))
    daemon.wait_log("supervisor running")
    root_pid = daemon.proc.pid
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(socket_path)
    stalled.sendall(protocol.request_frame(1, "watch"))
    # A watcher that reads, slowly but surely, is never dropped.
    reading = Watcher(socket_path)
    prober = Prober(socket_path)

    # Each change is one event of about 150 bytes: enough of them to fill the stalled
    # watcher's socket and then its backlog in the daemon.
    changes = 0
    while "a watcher fell behind" not in daemon.text():
        assert changes < 4 * MAX_WATCH_BACKLOG_BYTES // 100, "the stalled watcher was never dropped"
        pipelined_changes(socket_path, 1000)
        changes += 1000
        prober.ask()
        assert [e["command"] for e in reading.commands(1000)] == ["pause", "resume"] * 500
    assert max(prober.latencies) < PROMPT, f"status took up to {max(prober.latencies):.3f} s"

    # Reading at last, the stalled watcher gets whole events, then why it was dropped, then the end.
    decoder = FrameDecoder(protocol.MAX_REPLY_BYTES)
    frames = []
    stalled.settimeout(10)
    while True:
        chunk = stalled.recv(65536)
        if not chunk:
            break
        frames += decoder.feed(chunk)
    first, *streamed, last = frames
    assert first["result"] == {"watching": True}
    commands = [f["event"]["command"] for f in streamed if f["event"]["event"] == "command"]
    assert commands and commands == ["pause", "resume"] * (len(commands) // 2) + \
        ["pause"] * (len(commands) % 2), "whole events, in order, none lost before the drop"
    assert last["ok"] is False and last["code"] == protocol.FELL_BEHIND, last
    assert last["error"].startswith("watch dropped:")
    stalled.close()

    # The reading watcher was kept and still streams.
    with ControlClient(socket_path) as client:
        client.request("drain")
    assert [e["command"] for e in reading.commands(1)] == ["drain"]
    reading.sock.close()
    prober.ask()
    assert daemon.text().count("a watcher fell behind") == 1
    assert daemon.proc.poll() is None and daemon.proc.pid == root_pid
    assert "Traceback" not in daemon.text()
