"""Typed messages: every one round-trips; a confused peer gets a clean error (vac.ipc.messages)."""

import dataclasses
import types
import typing

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from vac.config.plain import to_plain
from vac.config.model import Machinetype
from vac.ipc import messages
from vac.ipc.framing import FrameDecoder, IpcError, encode_frame
from vac.ipc.messages import (
    PROTOCOL_VERSION, Heartbeat, LocalStatus, MalformedMessage, PipeMachinetypes, Ready, SpaceStatus, StateReport,
    Stop,
    UnknownMessage, decode, encode,
)
from vac.space import report
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus

NoneType = type(None)
SAMPLE_VALUES = {str: "lhcb-dc-prod", int: 4242, float: 7985.5, bool: True, bytes: b"\x00raw",
                 dict: {"machinetype": "x", "ok": True}, list: [1, "two"], NoneType: None}
# What each annotation accepts, by exact type: a bool is not an int on the wire.
ACCEPTS = {str: {str}, int: {int}, float: {int, float}, bool: {bool}, bytes: {bytes},
           dict: {dict}, list: {list}, NoneType: {NoneType}}


def options(kind):
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    return typing.get_args(kind) if union else (kind,)


# Messages whose fields are checked beyond their types, with valid contents.
PIPE_MACHINETYPE = to_plain(Machinetype(
    name="lhcb-prod", machine_model="docker", root_image="docker://lhcb/pilot:1",
    user_data="https://lhcb.example.org/user_data", machinegroup="lhcb-prod",
    files_name="lhcb", pipe="lhcb"))
LOCAL_MACHINETYPE = dataclasses.asdict(MachinetypeStatus(
    factory="f1.example.org", machinetype="lhcb-prod", num_machinetypes=1, running_hs06=10.0, running_machines=1,
    running_processors=1, num_before_fizzle=0, shutdown_message="300 Nothing to do", shutdown_time=1_800_000_000))
LOCAL_MACHINE = dataclasses.asdict(MachineStatus(
    factory="f1.example.org", num_machines=1, machine="f1-00.example.org", state="Running", uuid="u",
    num_processors=1, cpu_seconds=12.5, hs06=10.0, machinetype="lhcb-prod"))
LOCAL_FACTORY = dataclasses.asdict(FactoryStatus(factory="f1.example.org", running_processors=1, max_processors=8))
SPACE_ANSWER = {"answered_at": 1_800_000_000.5, "factory": LOCAL_FACTORY, "short": ["3 of 4 machines"],
                "machinetypes": {"lhcb-prod": {key: LOCAL_MACHINETYPE[key] for key in report.MACHINETYPE_FIGURES}}}
CHECKED_EXAMPLES = {
    SpaceStatus: [
        SpaceStatus(factories={"f2.example.org": SPACE_ANSWER}, polled=["f2.example.org", "f3.example.org"],
                    silent={"f3.example.org": "no answer within 20 s"},
                    machines={"f2.example.org": [[LOCAL_MACHINE[key] for key in report.MACHINE_FIELDS]]},
                    machines_left_out=2, request=7, started_at=1_800_000_000.0, ended_at=1_800_000_003.5),
        SpaceStatus(factories={}, polled=[]),
    ],
    LocalStatus: [
        LocalStatus(statuses=[LOCAL_MACHINETYPE], machines=[LOCAL_MACHINE], factory=LOCAL_FACTORY,
                    vacmon=["vacmon.example.org:8884"], made_at=1_800_000_000.5),
        LocalStatus(statuses=[], machines=[], factory=LOCAL_FACTORY, vacmon=[], made_at=0.0),
    ],
    PipeMachinetypes: [
        PipeMachinetypes(prefix="lhcb", url="https://lhcb.example.org/p", usable=True,
                         machinetypes=[PIPE_MACHINETYPE], problems=["one"], problems_total=3,
                         fetched_at=7985.5, stale=False, error=None),
        PipeMachinetypes(prefix="lhcb", url="https://lhcb.example.org/p", usable=False,
                         machinetypes=[], problems=[], problems_total=0,
                         fetched_at=None, stale=True, error="HTTP status 503"),
    ],
}


def examples(cls):
    """Instances of message `cls`: one per choice of each optional field's alternatives."""
    if cls in CHECKED_EXAMPLES:
        return CHECKED_EXAMPLES[cls]
    choices = {}
    for name, kind in cls._FIELD_TYPES.items():
        # A KeyError here means a message uses an annotation these tests do not know yet.
        choices[name] = [SAMPLE_VALUES[option] for option in options(kind)]
    widest = max((len(values) for values in choices.values()), default=1)
    return [cls(**{name: values[i % len(values)] for name, values in choices.items()}) for i in range(widest)]


REGISTERED = sorted(messages._REGISTRY.items())
EXAMPLES = [msg for _, cls in REGISTERED for msg in examples(cls)] + [
    StateReport(child_id="slot-03", state="running", detail={"elapsed": 7985.5, "nested": {"a": [1, None]}}),
    Stop(reason="ünïcödé reason"),
]


def test_the_protocol_messages_are_registered():
    assert {"ready", "heartbeat", "state", "stop"} <= set(messages._REGISTRY)
    assert all(cls.TAG == tag for tag, cls in REGISTERED)


@pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
def test_round_trip_through_a_frame(msg):
    (wire,) = FrameDecoder().feed(encode_frame(encode(msg)))
    assert wire[:2] == [PROTOCOL_VERSION, msg.TAG]
    assert decode(wire) == msg
    assert type(decode(wire)) is type(msg)


def test_unknown_tag_is_its_own_error():
    with pytest.raises(UnknownMessage):
        decode([PROTOCOL_VERSION, "launch-missiles", {}])
    # A peer speaking a newer protocol is still a malformed peer to the root.
    assert issubclass(UnknownMessage, MalformedMessage)
    assert issubclass(MalformedMessage, IpcError)


READY_FIELDS = {"child_id": "slot-01", "pid": 100}

MALFORMED = {
    "not a list": {"version": 1, "tag": "ready"},
    "too short": [PROTOCOL_VERSION, "ready"],
    "too long": [PROTOCOL_VERSION, "ready", READY_FIELDS, None],
    "a tuple is not the wire shape": (PROTOCOL_VERSION, "ready", READY_FIELDS),
    "wrong version": [PROTOCOL_VERSION + 1, "ready", READY_FIELDS],
    "version zero": [0, "ready", READY_FIELDS],
    "version as string": [str(PROTOCOL_VERSION), "ready", READY_FIELDS],
    "version as bool": [True, "ready", READY_FIELDS],
    "version as float": [float(PROTOCOL_VERSION), "ready", READY_FIELDS],
    "tag not a string": [PROTOCOL_VERSION, b"ready", READY_FIELDS],
    "fields not a map": [PROTOCOL_VERSION, "ready", ["slot-01", 100]],
    "missing field": [PROTOCOL_VERSION, "ready", {"child_id": "slot-01"}],
    "extra field": [PROTOCOL_VERSION, "ready", {**READY_FIELDS, "uid": 0}],
    "no fields": [PROTOCOL_VERSION, "stop", {}],
    "bool where int": [PROTOCOL_VERSION, "ready", {"child_id": "slot-01", "pid": True}],
    "str where int": [PROTOCOL_VERSION, "heartbeat", {"child_id": "x", "seq": "1"}],
    "float where int": [PROTOCOL_VERSION, "heartbeat", {"child_id": "x", "seq": 1.0}],
    "None where int": [PROTOCOL_VERSION, "ready", {"child_id": "slot-01", "pid": None}],
    "int where str": [PROTOCOL_VERSION, "ready", {"child_id": 1, "pid": 100}],
    "bytes where str": [PROTOCOL_VERSION, "stop", {"reason": b"bye"}],
    "list where map": [PROTOCOL_VERSION, "state", {"child_id": "x", "state": "s", "detail": []}],
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_wire_objects_are_refused(wire):
    with pytest.raises(MalformedMessage) as refused:
        decode(wire)
    assert not isinstance(refused.value, UnknownMessage)


@pytest.mark.parametrize("tag, cls", REGISTERED, ids=[tag for tag, _ in REGISTERED])
def test_each_field_of_each_message_is_type_checked(tag, cls):
    # Swap every field for each value of a type it does not accept: each swap is refused.
    version, _, fields = encode(examples(cls)[0])
    for name, kind in cls._FIELD_TYPES.items():
        accepted = set().union(*(ACCEPTS[option] for option in options(kind)))
        for wrong in SAMPLE_VALUES.values():
            if type(wrong) not in accepted:
                with pytest.raises(MalformedMessage):
                    decode([version, tag, {**fields, name: wrong}])


# Property: whatever msgpack object arrives, decode() returns a message or refuses it.

plain = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12) \
    | st.binary(max_size=12)
msgpack_objects = st.recursive(
    plain,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
# Near-misses: the right shape with arbitrary contents, so the checks past the shape run too.
field_names = st.sampled_from(sorted({name for _, cls in REGISTERED for name in cls._FIELD_TYPES} | {"other"}))
near_misses = st.tuples(
    st.sampled_from([PROTOCOL_VERSION, 0, 2, True, 1.0]) | msgpack_objects,
    st.sampled_from([tag for tag, _ in REGISTERED] + ["nope"]) | msgpack_objects,
    st.dictionaries(field_names, msgpack_objects, max_size=4) | msgpack_objects,
).map(list)


@settings(max_examples=300, deadline=None)
@given(obj=msgpack_objects | near_misses)
def test_any_object_decodes_to_a_message_or_malformed(obj):
    # Only what msgpack itself can produce reaches decode() from a frame.
    (wire,) = FrameDecoder().feed(encode_frame(obj))
    try:
        msg = decode(wire)
    except MalformedMessage:
        return
    assert type(msg) in messages._REGISTRY.values()
    assert encode(msg) == wire


@settings(max_examples=100, deadline=None)
@given(child_id=st.text(max_size=30), pid=st.integers(0, 2**31), seq=st.integers(0, 2**63 - 1),
       detail=st.dictionaries(st.text(max_size=10), st.text() | st.integers(0, 99) | st.floats(allow_nan=False),
                              max_size=5))
def test_valid_fields_always_round_trip(child_id, pid, seq, detail):
    for msg in (Ready(child_id=child_id, pid=pid), Heartbeat(child_id=child_id, seq=seq),
                StateReport(child_id=child_id, state="running", detail=detail)):
        wire = msgpack.unpackb(msgpack.packb(encode(msg), use_bin_type=True), raw=False)
        got = decode(wire)
        assert type(got) is type(msg)
        assert got == msg


@pytest.mark.parametrize("value, kind, fits", [
    (3, int, True), (True, int, False), (3.0, int, False),
    (3, float, True), (3.5, float, True), (False, float, False),
    (None, int | None, True), (3, int | None, True), (True, int | None, False),
    (3, float | None, True), ("3", float | None, False),
    (None, str | None, True), (b"x", str | None, False),
    ({}, dict, True), ([], dict, False), ([], list, True),
])
def test_field_type_rules(value, kind, fits):
    # Optional fields (`X | None`) follow the same rules as plain ones.
    assert messages._conforms(value, kind) is fits


# Bounds: lengths, counts, nesting and plain data, checked on decode and on encode.

from vac.ipc.framing import Unencodable  # noqa: E402
from vac.ipc.messages import (  # noqa: E402
    MAX_DEPTH, MAX_ID_CHARS, MAX_ITEMS, MAX_TEXT_CHARS, Bounds, Repositories, message,
)


def nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


OUT_OF_BOUNDS = {
    "child id too long": Ready(child_id="s" * (MAX_ID_CHARS + 1), pid=1),
    "state name too long": StateReport(child_id="slot-00", state="x" * (MAX_ID_CHARS + 1), detail={}),
    "a string too long": Stop(reason="x" * (MAX_TEXT_CHARS + 1)),
    "a nested string too long": StateReport(child_id="slot-00", state="s",
                                            detail={"a": ["x" * (MAX_TEXT_CHARS + 1)]}),
    "a map key too long": StateReport(child_id="slot-00", state="s",
                                      detail={"k" * (MAX_TEXT_CHARS + 1): 1}),
    "a list too long": Repositories(names=["r"] * (MAX_ITEMS + 1)),
    "a nested map too large": StateReport(child_id="slot-00", state="s",
                                          detail={"m": dict.fromkeys(map(str, range(MAX_ITEMS + 1)), 0)}),
    "nested too deep": StateReport(child_id="slot-00", state="s", detail=nested(MAX_DEPTH + 1)),
}


@pytest.mark.parametrize("msg", OUT_OF_BOUNDS.values(), ids=OUT_OF_BOUNDS.keys())
def test_a_message_out_of_its_bounds_is_refused_both_ways(msg):
    with pytest.raises(Unencodable):
        encode(msg)
    # A peer that sends it anyway (msgpack carries it) is a malformed peer.
    wire = [PROTOCOL_VERSION, msg.TAG, {name: getattr(msg, name) for name in type(msg)._FIELD_TYPES}]
    (wire,) = FrameDecoder(max_bytes=16 * 1024 * 1024).feed(encode_frame(wire, 16 * 1024 * 1024))
    with pytest.raises(MalformedMessage) as refused:
        decode(wire)
    assert refused.value.args[0].startswith(f"{msg.TAG}."), "the error names the message and field"


def test_values_at_their_bounds_pass():
    for msg in (Ready(child_id="s" * MAX_ID_CHARS, pid=1), Stop(reason="x" * MAX_TEXT_CHARS),
                Repositories(names=["r"] * MAX_ITEMS),
                StateReport(child_id="slot-00", state="s", detail=nested(MAX_DEPTH))):
        assert decode(encode(msg)) == msg


@pytest.mark.parametrize("detail, why", [
    ({"fqan": "\ud800"}, "not valid Unicode"),
    ({"n": 2**64}, "beyond 64 bits"),
    ({"n": -2**63 - 1}, "beyond 64 bits"),
    ({1: "int key"}, "map key of type int"),
    ({"\ud800": "a key that is no Unicode"}, "not valid Unicode"),
    ({"k" * (MAX_TEXT_CHARS + 1): "a key too long"}, "characters"),
    ({"m": {"n": {("t",): 1}}}, "map key of type tuple"),
    ({"s": {1, 2}}, "set, which is not plain data"),
    ({"o": object()}, "not plain data"),
])
def test_what_msgpack_could_not_carry_or_the_peer_could_not_decode_is_refused_in_the_sender(detail, why):
    with pytest.raises(Unencodable, match=why):
        encode(StateReport(child_id="slot-00", state="s", detail=detail))


def test_plain_values_of_every_kind_and_subclass_pass():
    class Name(str):
        pass

    detail = {"text": "é", Name("sub"): Name("value"), b"key": b"bytes", "n": [1, 2.5, None, True, (3, "x")],
              "deep": {"k": {"l": "m"}}, "empty": {}}
    msg = StateReport(child_id="slot-00", state="s", detail=detail)
    assert decode(encode(msg)) == msg


def test_a_message_declares_its_bounds_per_field_and_only_for_its_fields():
    assert Ready._FIELD_BOUNDS["child_id"].max_chars == MAX_ID_CHARS
    assert Stop._FIELD_BOUNDS["reason"] == Bounds()
    with pytest.raises(ValueError, match="unknown fields"):
        @message("bounds-for-nothing", nothing=Bounds(max_chars=1))
        class Nothing:
            something: str
    assert "bounds-for-nothing" not in messages._REGISTRY


def test_an_error_about_a_huge_value_shows_only_its_start():
    with pytest.raises(MalformedMessage) as refused:
        decode([PROTOCOL_VERSION, "ready", {"child_id": "x", "pid": "9" * 100_000}])
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("change", [
    {"statuses": [dict(LOCAL_MACHINETYPE, running_hs06="10")]},
    {"statuses": [dict(LOCAL_MACHINETYPE, surprise=1)]},
    {"statuses": [LOCAL_MACHINETYPE] * 1001},
    {"machines": [dict(LOCAL_MACHINE, num_processors=-1)]},
    {"machines": [dict(LOCAL_MACHINE, state="x" * 2000)]},
    {"machines": [LOCAL_MACHINE] * 65},
    {"factory": dict(LOCAL_FACTORY, running_hs06=float("inf"))},
    {"factory": {"factory": "f1.example.org"}},
    {"vacmon": [7]},
    {"made_at": float("nan")},
], ids=repr)
def test_what_vacquery_answers_the_space_with_is_checked_field_by_field(change):
    # vacquery sends these to other factories: one the root could not have meant is refused.
    version, tag, fields = encode(CHECKED_EXAMPLES[LocalStatus][0])
    with pytest.raises(MalformedMessage, match="local_status"):
        decode([version, tag, {**fields, **change}])


@pytest.mark.parametrize("change", [
    {"factories": {"f2": dict(SPACE_ANSWER, answered_at=float("nan"))}},
    {"factories": {"f2": dict(SPACE_ANSWER, extra=1)}},
    {"factories": {"f2": dict(SPACE_ANSWER, machinetypes={"Bad Name": {}})}},
    {"factories": {"f2": dict(SPACE_ANSWER, machinetypes={"lhcb-prod": {"running_hs06": -1.0}})}},
    {"factories": {"f2": dict(SPACE_ANSWER, factory={"factory": "f2"})}},
    {"factories": {"": SPACE_ANSWER}},
    {"silent": {"f3": "x" * 1000}},
    {"machines": {"f2": [[1, 2, 3]]}},
    {"machines": {"f2": [[LOCAL_MACHINE[key] for key in report.MACHINE_FIELDS]] * (report.MAX_SPACE_MACHINES + 1)}},
    {"machines_left_out": -1},
    {"polled": [7]},
    {"ended_at": float("inf")},
], ids=repr)
def test_what_vacquery_reports_of_the_space_is_checked_field_by_field(change):
    # The root schedules with these figures: a report it cannot trust fails the child that sent it.
    version, tag, fields = encode(CHECKED_EXAMPLES[SpaceStatus][0])
    with pytest.raises(MalformedMessage, match="space_status"):
        decode([version, tag, {**fields, **change}])
