"""The vacquery child's handling of answers: a bad one is dropped and logged at a bounded rate, the round stands."""

import json
import logging

import pytest

from vac.ipc import messages
from vac.ipc.framing import Unencodable
from vac.space import protocol
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus
from vac.space import report
from vac.workers import space_poller, vacquery
from vac.workers.space_responder import LocalAnswers

SPACE = "vac01.example.org"


@pytest.fixture
def node():
    node = vacquery.SpaceQuery({"space": SPACE, "factory_name": "f1.example.org",
                                "factories": ["f2.example.org", "f3.example.org"]}, resolve_names=False)
    yield node
    node.close()


def answer(query_cookie, machinetype, **changes):
    return json.dumps(dict({
        "message_type": "machinetype_status", "cookie": query_cookie, "space": SPACE, "factory": "f2.example.org",
        "num_machinetypes": 2, "machinetype": machinetype, "running_hs06": 80.0, "running_machines": 2,
        "running_cpus": 8.0, "running_processors": 8.0, "num_before_fizzle": 0}, **changes)).encode()


class Recorder:
    def __init__(self):
        self.sent = []

    def sendto(self, data, address):
        self.sent.append((json.loads(data), address))

    def close(self):
        pass


ADDRESSES = {"f2.example.org": ("192.0.2.2", 995), "f3.example.org": ("192.0.2.3", 995)}


def start_poll(node):
    """A poll started with both factories resolved; their cookies by name."""
    node.sock.close()
    node.sock = Recorder()
    node.addresses = dict(ADDRESSES)
    now = node.poller.next_wake(0.0)
    assert node.tick(now) is None and node.poller.poll is not None
    return now, {name: asked.cookie for name, asked in node.poller.poll.by_name().items()}


def finish(node, now):
    while (status := node.tick(now)) is None:
        now = node.poller.next_wake(now)
    return status


def test_a_bad_answer_is_dropped_and_logged_at_a_bounded_rate_and_the_poll_stands(node, caplog):
    t0, cookies = start_poll(node)
    f2 = cookies["f2.example.org"]
    caplog.set_level(logging.WARNING, logger="vac.workers.vacquery")
    node._on_datagram(answer(f2, "alpha"), ("192.0.2.2", 995), t0 + 1.0)
    for i in range(5):
        node._on_datagram(answer(f2, "beta", running_processors=8.5), ("192.0.2.2", 995), t0 + 1.0 + i / 10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "192.0.2.2" in lines[0] and "running_processors" in lines[0]
    node._on_datagram(answer(f2, "beta", running_hs06="x"), ("192.0.2.2", 995),
                      t0 + 1.0 + vacquery.BAD_ANSWER_LOG_SECONDS)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "running_hs06" in lines[1] and "4 more dropped" in lines[1]
    # Queries, and answers of another space, are no bad answers; f3's answers are all bad.
    node._on_datagram(protocol.machinetypes_query(SPACE, "x", "vac 1"), ("192.0.2.9", 995), t0 + 1.5)
    node._on_datagram(answer(f2, "beta", space="other.example.org"), ("192.0.2.9", 995), t0 + 1.5)
    node._on_datagram(answer(cookies["f3.example.org"], "beta", factory="f3.example.org", num_machinetypes=0),
                      ("192.0.2.3", 995), t0 + 1.5)
    status = finish(node, t0 + 2.0)
    assert status.factories["f2.example.org"]["machinetypes"]["alpha"]["running_processors"] == 8
    assert status.factories["f2.example.org"]["short"] == ["1 of 2 machinetypes", "0 of 1 factory status"]
    assert status.silent == {"f3.example.org": "its answers were dropped: num_machinetypes is not a count "
                                                "from 1 to 1000"}
    assert status.request is None and status.ended_at >= status.started_at > 0


def test_a_poll_asks_again_those_short_of_answers_and_names_why_the_silent_are(node):
    node.peers.append("f4.example.org")
    node.poller.peers.append("f4.example.org")
    node.unresolved = {"f4.example.org": "Name or service not known"}
    t0, cookies = start_poll(node)
    first = [(m["message_type"], address) for m, address in node.sock.sent]
    assert sorted(first) == sorted((kind, address) for address in ADDRESSES.values()
                                   for kind in ("machinetypes_query", "factory_query"))
    node._on_datagram(answer(cookies["f2.example.org"], "alpha"), ("192.0.2.2", 995), t0 + 0.5)
    node.sock.sent = []
    status = finish(node, t0 + 1.0)
    again = [(m["message_type"], address) for m, address in node.sock.sent]
    # Five more rounds to each factory short of answers: f2 of one machinetype and its status, f3 of all.
    assert len(again) == 5 * 4 and set(again) == set(first)
    assert status.silent == {"f3.example.org": "no answer within 12 s (6 queries)",
                             "f4.example.org": "its name does not resolve: Name or service not known"}
    assert set(status.factories) == {"f2.example.org"}


def test_an_operators_request_polls_soon_and_asks_for_machines(node):
    t0, _ = start_poll(node)
    finish(node, t0)
    node.poller.request(7, machines=False)
    node.poller.request(8, machines=True)
    due = node.poller.next_wake(t0 + 0.1)
    assert due == t0 + space_poller.ON_DEMAND_SECONDS < t0 + node.poller.interval
    node.sock.sent = []
    node.tick(due)
    cookies = {name: asked.cookie for name, asked in node.poller.poll.by_name().items()}
    assert {m["message_type"] for m, _ in node.sock.sent} == {"machinetypes_query", "factory_query",
                                                              "machines_query"}
    machine = {"message_type": "machine_status", "cookie": cookies["f2.example.org"], "space": SPACE,
               "factory": "f2.example.org", "num_machines": 1, "machine": "f2-00.example.org", "state": "Running"}
    node._on_datagram(json.dumps(machine).encode(), ("192.0.2.2", 995), due + 0.1)
    status = finish(node, due + 0.2)
    assert status.request == 8
    assert [row[report.MACHINE_FIELDS.index("machine")] for row in status.machines["f2.example.org"]] == [
        "f2-00.example.org"]


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


def test_after_every_poll_vacmon_hears_the_factory_and_each_machinetype_with_cookie_0(node):
    node.vacmon = ["vacmon.example.org:8884", "unresolved.example.org:8884"]
    t0, _ = start_poll(node)
    node.addresses["vacmon.example.org:8884"] = ("192.0.2.99", 8884)
    node.responder.local = local(machinetypes=3)
    node.responder.host_figures = lambda: {"load_average": 0.5}
    node.sock.sent = []
    finish(node, t0)
    to_vacmon = [message for message, address in node.sock.sent if address == ("192.0.2.99", 8884)]
    assert [m["message_type"] for m in to_vacmon] == ["factory_status"] + ["machinetype_status"] * 3
    assert {m["cookie"] for m in to_vacmon} == {"0"} and {m["space"] for m in to_vacmon} == {SPACE}
    assert to_vacmon[0]["running_processors"] == 3 and to_vacmon[0]["load_average"] == 0.5
    # Nothing for VacMon before the root has said what runs here.
    node.responder.local = None
    node.sock.sent = []
    finish(node, node.poller.next_wake(t0 + 100))
    assert [address for _, address in node.sock.sent if address == ("192.0.2.99", 8884)] == []


def test_a_factory_alone_in_its_space_still_ends_a_poll_every_interval(node):
    node.peers.clear()
    node.poller.peers.clear()
    now = node.poller.next_wake(0.0)
    status = node.tick(now)
    assert status is not None and status.factories == {} and status.silent == {} and status.polled == []
    assert node.poller.next_wake(now) == now + node.poller.interval


class TinyChannel:
    """A channel whose frames hold only so many factories and no machines."""

    def __init__(self, room):
        self.room, self.sent = room, []

    def send(self, status):
        if status.machines or len(status.factories) > self.room:
            raise Unencodable("too large for this frame")
        self.sent.append(status)


def test_a_report_too_large_for_a_frame_goes_without_machines_then_with_fewer_factories():
    answer = {"answered_at": 1.0, "machinetypes": {}, "factory": None, "short": []}
    rows = report.machine_rows([MachineStatus(factory="f2", num_machines=1, machine="m", state="Running")])
    status = messages.SpaceStatus(factories={f"f{i}": answer for i in range(8)}, polled=[f"f{i}" for i in range(8)],
                                  machines={"f1": rows}, request=3)
    roomy = TinyChannel(room=8)
    vacquery.send_report(roomy, status)
    (sent,) = roomy.sent
    assert sent.machines == {} and sent.machines_left_out == 1 and len(sent.factories) == 8 and sent.request == 3
    tight = TinyChannel(room=3)
    vacquery.send_report(tight, status)
    assert len(tight.sent[0].factories) == 2 and tight.sent[0].polled == status.polled
    nothing = TinyChannel(room=-1)
    vacquery.send_report(nothing, status)
    assert nothing.sent == []
