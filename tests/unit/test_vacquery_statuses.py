"""machine_status and factory_status: what we send, what we accept of Vac's, and that nothing crashes us."""

import dataclasses
import json

from hypothesis import given, strategies as st

from vac.space import protocol
from vac.space.factory_status import FactoryStatus, factory_status, read_factory_status
from vac.space.machine_status import MAX_MACHINES, MachineStatus, machine_statuses, read_machine_status

SPACE = "vac01.example.org"
COOKIE = "c" * 64
NOW = 1_800_000_100

# Vac 03.01's machine_status as its factory sends it (INTERFACES.md section 9):
# its floats come as "%.2f", so whole numbers arrive as 8.0.
VAC_0301_MACHINE = {
    "message_type": "machine_status", "vac_version": "Vac 03.01 -", "daemon_version": "Vac 03.01 -",
    "vacquery_version": "VacQuery 01.03", "cookie": COOKIE, "space": SPACE, "factory": "f3.example.org",
    "num_machines": 24, "time_sent": NOW, "machine": "f3-07.example.org", "state": "Running",
    "machine_model": "docker", "uuid": "4c0e9d5e-0000-4000-8000-000000000007", "created_time": 1_799_990_000,
    "started_time": 1_799_990_030, "heartbeat_time": 1_800_000_050, "num_cpus": 8.0, "num_processors": 8.0,
    "cpu_seconds": 70000, "cpu_percentage": 701.25, "hs06": 80.0, "machinetype": "lhcb-prod",
    "shutdown_message": None, "shutdown_time": None, "site": "UKI-EXAMPLE", "fqan": "/lhcb/Role=pilot"}
# Vac 03.01's factory_status: every spelling it sends of each figure.
VAC_0301_FACTORY = {
    "message_type": "factory_status", "vac_version": "Vac 03.01 -", "daemon_version": "Vac 03.01 -",
    "vacquery_version": "VacQuery 01.03", "cookie": COOKIE, "space": SPACE, "factory": "f3.example.org",
    "time_sent": NOW, "site": "UKI-EXAMPLE", "running_cpus": 16.0, "running_processors": 16.0,
    "running_machines": 3, "running_hs06": 160.0, "max_cpus": 24, "max_processors": 24, "max_machines": 24,
    "max_hs06": 240.0, "total_cpus": 24, "total_machines": 24, "total_hs06": 240.0,
    "root_disk_avail_kb": 5_000_000, "root_disk_avail_inodes": 300_000, "vac_disk_avail_kb": 90_000_000,
    "daemon_disk_avail_kb": 90_000_000, "vac_disk_avail_inodes": 6_000_000, "daemon_disk_avail_inodes": 6_000_000,
    "load_average": 15.73, "kernel_version": "3.10.0-1160.el7.x86_64", "os_issue": "\\S",
    "boot_time": 1_790_000_000, "factory_heartbeat_time": 1_800_000_090, "responder_heartbeat_time": NOW,
    "swap_used_kb": 0, "swap_free_kb": 4_000_000, "mem_used_kb": 50_000_000, "mem_total_kb": 64_000_000}


def changed(message, **changes):
    return json.dumps({k: v for k, v in dict(message, **changes).items() if v is not ...}).encode()


def test_a_vac_0301_machine_status_is_read_with_every_field():
    assert read_machine_status(changed(VAC_0301_MACHINE), SPACE) == (COOKIE, MachineStatus(
        factory="f3.example.org", num_machines=24, machine="f3-07.example.org", state="Running",
        machine_model="docker", uuid="4c0e9d5e-0000-4000-8000-000000000007", created_time=1_799_990_000,
        started_time=1_799_990_030, heartbeat_time=1_800_000_050, num_processors=8, cpu_seconds=70000.0,
        cpu_percentage=701.25, hs06=80.0, machinetype="lhcb-prod", fqan="/lhcb/Role=pilot"))
    # An empty slot, as Vac answers it, and an older Vac's num_cpus alone.
    _, empty = read_machine_status(changed(VAC_0301_MACHINE, state="Shut down", uuid=None, machinetype=None,
                                           machine_model=None, created_time=None, started_time=None,
                                           heartbeat_time=None, num_cpus=..., num_processors=..., fqan=...), SPACE)
    assert (empty.state, empty.machinetype, empty.num_processors, empty.started_time) == ("Shut down", None, None,
                                                                                           None)
    assert read_machine_status(changed(VAC_0301_MACHINE, num_processors=...), SPACE)[1].num_processors == 8


def test_our_machine_status_carries_vac_0301s_field_set_and_reads_back():
    _, status = read_machine_status(changed(VAC_0301_MACHINE), SPACE)
    status = dataclasses.replace(status, num_machines=1)
    (data,) = machine_statuses([status], space=SPACE, site="UKI-EXAMPLE", query_cookie=COOKIE,
                               daemon_version="vac 1.0", now=NOW)
    assert set(json.loads(data)) == set(VAC_0301_MACHINE)
    assert read_machine_status(data, SPACE) == (COOKIE, status)
    # Vac leaves out an fqan a machinetype lacks; num_machines counts what the answer carries.
    data = machine_statuses([dataclasses.replace(status, fqan=None)] * 3, space=SPACE, site="s",
                            query_cookie=COOKIE, daemon_version="vac 1.0", now=NOW)
    assert "fqan" not in json.loads(data[0]) and {json.loads(d)["num_machines"] for d in data} == {3}


def test_machine_status_fields_are_typed_and_bounded():
    for field, value in [("num_machines", 0), ("num_machines", MAX_MACHINES + 1), ("num_machines", 2.5),
                         ("machine", ""), ("machine", 7), ("state", None), ("machinetype", "Bad Type"),
                         ("num_processors", -1.0), ("num_processors", 1.5), ("num_cpus", "8"), ("cpu_seconds", float("nan")),
                         ("cpu_percentage", -3), ("hs06", 2e9), ("hs06", "80"), ("started_time", 1.5),
                         ("heartbeat_time", True), ("uuid", ["x"]), ("shutdown_message", 300), ("fqan", {}),
                         ("factory", "Not A Host"), ("cookie", "")]:
        reason = read_machine_status(changed(VAC_0301_MACHINE, **{field: value}), SPACE)
        assert isinstance(reason, str) and not reason.startswith(protocol.NOT_AN_ANSWER), (field, value)
    assert read_machine_status(changed(VAC_0301_MACHINE), "other.example.org").startswith(protocol.NOT_AN_ANSWER)
    assert read_machine_status(changed(VAC_0301_FACTORY), SPACE).startswith(protocol.NOT_AN_ANSWER)


def test_a_vac_0301_factory_status_is_read_with_every_spelling():
    assert read_factory_status(changed(VAC_0301_FACTORY), SPACE) == (COOKIE, FactoryStatus(
        factory="f3.example.org", running_processors=16, running_machines=3, running_hs06=160.0,
        max_processors=24, max_machines=24, max_hs06=240.0, root_disk_avail_kb=5_000_000,
        root_disk_avail_inodes=300_000, daemon_disk_avail_kb=90_000_000, daemon_disk_avail_inodes=6_000_000,
        load_average=15.73, kernel_version="3.10.0-1160.el7.x86_64", os_issue="\\S", boot_time=1_790_000_000,
        factory_heartbeat_time=1_800_000_090, responder_heartbeat_time=NOW, swap_used_kb=0,
        swap_free_kb=4_000_000, mem_used_kb=50_000_000, mem_total_kb=64_000_000))
    # Older spellings alone, and a bare answer: what is missing is unknown, not an error.
    older = {key: ... for key in ("running_processors", "max_processors", "max_cpus", "max_machines", "max_hs06",
                                  "daemon_disk_avail_kb", "daemon_disk_avail_inodes")}
    _, status = read_factory_status(changed(VAC_0301_FACTORY, **older), SPACE)
    assert (status.running_processors, status.max_processors, status.max_machines, status.max_hs06,
            status.daemon_disk_avail_kb) == (16, 24, 24, 240.0, 90_000_000)
    bare = {key: ... for key in VAC_0301_FACTORY if key not in ("message_type", "space", "factory", "cookie")}
    assert read_factory_status(changed(VAC_0301_FACTORY, **bare), SPACE) == (COOKIE, FactoryStatus("f3.example.org"))


def test_our_factory_status_carries_every_spelling_and_reads_back():
    _, status = read_factory_status(changed(VAC_0301_FACTORY), SPACE)
    data = factory_status(status, space=SPACE, site="UKI-EXAMPLE", query_cookie=COOKIE, daemon_version="vac 1.0",
                          now=NOW)
    assert set(json.loads(data)) == set(VAC_0301_FACTORY)
    assert read_factory_status(data, SPACE) == (COOKIE, status)
    # A figure this factory could not read goes as Vac sends it: 0, or empty text.
    message = json.loads(factory_status(FactoryStatus("f1.example.org"), space=SPACE, site="s", query_cookie="c",
                                        daemon_version="vac 1.0", now=NOW))
    assert (message["load_average"], message["mem_total_kb"], message["os_issue"], message["max_cpus"]) == (
        0, 0, "", 0)


def test_factory_status_fields_are_typed_and_bounded():
    for field, value in [("running_processors", 1.5), ("running_cpus", "16"), ("max_processors", -1),
                         ("running_hs06", float("inf")), ("max_hs06", 2e9), ("load_average", True),
                         ("mem_total_kb", 2.0**60), ("boot_time", "yesterday"), ("kernel_version", 3),
                         ("os_issue", "x" * 5000)]:
        reason = read_factory_status(changed(VAC_0301_FACTORY, **{field: value}), SPACE)
        assert isinstance(reason, str) and not reason.startswith(protocol.NOT_AN_ANSWER), (field, value)


datagrams = st.binary(max_size=2000) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=30).map(lambda value: json.dumps(value).encode())


@given(datagrams)
def test_any_datagram_is_read_or_refused_never_raises(data):
    assert isinstance(read_machine_status(data, SPACE), (str, tuple))
    assert isinstance(read_factory_status(data, SPACE), (str, tuple))


values = st.none() | st.booleans() | st.integers(-5, 2**60) | st.floats() | st.text(max_size=8)


@given(st.dictionaries(st.sampled_from(sorted(VAC_0301_MACHINE)), values, max_size=8),
       st.dictionaries(st.sampled_from(sorted(VAC_0301_FACTORY)), values, max_size=8))
def test_answers_with_any_fields_changed_are_read_or_refused(machine_changes, factory_changes):
    assert isinstance(read_machine_status(changed(VAC_0301_MACHINE, **machine_changes), SPACE), (str, tuple))
    assert isinstance(read_factory_status(changed(VAC_0301_FACTORY, **factory_changes), SPACE), (str, tuple))


# The worst cases of bytes out per byte in that README states for one query of each kind.
DOCUMENTED_AMPLIFICATION = {"machines": 2900, "factories": 45}


def test_no_query_of_any_kind_is_answered_with_more_than_the_documented_amplification():
    space, long = "a", "x" * 5000
    common = {"space": space, "site": long, "query_cookie": "c", "daemon_version": "vac 99.99.99",
              "now": protocol.MAX_COUNT}
    slots = [MachineStatus(
        factory="f" * 253, num_machines=1, machine=long, state=long, machine_model=long, uuid=long,
        created_time=protocol.MAX_COUNT, started_time=protocol.MAX_COUNT, heartbeat_time=protocol.MAX_COUNT,
        num_processors=protocol.MAX_COUNT, cpu_seconds=float(protocol.MAX_COUNT),
        cpu_percentage=float(protocol.MAX_COUNT), hs06=protocol.MAX_HS06, machinetype="m" * 64,
        shutdown_message=long, shutdown_time=protocol.MAX_COUNT, fqan=long)] * protocol.MAX_ANSWER_DATAGRAMS
    factory = FactoryStatus("f" * 253, **{field.name: protocol.MAX_COUNT for field in dataclasses.fields(FactoryStatus)
                                          if field.type in ("int", "int | None")},
                            running_hs06=protocol.MAX_HS06, max_hs06=protocol.MAX_HS06, load_average=1e6,
                            kernel_version=long, os_issue=long)
    for method, out in [("machines", machine_statuses(slots, **common)), ("factories", [factory_status(factory,
                                                                                                       **common)])]:
        query = json.dumps({"method": method, "space": space, "cookie": "c"}, separators=(",", ":")).encode()
        assert protocol.parse_query(query) is not None
        assert all(len(datagram) < protocol.MAX_DATAGRAM for datagram in out)
        ratio = sum(map(len, out)) / len(query)
        assert DOCUMENTED_AMPLIFICATION[method] * 0.9 < ratio <= DOCUMENTED_AMPLIFICATION[method], method
