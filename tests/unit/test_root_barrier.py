"""The root's loop behind its fault barriers, and its output to children (vac.supervisor.root).

The real Root runs pass by pass over real socketpairs; the children are
played by the test through their WorkerChannel ends, so nothing is forked.
"""

import logging
import signal

import pytest

from vac.ipc import messages
from vac.ipc.channel import RootChannel, WorkerChannel, channel_pair
from vac.ipc.framing import encode_frame
from vac.supervisor import notify
from vac.supervisor.process import Spawned
from vac.supervisor.root import Root
from vac.supervisor.tree import ChildSpec, SupervisorSpec
from vac.vocabulary.child_states import ChildState


def never_run(channel, args):
    """Stands for a worker entry point: these children are played by the test."""


class PlayedProcesses:
    """Processes whose spawn hands the child's end of the channel to the test."""

    def __init__(self):
        self.children = {}
        self.signals = []
        self._next_pid = 4000

    def spawn(self, child_main):
        root_sock, worker_sock = channel_pair()
        self._next_pid += 1
        self.children[self._next_pid] = WorkerChannel(worker_sock, send_timeout=1.0)
        return Spawned(self._next_pid, RootChannel(root_sock), None)

    def signal(self, pid, signum):
        self.signals.append((pid, signum))

    def reap(self):
        return []


class App:
    """The factory's place in the loop: takes messages, gives messages to send."""

    def __init__(self):
        self.seen = []
        self.outbox = []
        self.ticks = 0

    def on_message(self, child_id, msg):
        if msg.state == "bug":
            raise KeyError("a factory bug")
        self.seen.append(msg.state)

    def tick(self, may_start):
        self.ticks += 1
        out, self.outbox = self.outbox, []
        return out

    def next_deadline(self):
        return None

    def on_child_exit(self, child_id):
        pass


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def loop():
    processes, app, clock = PlayedProcesses(), App(), Clock()
    spec = SupervisorSpec(id="vacd", children=(ChildSpec(id="keeper", target=never_run),))
    root = Root(spec, app=app, notifier=notify.Notifier(environ={}), processes=processes,
                clock=clock)
    root._execute(root.tree.start(clock.now))
    [keeper] = processes.children.values()
    events = []
    root.add_observer(events.append)
    yield root, keeper, app, events
    root.selector.close()


def test_a_message_that_breaks_the_factory_is_dropped_and_the_loop_goes_on(loop, caplog):
    root, keeper, app, _ = loop
    for state in ("before", "bug", "after"):
        keeper.send(messages.StateReport(child_id="keeper", state=state, detail={}))
    root._pass()
    assert app.seen == ["before", "after"]
    assert app.ticks == 1, "the pass went on to the factory's tick"
    assert root.tree.leaves["keeper"].failure is None, "a fault of the root's own is not the child's"
    [fault] = [r for r in caplog.records if "fault while serving" in r.getMessage()]
    pid = root.live["keeper"].pid
    assert f"keeper (pid {pid}) message state" in fault.getMessage() and "KeyError" in fault.getMessage()
    assert fault.exc_info is not None, "logged with its traceback"


def test_a_message_the_root_cannot_encode_is_dropped_not_the_child(loop, caplog):
    root, keeper, app, events = loop
    app.outbox = [("keeper", messages.Stop(reason="lone \ud800")),
                  ("keeper", messages.Repositories(names=["r" * 70_000])),
                  ("keeper", messages.Repositories(names=["cvmfs.example.org"]))]
    root._pass()
    assert keeper.receive(timeout=1.0) == messages.Repositories(names=["cvmfs.example.org"])
    assert [e["tag"] for e in events if e["event"] == "dropped"] == ["stop", "repositories"]
    assert root.tree.leaves["keeper"].state is ChildState.STARTING
    assert caplog.text.count("message dropped") == 2


def test_a_large_message_is_delivered_whole_without_a_further_send(loop):
    root, keeper, _, _ = loop
    big = messages.Repositories(names=[f"{n:05d}." + "r" * 50 for n in range(10_000)])  # ~570 kB
    assert root.send("keeper", big)
    assert root.live["keeper"].channel.wants_write, "the socket took only part of it"
    got = None
    for _ in range(200):
        root._wake_at = root.clock()   # a pass that waits for nothing but what is ready
        root._pass()                   # the loop alone: no further send to this child
        got = keeper.receive(timeout=0.01)
        if got is not None:
            break
    assert got == big
    assert not root.live["keeper"].channel.wants_write
    assert not root.live["keeper"].writing, "the loop no longer waits for writability"


def test_an_observer_or_service_that_fails_costs_only_its_own_call(loop, caplog):
    root, _, app, events = loop

    def broken_observer(event):
        raise RuntimeError("observer bug")

    class BrokenService:
        def next_deadline(self):
            raise ValueError("deadline bug")

        def on_pass(self, now):
            raise ValueError("service bug")

    root.observers.insert(0, broken_observer)
    root.add_service(BrokenService())
    root.emit("ping", child="keeper")
    assert [e["event"] for e in events] == ["ping"], "the observer after the broken one got it"
    root._pass()
    assert app.ticks == 1
    assert "observer bug" in caplog.text and "service bug" in caplog.text
    assert "deadline bug" in caplog.text
    assert all(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


def test_a_message_out_of_its_bounds_fails_the_child_that_sent_it(loop):
    root, keeper, app, events = loop
    # Well-formed msgpack, a known tag, every field of its type: only the bound is broken.
    keeper.sock.sendall(encode_frame([messages.PROTOCOL_VERSION, "state",
                                      {"child_id": "keeper", "state": "s" * 65, "detail": {}}]))
    root._pass()
    assert app.seen == []
    [bad] = [e for e in events if e["event"] == "bad_frame"]
    assert bad["child"] == "keeper" and "state.state: a string of 65 characters" in bad["error"]
    assert root.tree.leaves["keeper"].state is ChildState.STOPPING
    assert (root.live["keeper"].pid, signal.SIGTERM) in root.processes.signals
