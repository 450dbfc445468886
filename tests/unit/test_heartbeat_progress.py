"""Heartbeats that prove progress: a worker's loop always takes what arrived, each heartbeat
carries the state and its deadline, and the supervisor's verdict on a child whose state
outlives that deadline (vac.workers.harness, vac.workers.slot_worker, vac.supervisor.policy)."""

import os
import signal
import time

import pytest

from vac import logs
from vac.ipc import messages
from vac.ipc.channel import RootChannel, WorkerChannel, channel_pair
from vac.supervisor.policy import overdue_by
from vac.workers.harness import WorkerLoop
from vac.workers.slot_worker import heartbeat_progress

from slot_fakes import World


@pytest.fixture
def loop_and_root():
    """A WorkerLoop on one end of a real socket pair, the root's channel on the other."""
    root_sock, worker_sock = channel_pair()
    root, worker = RootChannel(root_sock), WorkerChannel(worker_sock, send_timeout=1.0)
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_wakeup = signal.set_wakeup_fd(-1)
    loop = WorkerLoop(worker, {"child_id": "slot-03", "heartbeat_interval": 60.0}, role="slot 03")
    yield loop, root
    signal.set_wakeup_fd(previous_wakeup)
    signal.signal(signal.SIGTERM, previous_term)
    logs.set_role("test")
    root.close()
    worker.close()


def receive(root, count, timeout=2.0):
    deadline = time.monotonic() + timeout
    got = []
    while len(got) < count and time.monotonic() < deadline:
        got.extend(root.receive())
    return got


def test_a_zero_timeout_still_takes_what_has_arrived(loop_and_root):
    # A loop whose timers say "now" waits 0 s: it must still see the root's
    # messages and its finished jobs, or it spins without ever collecting them.
    loop, root = loop_and_root
    job_done_r, job_done_w = os.pipe()
    try:
        loop.ready()
        root.send(messages.LowerShutdown(uuid="11111111-1111-4111-8111-111111111111", shutdown_at=5))
        os.write(job_done_w, b"\0")
        deadline = time.monotonic() + 2.0
        received, ready = [], set()
        while not (received and ready) and time.monotonic() < deadline:
            received += loop.wait(0, fds=[job_done_r])
            ready |= loop.ready_fds
        assert received == [messages.LowerShutdown(uuid="11111111-1111-4111-8111-111111111111", shutdown_at=5)]
        assert ready == {job_done_r}
    finally:
        os.close(job_done_r)
        os.close(job_done_w)


def test_heartbeats_carry_the_state_and_the_deadline_it_must_change_by(loop_and_root):
    loop, root = loop_and_root
    loop.progress = lambda: ("stopping", 4321.5)
    loop.heartbeat_if_due()
    assert receive(root, 1) == [messages.Heartbeat(child_id="slot-03", seq=1, state="stopping", deadline=4321.5)]


def test_a_helper_s_heartbeats_say_nothing_is_due(loop_and_root):
    loop, root = loop_and_root
    loop.heartbeat_if_due()
    assert receive(root, 1) == [messages.Heartbeat(child_id="slot-03", seq=1, state=None, deadline=None)]


@pytest.mark.parametrize("heartbeat", [
    messages.Heartbeat(child_id="slot-00", seq=7),
    messages.Heartbeat(child_id="slot-00", seq=7, state="cleaning", deadline=123.25),
])
def test_heartbeats_survive_the_wire(heartbeat):
    assert messages.decode(messages.encode(heartbeat)) == heartbeat


@pytest.mark.parametrize("deadline", ["soon", float("nan"), float("inf")])
def test_a_heartbeat_with_a_deadline_that_is_no_time_is_refused(deadline):
    wire = messages.encode(messages.Heartbeat(child_id="slot-00", seq=7))
    wire[2]["deadline"] = deadline
    with pytest.raises(messages.MalformedMessage):
        messages.decode(wire)


def test_a_slot_s_deadline_reaches_the_root_on_the_monotonic_clock(tmp_path):
    world = World(tmp_path)
    world.boot()
    assert heartbeat_progress(world.slot) == ("idle", None)
    spec = world.place()
    before = time.monotonic()
    state, deadline = heartbeat_progress(world.slot)
    after = time.monotonic()
    # Running, it must have moved on by its shutdown time, whatever the wall clock does meanwhile.
    until_shutdown = spec["shutdown_at"] - world.clock()
    assert state == "running" and before + until_shutdown <= deadline <= after + until_shutdown


@pytest.mark.parametrize("deadline, now, overdue", [
    (None, 10 ** 9, None),       # nothing due (idle, or a helper): never hung for its state
    (100.0, 90.0, None),
    (100.0, 130.0, None),        # past the deadline, within the margin: its own last try
    (100.0, 130.5, 30.5),        # past both: hung, however regularly it heartbeats
])
def test_a_child_is_hung_once_its_state_outlives_its_deadline_by_the_margin(deadline, now, overdue):
    assert overdue_by(deadline, now, margin=30.0) == overdue
