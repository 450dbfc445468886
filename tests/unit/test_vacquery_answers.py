"""The vacquery child's handling of answers: a bad one is dropped and logged at a bounded rate, the round stands."""

import json
import logging

import pytest

from vac.space import protocol
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus
from vac.workers import vacquery
from vac.workers.space_responder import LocalAnswers

SPACE = "vac01.example.org"


@pytest.fixture
def node():
    node = vacquery.SpaceQuery({"space": SPACE, "factory_name": "f1.example.org",
                                "factories": ["f2.example.org", "f3.example.org"]})
    yield node
    node.close()


def answer(query_cookie, machinetype, **changes):
    return json.dumps(dict({
        "message_type": "machinetype_status", "cookie": query_cookie, "space": SPACE, "factory": "f2.example.org",
        "num_machinetypes": 2, "machinetype": machinetype, "running_hs06": 80.0, "running_machines": 2,
        "running_cpus": 8.0, "running_processors": 8.0, "num_before_fizzle": 0}, **changes)).encode()


def test_a_bad_answer_is_dropped_and_logged_at_a_bounded_rate_and_the_round_stands(node, caplog):
    node._start_round(0.0)
    cookies = {peer["name"]: c for c, peer in node._round.items()}
    f2 = cookies["f2.example.org"]
    caplog.set_level(logging.WARNING, logger="vac.workers.vacquery")
    node._on_datagram(answer(f2, "alpha"), ("192.0.2.2", 995), 1.0)
    for i in range(5):
        node._on_datagram(answer(f2, "beta", running_processors=8.5), ("192.0.2.2", 995), 2.0 + i)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "192.0.2.2" in lines[0] and "running_processors" in lines[0]
    node._on_datagram(answer(f2, "beta", running_hs06="x"), ("192.0.2.2", 995),
                      2.0 + vacquery.BAD_ANSWER_LOG_SECONDS)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "running_hs06" in lines[1] and "4 more dropped" in lines[1]
    # Queries, and answers of another space, are no bad answers.
    node._on_datagram(protocol.machinetypes_query(SPACE, "x", "vac 1"), ("192.0.2.9", 995), 100.0)
    node._on_datagram(answer(f2, "beta", space="other.example.org"), ("192.0.2.9", 995), 200.0)
    assert len(caplog.records) == 2
    status = node._end_round(3.0)
    assert status.factories["f2.example.org"]["machinetypes"] == {
        "alpha": {"running_hs06": 80.0, "running_machines": 2, "running_processors": 8}}
    assert "f3.example.org" not in status.factories


class Recorder:
    def __init__(self):
        self.sent = []

    def sendto(self, data, address):
        self.sent.append((json.loads(data), address))

    def close(self):
        pass


def statuses(count):
    return [MachinetypeStatus(factory="f1.example.org", machinetype=f"type{i}", num_machinetypes=count,
                              running_hs06=0.0, running_machines=0, running_processors=0, num_before_fizzle=0)
            for i in range(count)]


def machines(count):
    return [MachineStatus(factory="f1.example.org", num_machines=count, machine=f"f1-{i:02d}.example.org",
                          state="Shut down") for i in range(count)]


def local(machinetypes=2, slots=2):
    return LocalAnswers(machinetypes=tuple(statuses(machinetypes)), machines=tuple(machines(slots)),
                        factory=FactoryStatus(factory="f1.example.org", running_processors=3, running_machines=2,
                                              running_hs06=30.0, max_processors=8, max_machines=8, max_hs06=80.0),
                        made_at=1_800_000_000.0)


def test_queries_in_every_form_are_answered_within_the_caps(node):
    node.sock.close()
    node.sock = Recorder()
    node.responder.local = local(machinetypes=vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY + 6)
    for i, query in enumerate([{"message_type": "machinetypes_query"}, {"method": "machinetypes"},
                               {"method": "machinetypes", "message_type": "machinetypes_query"}]):
        node.sock.sent = []
        node._on_datagram(json.dumps(dict(query, space=SPACE, cookie=f"c{i}")).encode(), (f"192.0.2.{i}", 995),
                          10.0 + i)
        # One query is answered with at most the cap, and the answer names only what it carries.
        assert len(node.sock.sent) == vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY, query
        assert {m["num_machinetypes"] for m, _ in node.sock.sent} == {vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY}
        assert {m["cookie"] for m, _ in node.sock.sent} == {f"c{i}"}
    # Many askers at once: no more than the overall rate is sent, and no answer is cut short.
    node.sock.sent = []
    for i in range(100):
        node._on_datagram(json.dumps({"method": "machinetypes", "space": SPACE, "cookie": "x"}).encode(),
                          (f"198.51.100.{i}", 995), 20.0)
    assert len(node.sock.sent) <= vacquery.ANSWER_DATAGRAMS_PER_SECOND
    assert len(node.sock.sent) % vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY == 0 and node.sock.sent
    # A second later the bucket has refilled.
    before = len(node.sock.sent)
    node._on_datagram(json.dumps({"method": "machinetypes", "space": SPACE, "cookie": "y"}).encode(),
                      ("203.0.113.1", 995), 21.0)
    assert len(node.sock.sent) == before + vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY


def test_machines_and_factory_queries_in_every_form_are_answered_with_every_field(node):
    node.sock.close()
    node.sock = Recorder()
    node.responder.local = local(slots=3)
    node.responder.host_figures = lambda: {"load_average": 1.5, "kernel_version": "6.1.0", "mem_total_kb": 1000,
                                           "daemon_disk_avail_kb": 5}
    forms = [({"message_type": "machines_query"}, "machine_status", 3),
             ({"method": "machines"}, "machine_status", 3),
             ({"message_type": "machines_query", "method": "machines"}, "machine_status", 3),
             ({"message_type": "factory_query"}, "factory_status", 1), ({"method": "factories"}, "factory_status", 1),
             ({"message_type": "factory_query", "method": "factories"}, "factory_status", 1)]
    for i, (form, kind, count) in enumerate(forms):
        node.sock.sent = []
        node._on_datagram(json.dumps(dict(form, space=SPACE, cookie=f"c{i}")).encode(), (f"192.0.2.{i}", 995), 10.0)
        assert [m["message_type"] for m, _ in node.sock.sent] == [kind] * count, form
        assert {m["cookie"] for m, _ in node.sock.sent} == {f"c{i}"}
    node.sock.sent = []
    node._on_datagram(json.dumps({"method": "machines", "space": SPACE, "cookie": "m"}).encode(),
                      ("192.0.2.50", 995), 11.0)
    machine = node.sock.sent[0][0]
    assert machine["num_machines"] == 3 and machine["machine"] == "f1-00.example.org"
    assert machine["state"] == "Shut down" and machine["num_cpus"] == machine["num_processors"]
    node.sock.sent = []
    node._on_datagram(json.dumps({"method": "factories", "space": SPACE, "cookie": "f"}).encode(),
                      ("192.0.2.51", 995), 11.0)
    factory = node.sock.sent[0][0]
    assert (factory["running_processors"], factory["running_cpus"], factory["max_processors"],
            factory["total_cpus"], factory["max_hs06"], factory["total_hs06"]) == (3, 3, 8, 8, 80.0, 80.0)
    assert (factory["load_average"], factory["kernel_version"], factory["mem_total_kb"]) == (1.5, "6.1.0", 1000)
    assert factory["daemon_disk_avail_kb"] == factory["vac_disk_avail_kb"] == 5
    assert factory["factory_heartbeat_time"] == 1_800_000_000 and factory["swap_used_kb"] == 0


def test_a_factory_with_more_slots_than_the_cap_answers_with_the_first_and_says_so(node):
    node.sock.close()
    node.sock = Recorder()
    # The root sends at most the cap (LocalStatus refuses more), numbering them so.
    node.responder.local = local(slots=vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY)
    node._on_datagram(json.dumps({"message_type": "machines_query", "space": SPACE, "cookie": "c"}).encode(),
                      ("192.0.2.1", 995), 10.0)
    assert len(node.sock.sent) == vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY
    assert {m["num_machines"] for m, _ in node.sock.sent} == {vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY}


def test_nothing_is_answered_before_the_root_has_said_what_runs_here(node):
    node.sock.close()
    node.sock = Recorder()
    for kind in ("machinetypes_query", "machines_query", "factory_query"):
        node._on_datagram(json.dumps({"message_type": kind, "space": SPACE, "cookie": "c"}).encode(),
                          ("192.0.2.1", 995), 10.0)
    assert node.sock.sent == []
