"""VacQuery between a real vacd and a factory speaking Vac's datagrams, over real UDP."""

import json
import socket
import threading
import time

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from vac.control.client import ControlClient
from vac_space_peers import free_udp_port

SPACE = "vq.vac-test.example.org"
CONFIG = """
[settings]
vac_space = {space}
factory_name = f1.vac-test.example.org
factories = . localhost:{peer_port}
vacquery_listen = 127.0.0.1:{port}
udp_timeout_seconds = 1
total_processors = 2
heartbeat_timeout_seconds = 20
draining = {draining}
# Placements must not wait for the load of whatever else the test host runs.
overload_per_processor = 1000

[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = 1

[machinetype beta]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = beta.user_data
target_share = 1
"""


class VacPeer(threading.Thread):
    """Answers machinetypes_query as a Vac factory does: one machinetype_status per machinetype."""

    def __init__(self, running_hs06, vac_0301=False):
        super().__init__(daemon=True)
        # Vac 03.01 sums allocated_cpu as floats and adds its optional figures.
        self.vac_0301 = vac_0301
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running_hs06 = running_hs06
        self.queries = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                data, address = self.sock.recvfrom(10240)
            except socket.timeout:
                continue
            query = json.loads(data)
            self.queries.append(query)
            for name, hs06 in self.running_hs06.items():
                processors = float(hs06 // 10) if self.vac_0301 else int(hs06 // 10)
                extra = {"bytes_per_processor": 2147483648, "max_wallclock_seconds": 172800,
                         "fqan": "/vac-test/Role=pilot"} if self.vac_0301 else {}
                self.sock.sendto(json.dumps(extra | {
                    "message_type": "machinetype_status", "vac_version": "Vac 3.0.0 -",
                    "daemon_version": "Vac 3.0.0 -", "vacquery_version": "VacQuery 01.03",
                    "cookie": query["cookie"], "space": query["space"], "site": "vac-test.example.org",
                    "factory": "f2.vac-test.localhost", "num_machinetypes": len(self.running_hs06),
                    "time_sent": int(time.time()), "machinetype": name, "running_hs06": hs06,
                    "running_machines": int(hs06 // 10), "running_cpus": processors,
                    "running_processors": processors, "num_before_fizzle": 0,
                    "shutdown_message": None, "shutdown_time": None, "shutdown_machine": None}).encode(),
                    address)

    def stop(self):
        self.stopping.set()
        self.join(5)
        self.sock.close()


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_vacd_answers_vac_and_counts_what_the_space_runs(tmp_path, daemon_factory):  # noqa: F811
    peer = VacPeer({"alpha": 120.0, "gamma": 30.0})
    peer.start()
    port = free_udp_port()
    config = tmp_path / "vac.conf"

    def write(draining):
        config.write_text(CONFIG.format(space=SPACE, peer_port=peer.port, port=port, draining=draining))

    write("yes")
    daemon = daemon_factory(config)
    try:
        daemon.wait_log("vacquery: answering on 127.0.0.1")

        # As a Vac factory asks: one answer per machinetype, with Vac's fields.
        # Until the root has told vacquery what this factory runs it answers
        # nothing, as a Vac factory that has not yet looked: ask again, as Vac does.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
            asker.settimeout(1)
            query = json.dumps({"message_type": "machinetypes_query", "vac_version": "Vac 3.0.0 -",
                                "vacquery_version": "VacQuery 01.03", "space": SPACE,
                                "cookie": "c0ffee"}).encode()
            answers, deadline = [], time.monotonic() + 15
            while len(answers) < 2:
                assert time.monotonic() < deadline, "vacd never answered the query"
                if not answers:
                    asker.sendto(query, ("127.0.0.1", port))
                try:
                    answers.append(json.loads(asker.recvfrom(10240)[0]))
                except TimeoutError:
                    answers = []
        assert sorted(a["machinetype"] for a in answers) == ["alpha", "beta"]
        for answer in answers:
            assert answer["message_type"] == "machinetype_status" and answer["cookie"] == "c0ffee"
            assert answer["space"] == SPACE and answer["factory"] == "f1.vac-test.example.org"
            assert answer["num_machinetypes"] == 2 and answer["running_hs06"] == 0
            assert answer["site"] == "vac-test.example.org"

        # vacd asked the peer, and what the peer runs is in its status.
        client = ControlClient(str(tmp_path / "control.sock"), timeout=5)
        space = wait_for(lambda: client.request("status")["space"]["answers"] and client.request("status")["space"],
                         what="the peer's answer")
        assert space["polled"] == [f"localhost:{peer.port}"]
        assert space["hs06"] == {"alpha": 120.0, "gamma": 30.0}
        assert peer.queries[0]["message_type"] == "machinetypes_query" and peer.queries[0]["space"] == SPACE
        client.close()

        # Shares 1:1, but the space already runs 120 HS06 of alpha: both slots get beta.
        write("no")
        daemon.wait_log("placing", count=2)
        placed = [line for line in daemon.text().splitlines() if "placing" in line][:2]
        assert all("placing beta machine" in line for line in placed), placed
    finally:
        peer.stop()


def test_a_vac_0301_peer_answering_with_float_counts_is_counted(tmp_path, daemon_factory):  # noqa: F811
    peer = VacPeer({"alpha": 80.0, "beta": 20.0}, vac_0301=True)
    peer.start()
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(space=SPACE, peer_port=peer.port, port=free_udp_port(), draining="yes"))
    daemon = daemon_factory(config)
    try:
        daemon.wait_log("vacquery: answering on 127.0.0.1")
        client = ControlClient(str(tmp_path / "control.sock"), timeout=5)
        space = wait_for(lambda: client.request("status")["space"]["answers"] and client.request("status")["space"],
                         what="the peer's answer")
        assert space["hs06"] == {"alpha": 80.0, "beta": 20.0}
        client.close()
    finally:
        peer.stop()


# Every field a machinetype_status carries, and its type (INTERFACES.md section 9).
MACHINETYPE_STATUS_FIELDS = {
    "message_type": str, "vac_version": str, "daemon_version": str, "vacquery_version": str, "cookie": str,
    "space": str, "factory": str, "time_sent": int, "site": str, "num_machinetypes": int, "machinetype": str,
    "bytes_per_processor": int, "running_hs06": (int, float), "running_machines": int, "running_cpus": int,
    "running_processors": int, "num_before_fizzle": int, "shutdown_message": (str, type(None)),
    "shutdown_time": (int, type(None)), "shutdown_machine": (str, type(None)), "max_wallclock_seconds": int,
    "max_processors": int}


def ask(port, query, count, timeout=15.0):
    """Send `query` until `count` answers come back (vacd answers nothing until the root has told it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        asker.settimeout(1)
        answers, deadline = [], time.monotonic() + timeout
        while len(answers) < count:
            assert time.monotonic() < deadline, f"vacd never answered {query}"
            if not answers:
                asker.sendto(json.dumps(query).encode(), ("127.0.0.1", port))
            try:
                answers.append(json.loads(asker.recvfrom(10240)[0]))
            except TimeoutError:
                answers = []
        return answers


def test_vacd_answers_machinetypes_queries_in_every_form_with_every_field(tmp_path, daemon_factory):  # noqa: F811
    port = free_udp_port()
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(space=SPACE, peer_port=free_udp_port(), port=port, draining="yes"))
    daemon = daemon_factory(config)
    daemon.wait_log("vacquery: answering on 127.0.0.1")
    for i, form in enumerate([{"message_type": "machinetypes_query"}, {"method": "machinetypes"},
                              {"method": "machinetypes", "message_type": "machinetypes_query"}]):
        query = dict(form, vac_version="Vac 03.01 -", vacquery_version="VacQuery 01.03", space=SPACE,
                     cookie=f"c0ffee{i}")
        answers = ask(port, query, 2)
        assert sorted(a["machinetype"] for a in answers) == ["alpha", "beta"], form
        for answer in answers:
            assert set(answer) == set(MACHINETYPE_STATUS_FIELDS), form
            for field, kind in MACHINETYPE_STATUS_FIELDS.items():
                assert isinstance(answer[field], kind) and not isinstance(answer[field], bool), (form, field)
            assert answer["message_type"] == "machinetype_status" and answer["cookie"] == f"c0ffee{i}"
            assert answer["num_machinetypes"] == 2 and answer["bytes_per_processor"] == 2048 * 2**20
            assert answer["max_processors"] == 1 and answer["running_processors"] == answer["running_cpus"] == 0


# Every field of machine_status and factory_status (INTERFACES.md section 9), and the type each has.
MACHINE_STATUS_FIELDS = {
    "message_type": str, "vac_version": str, "daemon_version": str, "vacquery_version": str, "cookie": str,
    "space": str, "factory": str, "time_sent": int, "site": str, "num_machines": int, "machine": str, "state": str,
    "machine_model": (str, type(None)), "uuid": (str, type(None)), "created_time": (int, type(None)),
    "started_time": (int, type(None)), "heartbeat_time": (int, type(None)), "num_cpus": (int, type(None)),
    "num_processors": (int, type(None)), "cpu_seconds": (int, float), "cpu_percentage": (int, float),
    "hs06": (int, float, type(None)), "machinetype": (str, type(None)), "shutdown_message": (str, type(None)),
    "shutdown_time": (int, type(None))}
FACTORY_STATUS_FIELDS = {
    "message_type": str, "vac_version": str, "daemon_version": str, "vacquery_version": str, "cookie": str,
    "space": str, "factory": str, "time_sent": int, "site": str,
    **{name: int for name in (
        "running_cpus", "running_processors", "running_machines", "max_cpus", "max_processors", "max_machines",
        "total_cpus", "total_machines", "root_disk_avail_kb", "root_disk_avail_inodes", "vac_disk_avail_kb",
        "vac_disk_avail_inodes", "daemon_disk_avail_kb", "daemon_disk_avail_inodes", "boot_time",
        "factory_heartbeat_time", "responder_heartbeat_time", "swap_used_kb", "swap_free_kb", "mem_used_kb",
        "mem_total_kb")},
    "running_hs06": (int, float), "max_hs06": (int, float), "total_hs06": (int, float),
    "load_average": (int, float), "kernel_version": str, "os_issue": str}


def test_vacd_answers_machines_and_factory_queries_in_every_form_with_every_field(tmp_path, daemon_factory):  # noqa: F811
    port = free_udp_port()
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(space=SPACE, peer_port=free_udp_port(), port=port, draining="yes"))
    daemon = daemon_factory(config)
    daemon.wait_log("vacquery: answering on 127.0.0.1")
    forms = [("machines", {"message_type": "machines_query"}), ("machines", {"method": "machines"}),
             ("machines", {"method": "machines", "message_type": "machines_query"}),
             ("factories", {"message_type": "factory_query"}), ("factories", {"method": "factories"}),
             ("factories", {"method": "factories", "message_type": "factory_query"})]
    for i, (kind, form) in enumerate(forms):
        query = dict(form, vac_version="Vac 03.01 -", vacquery_version="VacQuery 01.03", space=SPACE,
                     cookie=f"c0ffee{i}")
        fields = MACHINE_STATUS_FIELDS if kind == "machines" else FACTORY_STATUS_FIELDS
        answers = ask(port, query, 2 if kind == "machines" else 1)
        for answer in answers:
            assert set(answer) == set(fields), form
            for field, type_ in fields.items():
                assert isinstance(answer[field], type_) and not isinstance(answer[field], bool), (form, field)
            assert answer["cookie"] == f"c0ffee{i}" and answer["factory"] == "f1.vac-test.example.org"
        if kind == "machines":
            assert sorted(a["machine"] for a in answers) == ["f1-00.vac-test.example.org",
                                                             "f1-01.vac-test.example.org"]
            assert {(a["state"], a["num_machines"]) for a in answers} == {("Shut down", 2)}
        else:
            (factory,) = answers
            assert (factory["max_processors"], factory["running_processors"], factory["max_hs06"]) == (2, 0, 2.0)
            assert factory["mem_total_kb"] > 0 and factory["daemon_disk_avail_kb"] > 0
            assert abs(factory["factory_heartbeat_time"] - time.time()) < 60
