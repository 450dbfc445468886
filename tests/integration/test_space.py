"""A space of real vacds and a factory speaking Vac 03.01's exact answers, over loopback UDP.

Each vacd answers every query and polls the others; `vac space` and `vac
machines --space` show what they found; an abort another factory reports
holds a machinetype back here for its backoff_seconds; a client using Vac's
own query logic reads every vacd's answers.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from vac import cli

CONFIG = """
[settings]
vac_space = {space}
factory_name = {name}
factories = . {factories}
vacquery_listen = 127.0.0.1:{port}
udp_timeout_seconds = 1
total_processors = 2
heartbeat_timeout_seconds = 20
draining = {draining}
state_dir = {state_dir}
hs06_per_processor = 10
# Placements must not wait for the load of whatever else the test host runs.
overload_per_processor = 1000
{extra}

[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = 10
backoff_seconds = {backoff}
fizzle_seconds = 5

[machinetype beta]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = beta.user_data
target_share = 1
"""


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vac_json(message):
    """JSON as Vac 03.01 writes it: Python 2's separators, every float as "%.2f"."""
    def value(v):
        return "%.2f" % v if isinstance(v, float) else json.dumps(v)
    return ("{" + ", ".join(f"{json.dumps(k)}: {value(v)}" for k, v in message.items()) + "}").encode()


class Vac0301Factory(threading.Thread):
    """Answers every query as a Vac 03.01 factory does, with its exact field set."""

    def __init__(self, space, name, machinetypes, abort=None):
        super().__init__(daemon=True)
        self.space, self.name, self.machinetypes, self.abort = space, name, machinetypes, abort
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stopping = threading.Event()

    def common(self, kind, query):
        return {"message_type": kind, "vac_version": "Vac 03.01 -", "daemon_version": "Vac 03.01 -",
                "vacquery_version": "VacQuery 01.03", "cookie": query["cookie"], "space": self.space,
                "factory": self.name, "time_sent": int(time.time()), "site": "vac-test.example.org"}

    def answers(self, query):
        kind = query.get("message_type") or {"machines": "machines_query", "factories": "factory_query"}.get(
            query.get("method"), "machinetypes_query")
        if kind == "machinetypes_query":
            for machinetype, processors in self.machinetypes.items():
                message, at, machine = self.abort[1:] if self.abort and self.abort[0] == machinetype else (
                    None, None, None)
                yield {**self.common("machinetype_status", query), "num_machinetypes": len(self.machinetypes),
                       "machinetype": machinetype, "running_hs06": 10.0 * processors,
                       "running_machines": int(processors), "running_cpus": float(processors),
                       "running_processors": float(processors), "num_before_fizzle": 0,
                       "shutdown_message": message if message else None, "shutdown_time": at,
                       "shutdown_machine": machine, "bytes_per_processor": 2147483648,
                       "max_wallclock_seconds": 172800, "max_processors": 1}
        elif kind == "machines_query":
            for i, (machinetype, processors) in enumerate(self.machinetypes.items()):
                yield {**self.common("machine_status", query), "num_machines": len(self.machinetypes),
                       "machine": f"{self.name.split('.')[0]}-{i:02d}.vac-test.example.org", "state": "Running",
                       "machine_model": "docker", "uuid": str(uuid.uuid4()), "created_time": int(time.time()) - 100,
                       "started_time": int(time.time()) - 90, "heartbeat_time": int(time.time()) - 5,
                       "num_cpus": float(processors), "num_processors": float(processors), "cpu_seconds": 80,
                       "cpu_percentage": 88.89, "hs06": 10.0 * processors, "machinetype": machinetype,
                       "shutdown_message": None, "shutdown_time": None}
        elif kind == "factory_query":
            used = float(sum(self.machinetypes.values()))
            yield {**self.common("factory_status", query), "running_cpus": used, "running_processors": used,
                   "running_machines": len(self.machinetypes), "running_hs06": 10.0 * used, "max_cpus": 8,
                   "max_processors": 8, "max_machines": 8, "max_hs06": 80.0, "total_cpus": 8, "total_machines": 8,
                   "total_hs06": 80.0, "root_disk_avail_kb": 1000, "root_disk_avail_inodes": 10,
                   "vac_disk_avail_kb": 1000, "daemon_disk_avail_kb": 1000, "vac_disk_avail_inodes": 10,
                   "daemon_disk_avail_inodes": 10, "load_average": 1.25, "kernel_version": "3.10.0",
                   "os_issue": "\\S", "boot_time": 1, "factory_heartbeat_time": int(time.time()),
                   "responder_heartbeat_time": int(time.time()), "swap_used_kb": 0, "swap_free_kb": 0,
                   "mem_used_kb": 1, "mem_total_kb": 2}

    def run(self):
        while not self.stopping.is_set():
            try:
                data, address = self.sock.recvfrom(10240)
            except socket.timeout:
                continue
            query = json.loads(data)
            if query.get("space") != self.space:
                continue
            self.queries.append(query)
            for answer in self.answers(query):
                self.sock.sendto(vac_json(answer), address)

    def stop(self):
        self.stopping.set()
        self.join(5)
        self.sock.close()


def vac_client(kind, port, factory, space, method):
    """Ask one factory as Vac's own client does (sendMachinetypesRequests and the like): the answers it keeps."""
    required = {  # what Vac's client checks is present before it keeps an answer
        "machinetype_status": ("num_machinetypes", "machinetype", "running_hs06", "num_before_fizzle",
                               "shutdown_message", "shutdown_time", "shutdown_machine"),
        "machine_status": ("num_machines", "machine", "state", "uuid", "created_time", "started_time",
                           "heartbeat_time", "cpu_seconds", "cpu_percentage", "hs06", "machinetype",
                           "shutdown_message", "shutdown_time"),
        "factory_status": ()}
    answer_type = {"machinetypes_query": "machinetype_status", "machines_query": "machine_status",
                   "factory_query": "factory_status"}[kind]
    count_key = {"machinetype_status": "num_machinetypes", "machine_status": "num_machines"}.get(answer_type)
    salt = os.urandom(32).hex()
    kept, expected = {}, 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0 / 5)
        for _ in range(6):
            if len(kept) >= expected:
                break
            query = {"vac_version": "Vac 03.01 -", "vacquery_version": "VacQuery 01.02", "space": space,
                     "cookie": hashlib.sha256((salt + factory).encode()).hexdigest(), "message_type": kind}
            if method:
                query["method"] = method
            sock.sendto(json.dumps(query).encode(), ("127.0.0.1", port))
            while True:
                try:
                    response = json.loads(sock.recvfrom(10240)[0])
                except socket.timeout:
                    break
                if response.get("message_type") == answer_type and response.get("space") == space \
                        and "factory" in response \
                        and response.get("cookie") == hashlib.sha256((salt + response["factory"]).encode()).hexdigest() \
                        and all(key in response for key in required[answer_type]):
                    expected = response[count_key] if count_key else 1
                    kept[response.get("machinetype") or response.get("machine") or "factory"] = response
    return kept


@pytest.fixture
def short_dir():
    """A short directory for control sockets (AF_UNIX paths are short)."""
    directory = tempfile.mkdtemp(prefix="vac-space-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start(daemon_factory, tmp_path, short_dir, *, space, name, port, factories, draining="yes",  # noqa: F811
          backoff=600, extra=""):
    config = tmp_path / f"{name}.conf"
    config.write_text(CONFIG.format(space=space, name=name, port=port, factories=" ".join(factories),
                                    draining=draining, state_dir=tmp_path / f"state-{name}", backoff=backoff,
                                    extra=extra))
    socket_path = os.path.join(short_dir, f"{name.split('.')[0]}.sock")
    daemon = daemon_factory(config, extra_args=("--socket", socket_path), log_name=f"{name}.log",
                            state_dir_option=False)
    daemon.socket = socket_path
    daemon.wait_log(f"vacquery: answering on 127.0.0.1:{port}")
    return daemon


def vac(daemon, *argv, timeout=60):
    """The `vac` command as an operator runs it."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    return subprocess.run([sys.executable, "-m", "vac.cli", "--socket", daemon.socket, *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=checkout)


def vac_json_output(daemon, *argv):
    done = vac(daemon, *argv, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_vacds_and_a_vac_0301_factory_see_the_whole_space(tmp_path, short_dir, daemon_factory):  # noqa: F811
    space = f"s{uuid.uuid4().hex[:8]}.vac-test.example.org"
    p1, p2 = free_udp_port(), free_udp_port()
    vac_factory = Vac0301Factory(space, "f3.vac-test.example.org", {"alpha": 4, "gamma": 2})
    vac_factory.start()
    try:
        f1 = start(daemon_factory, tmp_path, short_dir, space=space, name="f1.vac-test.example.org", port=p1,
                   factories=[f"localhost:{p2}", f"localhost:{vac_factory.port}"])
        f2 = start(daemon_factory, tmp_path, short_dir, space=space, name="f2.vac-test.example.org", port=p2,
                   factories=[f"localhost:{p1}", f"localhost:{vac_factory.port}"])

        # Every query type is answered by every vacd, and kept by Vac's own client logic, in both forms.
        for port, name in ((p1, "f1.vac-test.example.org"), (p2, "f2.vac-test.example.org")):
            for kind, method, count in (("machinetypes_query", None, 2), ("machines_query", "machines", 2),
                                        ("factory_query", "factories", 1)):
                kept = wait_for(lambda: (k := vac_client(kind, port, name, space, method)) and len(k) == count and k,
                                what=f"{name} answering {kind}")
                assert {answer["factory"] for answer in kept.values()} == {name}

        # vac space: each factory once, this one first, with its processors and HS06; nobody silent.
        view = wait_for(lambda: (v := vac_json_output(f1, "space", "--fresh"))["factories"][1:] and
                        len(v["factories"]) == 3 and v, what="f1 to see the space")
        rows = {row["factory"]: row for row in view["factories"]}
        assert view["factories"][0]["factory"] == "f1.vac-test.example.org" and view["silent"] == []
        assert rows["f1.vac-test.example.org"]["processors_total"] == 2
        assert rows[f"localhost:{p2}"]["processors_total"] == 2 and rows[f"localhost:{p2}"]["hs06"] == 0
        vac_row = rows[f"localhost:{vac_factory.port}"]
        assert (vac_row["processors_used"], vac_row["processors_total"], vac_row["hs06"], vac_row["machines"]) == (
            6, 8, 60.0, {"alpha": 4, "gamma": 2})
        text = vac(f1, "space")
        assert text.returncode == 0 and f"localhost:{vac_factory.port}" in text.stdout and "6/8" in text.stdout
        # What the space runs counts in the scores: the HS06 of f3's machinetypes.
        status = vac_json_output(f1, "status")
        assert {name: hs06 for name, hs06 in status["space"]["hs06"].items() if hs06} == {"alpha": 40.0,
                                                                                          "gamma": 20.0}

        # vac machines --space: every slot of both vacds and every machine of the Vac factory.
        machines = vac_json_output(f2, "machines", "--space")
        assert sorted(m["machine"] for m in machines["machines"]) == [
            "f1-00.vac-test.example.org", "f1-01.vac-test.example.org", "f2-00.vac-test.example.org",
            "f2-01.vac-test.example.org", "f3-00.vac-test.example.org", "f3-01.vac-test.example.org"]
        assert {m["state"] for m in machines["machines"] if m["factory"] != "f3.vac-test.example.org"} == {
            "Shut down"}
        assert vac(f2, "machines").stdout.count("f2-0") == 2

        # A factory that stops answering is named, with why.
        f2.stop()
        view = vac_json_output(f1, "space", "--fresh")
        assert [quiet["factory"] for quiet in view["silent"]] == [f"localhost:{p2}"]
        assert view["silent"][0]["reason"].startswith("no answer within") and view["silent"][0]["still_counted"]
        assert "not answering:" in vac(f1, "space").stdout
    finally:
        vac_factory.stop()


def test_an_abort_on_another_factory_holds_the_machinetype_back_here_for_its_backoff(
        tmp_path, short_dir, daemon_factory):  # noqa: F811
    space = f"s{uuid.uuid4().hex[:8]}.vac-test.example.org"
    aborted_at = int(time.time())
    vac_factory = Vac0301Factory(space, "f3.vac-test.example.org", {"alpha": 0, "beta": 0},
                                 abort=("alpha", "300 Nothing to do", aborted_at, "f3-05.vac-test.example.org"))
    vac_factory.start()
    try:
        f1 = start(daemon_factory, tmp_path, short_dir, space=space, name="f1.vac-test.example.org",
                   port=free_udp_port(), factories=[f"localhost:{vac_factory.port}"], backoff=25)
        vac_json_output(f1, "space", "--fresh")
        kinds = vac_json_output(f1, "machinetypes")
        assert kinds["alpha"]["backoff_until"] == pytest.approx(aborted_at + 25, abs=1)
        assert kinds["beta"]["backoff_until"] is None
        # alpha's share is ten times beta's, but only beta starts while alpha backs off.
        (tmp_path / "f1.vac-test.example.org.conf").write_text(
            (tmp_path / "f1.vac-test.example.org.conf").read_text().replace("draining = yes", "draining = no"))
        f1.wait_log("placing", count=2, timeout=20)
        placed = [line for line in f1.text().splitlines() if "placing" in line]
        assert all("placing beta machine" in line for line in placed), placed
        # Starts resume when backoff_seconds have passed (here the first fails at once: no such image).
        f1.wait_log("placing alpha machine", timeout=40)
        assert aborted_at + 25 <= time.time() < aborted_at + 25 + 15
    finally:
        vac_factory.stop()


def test_vacmon_hears_the_factory_and_each_machinetype_after_every_poll(tmp_path, short_dir,
                                                                        daemon_factory):  # noqa: F811
    space = f"s{uuid.uuid4().hex[:8]}.vac-test.example.org"
    vacmon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    vacmon.bind(("127.0.0.1", 0))
    vacmon.settimeout(20)
    config_extra = f"vacmon_hostport = 127.0.0.1:{vacmon.getsockname()[1]}\n"
    try:
        # A factory alone in its space reports all the same.
        f1 = start(daemon_factory, tmp_path, short_dir, space=space, name="f1.vac-test.example.org",
                   port=free_udp_port(), factories=[], extra=config_extra)
        vac_json_output(f1, "space", "--fresh")
        heard = []
        while len(heard) < 3:
            heard.append(json.loads(vacmon.recvfrom(10240)[0]))
        assert [m["message_type"] for m in heard] == ["factory_status", "machinetype_status", "machinetype_status"]
        assert {m["cookie"] for m in heard} == {"0"} and {m["factory"] for m in heard} == {"f1.vac-test.example.org"}
        assert sorted(m["machinetype"] for m in heard[1:]) == ["alpha", "beta"]
        assert heard[0]["max_processors"] == 2 and heard[0]["max_hs06"] == 20.0
        # Another poll, another report.
        vac_json_output(f1, "space", "--fresh")
        assert json.loads(vacmon.recvfrom(10240)[0])["message_type"] == "factory_status"
    finally:
        vacmon.close()
