"""The vacquery child's handling of answers: a bad one is dropped and logged at a bounded rate, the round stands."""

import json
import logging

import pytest

from vac.space import protocol
from vac.space.protocol import MachinetypeStatus
from vac.workers import vacquery

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


def test_queries_in_every_form_are_answered_within_the_caps(node):
    node.sock.close()
    node.sock = Recorder()
    node.local = statuses(vacquery.MAX_ANSWER_DATAGRAMS_PER_QUERY + 6)
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
