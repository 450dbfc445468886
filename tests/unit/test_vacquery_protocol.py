"""VacQuery datagrams: what we send, what we accept, and that nothing a peer sends can crash us."""

import dataclasses
import json

from hypothesis import given, strategies as st

from vac.space import protocol
from vac.space.protocol import MachinetypeStatus

SPACE = "vac01.example.org"
STATUS = MachinetypeStatus(factory="f2.example.org", machinetype="lhcb-prod", num_machinetypes=2,
                           running_hs06=40.0, running_machines=4, running_processors=4, num_before_fizzle=1,
                           shutdown_message="300 No more work", shutdown_time=1_800_000_000,
                           shutdown_machine="f2-03.example.org")


def answers(statuses=(STATUS,), cookie="c" * 64):
    return protocol.machinetype_statuses(list(statuses), space=SPACE, site="example.org", query_cookie=cookie,
                                         daemon_version="vac 1.0", now=1_800_000_100)


def test_a_query_as_vac_sends_it():
    cookie = protocol.cookie(b"salt", "f2.example.org")
    data = protocol.machinetypes_query(SPACE, cookie, "vac 1.0")
    message = json.loads(data)
    assert message["message_type"] == "machinetypes_query"
    assert message["space"] == SPACE and message["cookie"] == cookie
    assert message["vacquery_version"] == "VacQuery 01.03"
    assert protocol.parse_query(data) == protocol.Query("machinetypes_query", SPACE, cookie)


def test_answers_carry_every_field_vac_checks_and_parse_back():
    second = MachinetypeStatus(factory="f2.example.org", machinetype="atlas", num_machinetypes=2,
                               running_hs06=0.0, running_machines=0, running_processors=0, num_before_fizzle=0)
    datagrams = answers((STATUS, second))
    assert len(datagrams) == 2
    first = json.loads(datagrams[0])
    for field in ("message_type", "cookie", "space", "factory", "num_machinetypes", "machinetype", "running_hs06",
                  "num_before_fizzle", "shutdown_message", "shutdown_time", "shutdown_machine", "site",
                  "running_machines", "running_processors", "running_cpus", "time_sent"):
        assert field in first, field
    assert first["num_machinetypes"] == 2 and first["site"] == "example.org"
    assert protocol.parse_machinetype_status(datagrams[0], SPACE) == ("c" * 64, STATUS)
    assert protocol.parse_machinetype_status(datagrams[1], SPACE)[1] == second


def test_answers_of_another_space_or_with_bad_fields_are_dropped():
    good = json.loads(answers()[0])
    assert protocol.parse_machinetype_status(answers()[0], "other.example.org") is None
    for field, value in [("running_hs06", -1), ("running_hs06", "12"), ("running_hs06", float("nan")),
                         ("num_machinetypes", 0), ("running_machines", True), ("machinetype", "Bad Name"),
                         ("factory", ""), ("shutdown_time", -5), ("shutdown_message", 5), ("cookie", "")]:
        bad = dict(good, **{field: value})
        assert protocol.parse_machinetype_status(json.dumps(bad).encode(), SPACE) is None, field
    missing = {k: v for k, v in good.items() if k != "running_hs06"}
    assert protocol.parse_machinetype_status(json.dumps(missing).encode(), SPACE) is None


def test_long_texts_are_clipped_to_keep_datagrams_small():
    long = MachinetypeStatus(factory="f2.example.org", machinetype="x", num_machinetypes=1, running_hs06=1.0,
                             running_machines=1, running_processors=1, num_before_fizzle=0,
                             shutdown_message="3" * 5000)
    (data,) = answers((long,))
    assert len(data) < protocol.MAX_DATAGRAM
    assert len(json.loads(data)["shutdown_message"]) == protocol.MAX_TEXT


def test_site_is_the_gocdb_name_or_the_space_without_its_first_label():
    assert protocol.site_of("vac01.example.org", None) == "example.org"
    assert protocol.site_of("vac01.example.org", "UKI-EXAMPLE") == "UKI-EXAMPLE"
    assert protocol.site_of("localspace", None) == "localspace"


@given(st.binary(max_size=2000) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=30).map(lambda value: json.dumps(value).encode()))
def test_any_datagram_parses_or_is_dropped_never_raises(data):
    protocol.parse_query(data)
    protocol.parse_machinetype_status(data, SPACE)


@given(st.dictionaries(st.sampled_from(sorted(json.loads(answers()[0]))),
                       st.none() | st.booleans() | st.integers(-5, 2**60) | st.floats() | st.text(max_size=8),
                       max_size=8))
def test_answers_with_any_fields_changed_parse_or_are_dropped(changes):
    message = dict(json.loads(answers()[0]), **changes)
    protocol.parse_machinetype_status(json.dumps(message).encode(), SPACE)


# Vac 03.01's machinetype_status as its factory sends it (the field set of
# INTERFACES.md section 9): it sums allocated_cpu as floats, so the counts of
# processors arrive as whole-number floats.
VAC_0301_ANSWER = {
    "message_type": "machinetype_status", "vac_version": "Vac 03.01 -", "daemon_version": "Vac 03.01 -",
    "vacquery_version": "VacQuery 01.03", "cookie": "c" * 64, "space": SPACE, "site": "UKI-EXAMPLE",
    "factory": "f3.example.org", "time_sent": 1_800_000_100, "num_machinetypes": 3, "machinetype": "lhcb-prod",
    "bytes_per_processor": 2147483648, "running_hs06": 80.0, "running_machines": 2, "running_cpus": 8.0,
    "running_processors": 8.0, "num_before_fizzle": 1, "shutdown_message": "300 Nothing to do",
    "shutdown_time": 1_799_999_000, "shutdown_machine": "f3-01.example.org",
    "fqan": "/lhcb/Role=pilot", "max_wallclock_seconds": 172800, "max_processors": 4}


def vac_answer(**changes):
    message = {k: v for k, v in dict(VAC_0301_ANSWER, **changes).items() if v is not ...}
    return json.dumps(message).encode()


def test_a_vac_0301_answer_with_float_counts_is_accepted():
    assert protocol.parse_machinetype_status(vac_answer(), SPACE) == ("c" * 64, MachinetypeStatus(
        factory="f3.example.org", machinetype="lhcb-prod", num_machinetypes=3, running_hs06=80.0,
        running_machines=2, running_processors=8, num_before_fizzle=1, shutdown_message="300 Nothing to do",
        shutdown_time=1_799_999_000, shutdown_machine="f3-01.example.org", bytes_per_processor=2147483648,
        fqan="/lhcb/Role=pilot", max_wallclock_seconds=172800, max_processors=4))
    _, status = protocol.parse_machinetype_status(
        vac_answer(num_machinetypes=3.0, running_machines=2.0, num_before_fizzle=1.0, shutdown_time=1.8e9), SPACE)
    assert (status.num_machinetypes, status.running_machines, status.num_before_fizzle) == (3, 2, 1)
    assert type(status.running_processors) is int and status.shutdown_time == 1_800_000_000


def test_missing_optional_keys_and_the_deprecated_cpus_spelling():
    optional = ("vac_version", "daemon_version", "vacquery_version", "site", "time_sent", "bytes_per_processor",
                "running_machines", "num_before_fizzle", "shutdown_message", "shutdown_time", "shutdown_machine",
                "fqan", "max_wallclock_seconds", "max_processors")
    _, bare = protocol.parse_machinetype_status(vac_answer(**{k: ... for k in optional}), SPACE)
    assert bare.bytes_per_processor is bare.fqan is bare.max_processors is bare.max_wallclock_seconds is None
    assert (bare.running_machines, bare.num_before_fizzle, bare.running_processors) == (0, 0, 8)
    assert bare.shutdown_message is bare.shutdown_time is bare.shutdown_machine is None
    # An older Vac names processors cpus only; the newer spelling wins when both are there.
    assert protocol.parse_machinetype_status(vac_answer(running_processors=...), SPACE)[1].running_processors == 8
    assert protocol.parse_machinetype_status(vac_answer(running_processors=..., running_cpus=...),
                                             SPACE)[1].running_processors == 0
    assert protocol.parse_machinetype_status(vac_answer(running_cpus=3), SPACE)[1].running_processors == 8


def test_fields_that_are_present_are_typed_and_bounded():
    for field, value in [("running_processors", 8.5), ("running_cpus", "8"), ("running_machines", float("inf")),
                         ("running_processors", -1.0), ("running_processors", 2.0**60), ("num_before_fizzle", True),
                         ("num_machinetypes", 1001), ("num_machinetypes", ...), ("running_hs06", 1e12),
                         ("running_hs06", ...), ("shutdown_time", 1.5), ("bytes_per_processor", -1),
                         ("max_processors", "4"), ("max_wallclock_seconds", 0.5), ("fqan", 7),
                         ("shutdown_machine", ["x"])]:
        reason = protocol.read_machinetype_status(vac_answer(**{field: value}), SPACE)
        assert isinstance(reason, str) and not reason.startswith(protocol.NOT_AN_ANSWER), (field, value)
        assert protocol.parse_machinetype_status(vac_answer(**{field: value}), SPACE) is None
    # Queries and other spaces are not bad answers, only not answers.
    query = protocol.machinetypes_query(SPACE, "c" * 64, "vac 1.0")
    assert protocol.read_machinetype_status(query, SPACE).startswith(protocol.NOT_AN_ANSWER)
    assert protocol.read_machinetype_status(vac_answer(), "other.example.org").startswith(protocol.NOT_AN_ANSWER)
    assert protocol.read_machinetype_status(b"[1]", SPACE).startswith(protocol.NOT_AN_ANSWER)


def test_the_legacy_method_forms_of_every_query():
    for method, kind in [("machinetypes", "machinetypes_query"), ("machines", "machines_query"),
                         ("factories", "factory_query")]:
        alone = json.dumps({"method": method, "space": SPACE, "cookie": "c"}).encode()
        assert protocol.parse_query(alone) == protocol.Query(kind, SPACE, "c")
        beside = json.dumps({"method": method, "message_type": kind, "space": SPACE, "cookie": "c"}).encode()
        assert protocol.parse_query(beside) == protocol.Query(kind, SPACE, "c")
    # message_type, when it names a query, is what is asked.
    both = json.dumps({"method": "machines", "message_type": "machinetypes_query", "space": SPACE,
                       "cookie": "c"}).encode()
    assert protocol.parse_query(both).message_type == "machinetypes_query"
    for bad in [{"method": "everything", "space": SPACE, "cookie": "c"}, {"method": ["machines"], "space": SPACE,
                "cookie": "c"}, {"method": "machines", "cookie": "c"}, {"method": "machines", "space": SPACE}]:
        assert protocol.parse_query(json.dumps(bad).encode()) is None, bad


# The worst case of bytes out per byte in that README states for one query.
DOCUMENTED_AMPLIFICATION = 2600


def test_the_worst_amplification_of_one_query_is_what_readme_states():
    from vac.workers.vacquery import MAX_ANSWER_DATAGRAMS_PER_QUERY
    space = "a"       # the shortest space makes the shortest query; answers repeat it too
    query = json.dumps({"method": "machinetypes", "space": space, "cookie": "c"}, separators=(",", ":")).encode()
    assert protocol.parse_query(query) is not None
    largest = [MachinetypeStatus(
        factory="f" * 253, machinetype=f"{i:03d}" + "m" * 61, num_machinetypes=1, running_hs06=protocol.MAX_HS06,
        running_machines=protocol.MAX_COUNT, running_processors=protocol.MAX_COUNT,
        num_before_fizzle=protocol.MAX_COUNT, shutdown_message="x" * 5000, shutdown_time=protocol.MAX_COUNT,
        shutdown_machine="y" * 5000, bytes_per_processor=protocol.MAX_COUNT, fqan="z" * 5000,
        max_wallclock_seconds=protocol.MAX_COUNT, max_processors=protocol.MAX_COUNT)
        for i in range(MAX_ANSWER_DATAGRAMS_PER_QUERY)]
    out = protocol.machinetype_statuses(largest, space=space, site="s" * 5000,
                                        query_cookie="c", daemon_version="vac 99.99.99", now=protocol.MAX_COUNT)
    ratio = sum(map(len, out)) / len(query)
    assert DOCUMENTED_AMPLIFICATION * 0.9 < ratio <= DOCUMENTED_AMPLIFICATION


def test_our_answers_carry_vac_0301s_exact_field_set_and_leave_out_what_a_machinetype_lacks():
    full = dataclasses.replace(protocol.parse_machinetype_status(vac_answer(), SPACE)[1], num_machinetypes=1)
    (data,) = protocol.machinetype_statuses([full], space=SPACE, site="UKI-EXAMPLE", query_cookie="c" * 64,
                                            daemon_version="vac 1.0", now=1_800_000_100)
    assert set(json.loads(data)) == set(VAC_0301_ANSWER)
    assert protocol.parse_machinetype_status(data, SPACE) == ("c" * 64, full)
    (data,) = answers()
    assert set(VAC_0301_ANSWER) - set(json.loads(data)) == {"bytes_per_processor", "fqan", "max_wallclock_seconds",
                                                            "max_processors"}
