"""The control protocol's pure parts: request checks, argument schemas, frames."""

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from vac.control import protocol
from vac.control.commands import COMMANDS
from vac.control.protocol import BadRequest, check_args, check_request
from vac.ipc.framing import FrameDecoder, FrameTooLarge


def request(**fields):
    return {"v": 1, "id": 7, "command": "status", "args": {}, **fields}


def test_a_well_formed_request_gives_its_id_command_and_args():
    assert check_request(request(args={"slot": 3})) == (7, "status", {"slot": 3})
    no_args = request()
    del no_args["args"]
    assert check_request(no_args) == (7, "status", {})


@pytest.mark.parametrize("obj, why", [
    ([1, "status"], "a request is a map, not list"),
    (42, "a request is a map, not int"),
    (request(v=2), "protocol version 2, expected 1"),
    (request(v=True), "protocol version True, expected 1"),
    ({"id": 7, "command": "status"}, "protocol version None, expected 1"),
    (request(id="7"), "id must be an integer"),
    (request(id=True), "id must be an integer"),
    (request(id=None), "id must be an integer"),
    (request(command=""), "command must be a non-empty string"),
    (request(command=b"status"), "command must be a non-empty string"),
    (request(args=[1]), "args must be a map"),
    (request(extra=1), "unknown request fields: ['extra']"),
])
def test_a_malformed_request_is_refused_saying_why(obj, why):
    with pytest.raises(BadRequest) as refused:
        check_request(obj)
    assert str(refused.value) == why


SCHEMA = {"slot": ((int,), True, None), "reason": ((str,), False, "no reason"),
          "deadline": ((int, float), False, None)}


def test_arguments_get_their_defaults():
    assert check_args(SCHEMA, {"slot": 2}) == {"slot": 2, "reason": "no reason", "deadline": None}
    assert check_args(SCHEMA, {"slot": 2, "deadline": 1.5, "reason": "r"}) == \
        {"slot": 2, "reason": "r", "deadline": 1.5}


@pytest.mark.parametrize("args, why", [
    ({}, "missing argument 'slot'"),
    ({"slot": 1, "colour": "red"}, "unknown arguments: ['colour']"),
    ({"slot": "1"}, "slot must be int, not str"),
    ({"slot": 1.0}, "slot must be int, not float"),
    ({"slot": True}, "slot must be int, not a boolean"),
    ({"slot": 1, "deadline": False}, "deadline must be int or float, not a boolean"),
    ({"slot": 1, "deadline": "soon"}, "deadline must be int or float, not str"),
    ({"slot": 1, "reason": None}, "reason must be str, not NoneType"),
])
def test_bad_arguments_are_refused_saying_why(args, why):
    with pytest.raises(BadRequest) as refused:
        check_args(SCHEMA, args)
    assert str(refused.value) == why


def test_frames_carry_requests_replies_errors_and_events():
    data = (protocol.request_frame(1, "slot", {"slot": 2}) + protocol.reply_frame(1, {"a": [1]})
            + protocol.error_frame(2, protocol.DENIED, "permission denied: no")
            + protocol.event_frame(3, {"event": "ready"}))
    assert FrameDecoder(protocol.MAX_REPLY_BYTES).feed(data) == [
        {"v": 1, "id": 1, "command": "slot", "args": {"slot": 2}},
        {"v": 1, "id": 1, "ok": True, "result": {"a": [1]}},
        {"v": 1, "id": 2, "ok": False, "code": "denied", "error": "permission denied: no"},
        {"v": 1, "id": 3, "event": {"event": "ready"}},
    ]


def test_a_request_over_the_cap_is_not_built():
    with pytest.raises(FrameTooLarge):
        protocol.request_frame(1, "pause", {"machinetype": "x" * protocol.MAX_REQUEST_BYTES})


# Whatever a client sends, the checks answer with a request or a BadRequest.

msgpack_integers = st.integers(-2**63, 2**64 - 1)
msgpack_values = st.recursive(
    st.none() | st.booleans() | msgpack_integers | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)

near_requests = st.fixed_dictionaries(
    {}, optional={"v": st.sampled_from([1, 1.0, 2, True, "1"]) | msgpack_values,
                  "id": msgpack_integers | msgpack_values,
                  "command": st.sampled_from(sorted(COMMANDS)) | msgpack_values,
                  "args": st.dictionaries(st.sampled_from(["slot", "reason", "deadline", "machinetype", "x"]),
                                          msgpack_values, max_size=3) | msgpack_values,
                  "extra": msgpack_values})


@settings(max_examples=200, deadline=None)
@given(st.one_of(msgpack_values, near_requests))
def test_any_decoded_object_is_a_request_or_a_bad_request(obj):
    # What the server checks has been through msgpack: tuples are lists, and so on.
    obj = msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False)
    try:
        request_id, command, args = check_request(obj)
    except BadRequest:
        return
    assert isinstance(request_id, int) and not isinstance(request_id, bool)
    assert isinstance(command, str) and command and isinstance(args, dict)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(COMMANDS)),
       st.dictionaries(st.sampled_from(["slot", "reason", "deadline", "machinetype", "x"]),
                       msgpack_values, max_size=4))
def test_any_arguments_to_any_command_are_checked_against_its_schema(name, args):
    schema = COMMANDS[name].schema
    try:
        checked = check_args(schema, args)
    except BadRequest:
        return
    # What reaches a handler has exactly the schema's names, each of its types.
    assert set(checked) == set(schema)
    for arg, (types, required, default) in schema.items():
        value = checked[arg]
        if arg in args:
            assert isinstance(value, types) and (bool in types or not isinstance(value, bool))
        else:
            assert not required and value == default
