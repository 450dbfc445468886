"""A space of real vacds and a factory speaking Vac 03.01's exact answers, over loopback UDP.

Each vacd answers every query and polls the others; `vac space` and `vac
machines --space` show what they found; an abort another factory reports
holds a machinetype back here for its backoff_seconds; a client using Vac's
own query logic reads every vacd's answers.
"""

import json
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
from vac import cli
from vac_space_peers import Vac0301Factory, free_udp_port, vac_client

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
