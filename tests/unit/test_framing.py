"""Length-prefixed msgpack frames: round trips, the size cap, clean errors (vac.ipc.framing)."""

import struct

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from vac.ipc.framing import (
    HEADER, MAX_FRAME_BYTES, ChannelClosed, FrameDecoder, FrameTooLarge, IpcError,
    MalformedFrame, decode_payload, encode_frame,
)

SAMPLES = [
    None,
    0,
    -1,
    2**63 - 1,
    3.25,
    "",
    "slot 03 lhcb-dc-prod running",
    "ünïcödé",
    b"\x00\xff raw bytes",
    [],
    [1, [2, [3]]],
    {},
    {"child_id": "slot-03", "detail": {"state": "running", "since": 12.5}},
    [1, "ready", {"child_id": "reaper", "pid": 4242}],
]


def frame_of(payload):
    return struct.pack("!I", len(payload)) + payload


@pytest.mark.parametrize("obj", SAMPLES, ids=repr)
def test_round_trip(obj):
    assert FrameDecoder().feed(encode_frame(obj)) == [obj]


def test_frame_is_big_endian_length_then_msgpack():
    frame = encode_frame({"a": 1})
    payload = msgpack.packb({"a": 1}, use_bin_type=True)
    assert frame == b"\x00\x00\x00" + bytes([len(payload)]) + payload


def test_frame_fed_one_byte_at_a_time():
    obj = {"child_id": "slot-07", "seq": 12345, "detail": {"x": [1, 2, 3]}}
    frame = encode_frame(obj)
    decoder = FrameDecoder()
    results = [decoder.feed(frame[i:i + 1]) for i in range(len(frame))]
    assert results[:-1] == [[]] * (len(frame) - 1)
    assert results[-1] == [obj]
    assert decoder.buffered == 0


def test_several_frames_in_one_feed_and_a_partial_tail():
    stream = b"".join(encode_frame(obj) for obj in SAMPLES)
    tail = encode_frame("incomplete")[:-2]
    decoder = FrameDecoder()
    assert decoder.feed(stream + tail) == SAMPLES
    assert decoder.buffered == len(tail)
    assert decoder.feed(encode_frame("incomplete")[-2:]) == ["incomplete"]
    assert decoder.buffered == 0


def test_empty_feed_yields_nothing():
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_announced_length_above_the_cap_is_refused_before_buffering():
    decoder = FrameDecoder(max_bytes=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed(HEADER.pack(101) + b"x" * 50)
    assert decoder.buffered == 0


def test_hostile_length_is_refused_from_the_header_alone():
    # A 4 GiB announcement must fail at once, not wait for (and hold) the bytes.
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\xff\xff\xff\xff")
    assert decoder.buffered == 0


def test_a_frame_of_exactly_the_cap_is_accepted():
    payload = msgpack.packb("x" * 50)
    decoder = FrameDecoder(max_bytes=len(payload))
    assert decoder.feed(frame_of(payload)) == ["x" * 50]


@pytest.mark.parametrize("payload", [
    pytest.param(b"\xc1", id="never-used byte 0xc1"),
    pytest.param(b"\x92\x01", id="array cut short"),
    pytest.param(msgpack.packb(1) + msgpack.packb(2), id="trailing data"),
    pytest.param(b"\xa2\xff\xfe", id="invalid utf-8 string"),
    pytest.param(b"\x81\x01\x02", id="map with an integer key"),
    pytest.param(b"", id="empty payload"),
    pytest.param(b"\x91" * 5000 + b"\xc0", id="nested too deep"),
])
def test_payload_that_is_not_one_msgpack_object_is_malformed(payload):
    with pytest.raises(MalformedFrame):
        decode_payload(payload)
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(frame_of(payload))


def test_malformed_frame_is_consumed_so_the_next_one_decodes():
    decoder = FrameDecoder()
    with pytest.raises(MalformedFrame):
        decoder.feed(frame_of(b"\xc1") + encode_frame("next"))
    assert decoder.feed(b"") == ["next"]


@pytest.mark.parametrize("bad, error", [
    (frame_of(b"\xc1"), MalformedFrame),
    (HEADER.pack(MAX_FRAME_BYTES + 1), FrameTooLarge),
])
def test_frames_before_a_bad_one_are_handed_back_with_the_error(bad, error):
    # A child's Ready must not be lost because garbage followed it in the same read.
    decoder = FrameDecoder()
    with pytest.raises(error) as raised:
        decoder.feed(encode_frame("ready") + encode_frame("heartbeat") + bad + encode_frame("after"))
    assert list(raised.value.decoded) == ["ready", "heartbeat"]


def test_an_error_on_the_first_frame_hands_back_nothing():
    with pytest.raises(MalformedFrame) as raised:
        FrameDecoder().feed(frame_of(b"\xc1"))
    assert list(raised.value.decoded) == []


def test_clean_eof_between_frames():
    decoder = FrameDecoder()
    decoder.feed(encode_frame("whole"))
    with pytest.raises(ChannelClosed) as closed:
        decoder.eof()
    assert closed.value.partial is False


@pytest.mark.parametrize("cut", [1, 3, 4, 6])
def test_eof_in_the_middle_of_a_frame_is_partial(cut):
    decoder = FrameDecoder()
    decoder.feed(encode_frame("cut short")[:cut])
    with pytest.raises(ChannelClosed) as closed:
        decoder.eof()
    assert closed.value.partial is True
    assert decoder.buffered == 0


def test_encode_refuses_an_oversize_object():
    assert len(encode_frame("x" * 90, max_bytes=100)) > 90
    with pytest.raises(FrameTooLarge):
        encode_frame("x" * 100, max_bytes=100)
    with pytest.raises(FrameTooLarge):
        encode_frame(b"\x00" * MAX_FRAME_BYTES)


def test_errors_are_distinct_ipc_errors():
    kinds = [FrameTooLarge, MalformedFrame, ChannelClosed]
    assert all(issubclass(kind, IpcError) for kind in kinds)
    # The root tells a peer that closed from one that sent garbage.
    assert not any(issubclass(a, b) for a in kinds for b in kinds if a is not b)


# Property tests: whatever a child writes, the root gets objects or a clean error.

def chunked(data, cuts):
    """Split `data` at the (sorted, in-range) positions `cuts`."""
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def feed_everything(decoder, chunks):
    """Feed chunks until one raises; check the buffer bound after every step."""
    objects = []
    for chunk in chunks:
        try:
            objects.extend(decoder.feed(chunk))
        except IpcError as error:
            objects.extend(error.decoded)
            assert decoder.buffered <= decoder.max_bytes + HEADER.size
            return objects, True
        assert decoder.buffered <= decoder.max_bytes + HEADER.size
    return objects, False


msgpack_objects = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
max_sizes = st.sampled_from([0, 1, 5, 16, 64, MAX_FRAME_BYTES])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8), max_bytes=max_sizes)
def test_any_bytes_yield_objects_or_an_ipc_error(data, cuts, max_bytes):
    feed_everything(FrameDecoder(max_bytes), chunked(data, cuts))


@settings(max_examples=150, deadline=None)
@given(objs=st.lists(msgpack_objects, max_size=5), junk=st.binary(max_size=40),
       cuts=st.lists(st.integers(0, 2000), max_size=8), max_bytes=max_sizes)
def test_valid_frames_then_garbage(objs, junk, cuts, max_bytes):
    # Frames that really parse let the garbage reach deep states of the decoder.
    stream = b"".join(frame_of(msgpack.packb(obj, use_bin_type=True)) for obj in objs) + junk
    feed_everything(FrameDecoder(max_bytes), chunked(stream, cuts))


@settings(max_examples=100, deadline=None)
@given(objs=st.lists(msgpack_objects, max_size=5), junk=st.binary(min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_garbage_never_costs_the_frames_before_it(objs, junk, cuts):
    stream = b"".join(encode_frame(obj) for obj in objs) + junk
    objects, _ = feed_everything(FrameDecoder(), chunked(stream, cuts))
    assert objects[:len(objs)] == objs


@settings(max_examples=100, deadline=None)
@given(objs=st.lists(msgpack_objects, max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_any_split_of_valid_frames_gives_back_the_objects(objs, cuts):
    stream = b"".join(encode_frame(obj) for obj in objs)
    decoder = FrameDecoder()
    objects, failed = feed_everything(decoder, chunked(stream, cuts))
    assert not failed
    assert objects == objs
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(length=st.integers(17, 2**32 - 1), body=st.binary(max_size=64))
def test_any_length_above_the_cap_raises_and_holds_nothing(length, body):
    decoder = FrameDecoder(max_bytes=16)
    with pytest.raises(FrameTooLarge):
        decoder.feed(HEADER.pack(length) + body)
    assert decoder.buffered == 0
