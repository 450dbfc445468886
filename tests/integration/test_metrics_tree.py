"""A real root forks the metrics exporter and feeds it snapshots through MetricsFeed;
a scrape shows the root's own children and processes."""

import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = pathlib.Path(__file__).resolve().parents[2]
HOST = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from vac import logs
    from vac.supervisor.metrics_snapshot import MetricsFeed
    from vac.supervisor.root import Root
    from vac.vocabulary.child_states import Restart
    from vac.supervisor.tree import ChildSpec, PoolPolicy, SupervisorSpec
    from vac.workers import metrics
    from vac.workers.harness import WorkerLoop

    def idle(channel, spec):
        loop = WorkerLoop(channel, spec, role=spec["child_id"])
        loop.ready()
        loop.report("idle", slot=0, machine=None)
        while not loop.stopping:
            loop.wait(1.0)

    timings = {"heartbeat_interval": 0.5, "heartbeat_timeout": 5.0}
    tree = SupervisorSpec(id="vacd", children=(
        SupervisorSpec(id="services", children=(
            ChildSpec(id="metrics", target=metrics.run, args={"listen": "127.0.0.1:0"},
                      **timings),)),
        SupervisorSpec(id="slots", pool=PoolPolicy(), children=tuple(
            ChildSpec(id=f"slot-{n:02d}", target=idle, restart=Restart.TRANSIENT, role="slot",
                      **timings) for n in range(2)))))
    logs.configure("INFO", sys.argv[3])
    events = open(sys.argv[2], "a", buffering=1)
    root = Root(tree, observer=lambda event: events.write(json.dumps(event) + "\\n"))
    root.add_service(MetricsFeed(root, None, interval=0.5))
    sys.exit(root.run())
""")


def events_of(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def scrape(address):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def tree_host(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(HOST)
    events = tmp_path / "events.jsonl"
    log = tmp_path / "host.log"
    process = subprocess.Popen([sys.executable, str(script), str(REPO), str(events), str(log)],
                               start_new_session=True)
    yield process, events, log
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_the_root_feeds_its_metrics_child_and_a_scrape_shows_the_tree(tree_host):
    process, events, log = tree_host
    deadline = time.monotonic() + 20
    address = None
    while address is None and time.monotonic() < deadline:
        for event in events_of(events):
            if event["event"] == "state" and event["child"] == "metrics":
                address = event["detail"]["listen"]
        time.sleep(0.1)
    assert address, f"the exporter never said where it listens\n{log.read_text()}"

    # Wait for a scrape that shows both slot workers up, fed by the root.
    values = {}
    while time.monotonic() < deadline:
        status, text = scrape(address)
        assert status == 200
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}
        if values.get(("vac_slots", (("state", "idle"),))) == 2:
            break
        time.sleep(0.2)
    assert values.get(("vac_slots", (("state", "idle"),))) == 2, sorted(values)
    assert values[("vac_factory_state", (("state", "running"),))] == 1
    for child, role in (("slot-00", "slot"), ("slot-01", "slot"), ("metrics", "helper")):
        assert values[("vac_child_up", (("child", child), ("role", role)))] == 1
        assert values[("vac_process_resident_memory_bytes", (("child", child), ("role", role)))] > 0
    assert values[("vac_process_cpu_seconds_total", (("child", "vacd"), ("role", "supervisor")))] > 0

    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
