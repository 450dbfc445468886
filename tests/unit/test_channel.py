"""Message channels over a real socketpair, no processes (vac.ipc.channel)."""

import socket
import time

import pytest

from vac.ipc import channel as channel_module
from vac.ipc.channel import RootChannel, WorkerChannel, channel_pair
from vac.ipc.framing import (
    HEADER, ChannelClosed, FrameTooLarge, IpcError, MalformedFrame, PeerNotReading, Unencodable,
    encode_frame,
)
from vac.ipc.messages import (
    Heartbeat, MalformedMessage, Ready, Repositories, StateReport, Stop, UnknownMessage,
)


def big_message(size):
    """A message of about `size` bytes, within every bound of its type."""
    return Repositories(names=["r" * 50_000] * (size // 50_000))


@pytest.fixture
def pair():
    root_sock, worker_sock = channel_pair()
    root, worker = RootChannel(root_sock), WorkerChannel(worker_sock, send_timeout=1.0)
    yield root, worker
    root.close()
    worker.close()


def receive_until(root, count, timeout=2.0):
    """Collect `count` messages from the non-blocking side, within `timeout` s."""
    deadline = time.monotonic() + timeout
    got = []
    while len(got) < count and time.monotonic() < deadline:
        got.extend(root.receive())
    return got


def test_pair_is_a_unix_stream():
    a, b = channel_pair()
    with a, b:
        assert a.family == socket.AF_UNIX and a.type == socket.SOCK_STREAM


def test_worker_to_root(pair):
    root, worker = pair
    sent = [Ready(child_id="slot-00", pid=123), Heartbeat(child_id="slot-00", seq=1),
            StateReport(child_id="slot-00", state="idle", detail={"why": "no work"})]
    for msg in sent:
        worker.send(msg)
    assert receive_until(root, 3) == sent


def test_root_to_worker(pair):
    root, worker = pair
    root.send(Stop(reason="shutdown"))
    root.send(Stop(reason="again"))
    assert not root.wants_write
    assert worker.receive(timeout=1.0) == Stop(reason="shutdown")
    assert worker.receive(timeout=1.0) == Stop(reason="again")


def test_root_receive_never_blocks(pair):
    root, _ = pair
    started = time.monotonic()
    assert root.receive() == []
    assert time.monotonic() - started < 0.5


def test_worker_receive_times_out_with_none(pair):
    _, worker = pair
    started = time.monotonic()
    assert worker.receive(timeout=0.05) is None
    assert 0.04 <= time.monotonic() - started < 1.0


def receive_until_failure(root, timeout=2.0):
    """Read until the channel records a failure; return the messages received before it."""
    deadline = time.monotonic() + timeout
    got = []
    while root.failure is None and time.monotonic() < deadline:
        got.extend(root.receive())
    return got


@pytest.mark.parametrize("garbage, error", [
    (HEADER.pack(3) + b"\xc1\xc1\xc1", MalformedFrame),
    (HEADER.pack(0xFFFFFFFF), FrameTooLarge),
    (encode_frame({"not": "a message"}), MalformedMessage),
    (encode_frame([1, "fire", {}]), UnknownMessage),
    (encode_frame([1, "ready", {"child_id": "slot-00", "pid": "123"}]), MalformedMessage),
])
def test_garbage_from_the_worker_is_an_ipc_error_at_the_root(pair, garbage, error):
    root, worker = pair
    before = Ready(child_id="slot-00", pid=123)
    worker.send(before)
    worker.sock.sendall(garbage)
    worker.send(Heartbeat(child_id="slot-00", seq=1))
    # What came before the garbage still counts; nothing after it does.
    assert receive_until_failure(root) == [before]
    assert isinstance(root.failure, error) and isinstance(root.failure, IpcError)
    assert root.receive() == []


def test_a_healthy_channel_has_no_failure(pair):
    root, worker = pair
    worker.send(Heartbeat(child_id="slot-00", seq=1))
    assert receive_until(root, 1) == [Heartbeat(child_id="slot-00", seq=1)]
    assert root.failure is None


def test_worker_eof_is_channel_closed_at_the_root(pair):
    root, worker = pair
    worker.close()
    assert root.receive() == []
    assert isinstance(root.failure, ChannelClosed)
    assert root.failure.partial is False


def test_eof_in_the_middle_of_a_frame_is_reported_partial(pair):
    root, worker = pair
    worker.sock.sendall(encode_frame([1, "stop", {"reason": "x"}])[:5])
    worker.close()
    assert root.receive() == []
    assert isinstance(root.failure, ChannelClosed)
    assert root.failure.partial is True


def test_messages_sent_before_eof_are_delivered(pair):
    # A child's last report before it exits must reach the root, not vanish with the EOF.
    root, worker = pair
    last = StateReport(child_id="slot-02", state="finished", detail={"exit": 0})
    worker.send(last)
    worker.close()
    assert root.receive() == [last]
    assert isinstance(root.failure, ChannelClosed)
    assert root.receive() == []


def test_root_eof_is_channel_closed_at_the_worker(pair):
    root, worker = pair
    root.close()
    with pytest.raises(ChannelClosed):
        worker.receive(timeout=1.0)


def test_worker_sending_to_a_closed_root_is_channel_closed(pair):
    root, worker = pair
    root.close()
    with pytest.raises(ChannelClosed):
        for _ in range(100):
            worker.send(Heartbeat(child_id="slot-00", seq=1))


def test_root_sending_to_a_closed_worker_is_channel_closed(pair):
    root, worker = pair
    worker.close()
    with pytest.raises(ChannelClosed):
        root.send(Stop(reason="x"))


def test_a_worker_that_never_reads_cannot_block_or_bloat_the_root(pair):
    root, _ = pair
    big = big_message(200_000)
    started = time.monotonic()
    with pytest.raises(PeerNotReading):
        for _ in range(channel_module.MAX_PENDING_OUTPUT // 200_000 + 10):
            root.send(big)
    assert time.monotonic() - started < 2.0
    assert root.wants_write
    # Held output stays near the cap: at most one frame beyond it.
    assert len(root._output) <= channel_module.MAX_PENDING_OUTPUT + 200_100
    assert root.flush() is False


def test_queued_output_drains_once_the_worker_reads(pair):
    root, worker = pair
    big = big_message(100_000)
    for _ in range(10):
        root.send(big)
    assert root.wants_write
    received = 0
    deadline = time.monotonic() + 5.0
    while received < 10 and time.monotonic() < deadline:
        root.flush()
        if worker.receive(timeout=0.05) == big:
            received += 1
    assert received == 10
    assert not root.wants_write


def test_root_refuses_to_send_an_oversize_message():
    root_sock, worker_sock = channel_pair()
    root = RootChannel(root_sock, max_frame_bytes=64)
    try:
        with pytest.raises(FrameTooLarge):
            root.send(Stop(reason="z" * 100))
        assert not root.wants_write
    finally:
        root.close()
        worker_sock.close()


def test_worker_refuses_to_send_an_oversize_message():
    root_sock, worker_sock = channel_pair()
    worker = WorkerChannel(worker_sock, max_frame_bytes=64)
    try:
        with pytest.raises(FrameTooLarge):
            worker.send(StateReport(child_id="slot-00", state="s", detail={"x": "z" * 100}))
    finally:
        worker.close()
        root_sock.close()


def test_worker_closing_with_unread_input_is_channel_closed_at_the_root(pair):
    # The kernel reports this as a reset, not a plain EOF; the root sees the same closed channel.
    root, worker = pair
    root.send(Stop(reason="never read"))
    worker.close()
    assert root.receive() == []
    assert isinstance(root.failure, ChannelClosed)


def test_root_closing_with_unread_input_is_channel_closed_at_the_worker(pair):
    # A root that dies with a heartbeat unread must not crash its workers with a reset.
    root, worker = pair
    worker.send(Heartbeat(child_id="slot-00", seq=1))
    root.close()
    with pytest.raises(ChannelClosed):
        worker.receive(timeout=1.0)


@pytest.mark.parametrize("msg", [
    Stop(reason="lone \ud800 surrogate"),
    StateReport(child_id="slot-00", state="s", detail={"fqan": "\udfff"}),
    StateReport(child_id="slot-00", state="s", detail={"big": 2**64}),
    StateReport(child_id="slot-00", state="s", detail={"obj": object()}),
    Repositories(names=["r" * 70_000]),
], ids=["surrogate", "nested surrogate", "int beyond 64 bits", "not plain data", "over its bounds"])
def test_a_message_that_cannot_be_encoded_is_refused_in_the_sender_and_nothing_is_queued(pair, msg):
    root, worker = pair
    with pytest.raises(Unencodable):
        root.send(msg)
    assert not root.wants_write
    with pytest.raises(Unencodable):
        worker.send(msg)
    # Both ends go on as if it had never been tried.
    root.send(Stop(reason="after"))
    worker.send(Heartbeat(child_id="slot-00", seq=2))
    assert worker.receive(timeout=1.0) == Stop(reason="after")
    assert receive_until(root, 1) == [Heartbeat(child_id="slot-00", seq=2)]
    assert root.failure is None


def test_output_the_socket_did_not_take_is_written_by_flush_alone(pair):
    # The root's loop calls flush() when the socket turns writable: no further send is needed.
    root, worker = pair
    big = big_message(550_000)
    root.send(big)
    assert root.wants_write, "a socketpair's buffer holds less than 550 kB"
    got = None
    deadline = time.monotonic() + 5.0
    while got is None and time.monotonic() < deadline:
        root.flush()
        got = worker.receive(timeout=0.05)
    assert got == big and not root.wants_write


def test_discarded_output_is_no_longer_wanted_written(pair):
    root, _ = pair
    root.send(big_message(550_000))
    root.discard_output()
    assert not root.wants_write and root.flush() is True
