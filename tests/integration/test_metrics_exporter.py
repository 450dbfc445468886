"""The metrics exporter as a real forked child: the test plays the root, scrapes over
HTTP on 127.0.0.1, reads the textfile, and has promtool check what it gets."""

import http.client
import logging
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vac import logs
from vac.config.load import load_configuration
from vac.ipc import messages
from vac.ipc.channel import RootChannel, WorkerChannel, channel_pair
from vac.supervisor import notify
from vac.supervisor.build import TreeSettings, build_tree
from vac.supervisor.factory import Factory
from vac.supervisor.metrics_snapshot import build_snapshot
from vac.supervisor.root import Root
from vac.vocabulary.child_states import EXIT_BAD_SPEC, FactoryState
from vac.supervisor.tree import ChildSpec, SupervisorSpec
from vac.workers import metrics

HEARTBEAT_INTERVAL = 0.2
CONFIG = """
[settings]
vac_space = space.example.com
total_processors = 2

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 1
max_wallclock_seconds = 3600
"""


def promtool_or_skip():
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true" or os.environ.get("VAC_REQUIRE_DOCKER"):
            pytest.fail("promtool (Debian package prometheus) is required under CI; "
                        "scripts/bootstrap installs it", pytrace=False)
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


def promtool_check(text):
    result = subprocess.run([promtool_or_skip(), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


class Exporter:
    """One forked metrics exporter and what it has sent; the test is its root."""

    def __init__(self, tmp_path, **options):
        self.log_path = tmp_path / "metrics.log"
        self.spec = dict(options, child_id="metrics", heartbeat_interval=HEARTBEAT_INTERVAL,
                         root_pid=os.getpid())
        self.received = []
        self.exit_status = None
        root_sock, worker_sock = channel_pair()
        self.pid = os.fork()
        if self.pid == 0:
            root_sock.close()
            _child(worker_sock, self.spec, self.log_path)
        worker_sock.close()
        self.channel = RootChannel(root_sock)

    def read(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.channel.failure is None:
            ready, _, _ = select.select([self.channel], [], [], deadline - time.monotonic())
            if ready:
                self.received.extend(self.channel.receive())

    def wait_for(self, predicate, what, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.received:
                if predicate(msg):
                    return msg
            if self.channel.failure is not None:
                break
            self.read(0.1)
        raise AssertionError(f"no {what} within {timeout} s; got {self.received}\n{self.log()}")

    def report(self, **detail):
        def matches(msg):
            return (isinstance(msg, messages.StateReport)
                    and all(msg.detail.get(k) == v for k, v in detail.items()))
        return self.wait_for(matches, f"report with {detail}")

    def heartbeats(self):
        return sum(isinstance(msg, messages.Heartbeat) for msg in self.received)

    def send(self, msg, timeout=10):
        """Send `msg` and wait until the socket has taken all of it."""
        self.channel.send(msg)
        deadline = time.monotonic() + timeout
        while not self.channel.flush():
            assert time.monotonic() < deadline, f"the exporter did not read for {timeout} s"
            select.select([], [self.channel], [], 0.1)

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else "(no log)"

    def reap(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = status
                self.channel.close()
                return status
            time.sleep(0.02)
        raise AssertionError(f"exporter {self.pid} did not exit within {timeout} s\n{self.log()}")

    def stop(self):
        if self.exit_status is None:
            os.kill(self.pid, signal.SIGTERM)
            return self.reap()
        return self.exit_status

    def kill(self):
        if self.exit_status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.reap()


def _child(sock, spec, log_path):
    status = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        logs.configure("DEBUG", str(log_path))
        metrics.run(WorkerChannel(sock), spec)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        logging.getLogger(__name__).exception("metrics exporter crashed")
        status = 1
    finally:
        logging.shutdown()
        os._exit(status)


@pytest.fixture
def exporters(tmp_path):
    started = []

    def start(**options):
        exporter = Exporter(tmp_path, **options)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.kill()


def factory_state(tmp_path, exporter_pid):
    """A real root and factory, the exporter standing as their metrics child, one machine running."""
    path = tmp_path / "vac.conf"
    path.write_text(CONFIG)
    factory = Factory(load_configuration([str(path)]), factory_name="f1.example.com",
                      rng=random.Random(1), load_average=lambda: 0.0)
    tree = build_tree(TreeSettings(slots=2))
    metrics_spec = ChildSpec(id="metrics", target=metrics.run)
    services = tree.children[0]
    tree = SupervisorSpec(id=tree.id, intensity=tree.intensity, children=(
        SupervisorSpec(id=services.id, intensity=services.intensity,
                       children=services.children + (metrics_spec,)),
        tree.children[1]))
    root = Root(tree, app=factory, notifier=notify.Notifier(environ={}))
    now = time.monotonic()
    root.tree.start(now)
    root.tree.started("metrics", exporter_pid)
    root.tree.ready("metrics", now)
    root.state = FactoryState.RUNNING
    machine = {"uuid": "m1", "machinetype": "work", "processors": 1, "started_at": time.time(),
               "shutdown_at": int(time.time()) + 3600, "superslot": 0, "container_id": "c"}
    for child, state, held in (("slot-00", "running", machine), ("slot-01", "idle", None)):
        report = messages.StateReport(child_id=child, state=state,
                                      detail={"slot": int(child[-1]), "machine": held})
        root.reports[child] = report
        factory.on_message(child, report)
    factory.on_message("slot-01", messages.MachineFinished(
        uuid="m0", machinetype="work", started_at=time.time() - 3600, ended_at=time.time(),
        code=700, text="Exceeded max_wallclock_seconds", processors=1, cpu_seconds=3000.0))
    return build_snapshot(root, factory, time.time())


def scrape(address, path="/metrics", method="GET", timeout=5):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        connection.close()


def values_of(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scrape_shows_the_snapshot_and_the_processes_and_passes_promtool(tmp_path, exporters):
    exporter = exporters(listen="127.0.0.1:0")
    served = exporter.report(error=None)
    address = served.detail["listen"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    exporter.send(messages.MetricsSnapshot(snapshot=factory_state(tmp_path, exporter.pid)))
    exporter.read(0.3)

    status, content_type, text = scrape(address)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    values = values_of(text)
    assert values[("vac_slots", (("state", "running"),))] == 1
    assert values[("vac_slots", (("state", "idle"),))] == 1
    assert values[("vac_machines_started_total", (("machinetype", "work"),))] == 1
    assert values[("vac_machines_finished_total", (("code", "700"), ("machinetype", "work")))] == 1
    assert values[("vac_wall_limit_kills_total", (("machinetype", "work"),))] == 1
    assert values[("vac_machinetype_backoff", (("machinetype", "work"),))] == 1
    assert values[("vac_child_up", (("child", "metrics"), ("role", "helper")))] == 1
    # The tree's own cost: the root (this test process) and the exporter itself.
    assert values[("vac_process_cpu_seconds_total", (("child", "vacd"), ("role", "supervisor")))] > 0
    assert values[("vac_process_unique_memory_bytes", (("child", "metrics"), ("role", "helper")))] > 1e6
    assert values[("vac_process_resident_memory_bytes", (("child", "metrics"), ("role", "helper")))] \
        >= values[("vac_process_unique_memory_bytes", (("child", "metrics"), ("role", "helper")))]
    # Children without a process (not started in this scripted tree) are not measured.
    assert not any(name == "vac_process_cpu_seconds_total" and dict(labels)["child"] == "reaper"
                   for name, labels in values)
    promtool_check(text)

    assert scrape(address, "/")[0] == 404
    assert scrape(address, method="POST")[0] == 405
    status, _, body = scrape(address, method="HEAD")
    assert status == 200 and body == ""
    assert os.WEXITSTATUS(exporter.stop()) == 0


def test_slow_and_silent_scrapers_stall_neither_heartbeats_nor_other_scrapes(tmp_path, exporters):
    exporter = exporters(listen="127.0.0.1:0", client_timeout_seconds=2)
    address = exporter.report(error=None).detail["listen"]
    host, port = address.rsplit(":", 1)
    snapshot = factory_state(tmp_path, exporter.pid)
    # Thousands of children make an answer larger than the socket buffers hold.
    snapshot["children"] += [{"child": f"slot-{n:04d}", "role": "slot", "state": "running",
                              "pid": None, "restarts": 0, "failed_starts": 0}
                             for n in range(5000)]
    exporter.send(messages.MetricsSnapshot(snapshot=snapshot))
    # One scraper asks and then never reads its answer; more connect and never
    # ask than the exporter takes at once.
    greedy = socket.socket()
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.connect((host, int(port)))
    greedy.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    silent = [socket.create_connection((host, int(port)), timeout=5) for _ in range(12)]
    try:
        before = exporter.heartbeats()
        # About 15 heartbeats are due in 3 s; a stalled exporter sends none. The
        # margin is for a loaded machine, not for the exporter.
        exporter.read(3.0)
        assert exporter.heartbeats() - before >= 5, "heartbeats every 0.2 s go on"
        # The silent ones hold every connection the exporter takes until their
        # deadline; then the queued scrape is answered.
        started = time.monotonic()
        status, _, text = scrape(address, timeout=10)
        assert status == 200 and 'vac_child_up{child="slot-4999",role="slot"} 1.0' in text
        assert time.monotonic() - started < 5
        assert len(text) > 500_000
    finally:
        for sock in silent + [greedy]:
            sock.close()
    assert os.WEXITSTATUS(exporter.stop()) == 0


def raw_exchange(address, data, timeout=5):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_garbage_and_oversize_requests_get_errors_and_the_exporter_goes_on(tmp_path, exporters):
    exporter = exporters(listen="127.0.0.1:0")
    address = exporter.report(error=None).detail["listen"]
    assert raw_exchange(address, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000).startswith(
        b"HTTP/1.1 431 ")
    assert raw_exchange(address, b"GET /metrics?name=x HTTP/1.0\n\n").startswith(b"HTTP/1.1 200 ")
    assert scrape(address)[0] == 200
    assert exporter.exit_status is None
    assert os.WEXITSTATUS(exporter.stop()) == 0


def test_the_textfile_is_replaced_atomically_and_passes_promtool(tmp_path, exporters):
    directory = tmp_path / "textfiles"
    directory.mkdir()
    textfile = directory / "vac.prom"
    exporter = exporters(textfile=str(textfile), interval_seconds=0.3)
    exporter.report(error=None, textfile=str(textfile))
    exporter.send(messages.MetricsSnapshot(snapshot=factory_state(tmp_path, exporter.pid)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        exporter.read(0.1)
        if textfile.exists() and "vac_slots" in textfile.read_text():
            break
    text = textfile.read_text()
    assert values_of(text)[("vac_slots", (("state", "running"),))] == 1
    promtool_check(text)
    first = textfile.stat().st_ino
    exporter.read(0.8)
    assert textfile.stat().st_ino != first, "rewritten by rename, not in place"
    assert sorted(p.name for p in directory.iterdir()) == ["vac.prom"], "no temporary files left"
    assert os.WEXITSTATUS(exporter.stop()) == 0


def test_an_unwritable_textfile_is_reported_and_the_exporter_stays(tmp_path, exporters):
    textfile = tmp_path / "missing-dir" / "vac.prom"
    exporter = exporters(textfile=str(textfile), interval_seconds=0.3)
    failing = exporter.wait_for(lambda m: isinstance(m, messages.StateReport)
                                and m.state == "failing", "a failing report")
    assert "missing-dir/vac.prom" in failing.detail["error"]
    (tmp_path / "missing-dir").mkdir()
    after = exporter.received.index(failing)
    exporter.wait_for(lambda m: isinstance(m, messages.StateReport) and m.state == "exporting"
                      and exporter.received.index(m) > after, "recovery")
    assert textfile.exists()
    assert os.WEXITSTATUS(exporter.stop()) == 0


def test_a_port_in_use_is_reported_and_retried_without_exiting(tmp_path, exporters):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        exporter = exporters(listen=f"127.0.0.1:{port}")
        failing = exporter.wait_for(lambda m: isinstance(m, messages.StateReport)
                                    and m.state == "failing", "a failing report")
        assert f"cannot listen on 127.0.0.1:{port}" in failing.detail["error"]
        exporter.read(0.6)
        assert exporter.exit_status is None and exporter.heartbeats() >= 2
    finally:
        holder.close()
    assert os.WEXITSTATUS(exporter.stop()) == 0


@pytest.mark.parametrize("options, why", [
    ({"listen": "0.0.0.0:9712"}, "0.0.0.0 is not a loopback address"),
    ({"listen": "192.0.2.7:9712"}, "192.0.2.7 is not a loopback address"),
    ({"listen": "localhost:9712"}, "is not an IP address"),
    ({}, "neither listen nor textfile is set"),
    ({"textfile": "relative.prom"}, "must be an absolute path"),
])
def test_a_bad_spec_exits_with_the_bad_spec_code_and_says_why(tmp_path, exporters, options, why):
    exporter = exporters(**options)
    status = exporter.reap()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BAD_SPEC
    assert why in exporter.log()
