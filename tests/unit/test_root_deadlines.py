"""The root looks at all its children only when one of their deadlines may be due (vac.supervisor.root).

A pool under turnover brings the root a pass with nearly every message; a
pass must not cost a look at every child then. The children are played by
the test over real socketpairs (as in test_root_barrier.py), on a clock the
test moves.
"""

import signal

import pytest

from vac.ipc import messages
from vac.supervisor import notify, root as rootmod
from vac.supervisor.root import Root
from vac.supervisor.tree import ChildSpec, SupervisorSpec

from test_root_barrier import App, Clock, PlayedProcesses, never_run

CHILDREN = 20
TIMEOUT = 30.0


@pytest.fixture
def pool(monkeypatch):
    processes, app, clock = PlayedProcesses(), App(), Clock()
    spec = SupervisorSpec(id="vacd", children=tuple(
        ChildSpec(id=f"slot-{n:02d}", target=never_run, heartbeat_interval=10.0, heartbeat_timeout=TIMEOUT,
                  role="slot") for n in range(CHILDREN)))
    root = Root(spec, app=app, notifier=notify.Notifier(environ={}), processes=processes, clock=clock)
    titles = []
    monkeypatch.setattr(rootmod.proctitle, "set_title", titles.append)
    root._execute(root.tree.start(clock.now))
    looked_at = []
    check_child = root._check_child

    def counted(child_id, live, now):
        looked_at.append(child_id)
        check_child(child_id, live, now)

    root._check_child = counted
    root._pass()
    assert sorted(looked_at) == sorted(root.live), "the first pass looks at every child"
    looked_at.clear()
    channels = {root.by_pid[pid]: channel for pid, channel in processes.children.items()}
    yield root, channels, clock, looked_at, titles
    root.selector.close()


def stopped(root):
    return {root.by_pid[pid] for pid, signum in root.processes.signals if signum == signal.SIGTERM}


def test_messages_before_any_deadline_cost_no_look_at_the_children(pool):
    root, channels, clock, looked_at, _ = pool
    for number in range(50):
        clock.now += 0.1
        channels["slot-03"].send(messages.StateReport(child_id="slot-03", state=f"s{number}", detail={}))
        root._pass()
    assert root.app.seen == [f"s{number}" for number in range(50)]
    assert looked_at == []


def test_a_silent_child_is_still_killed_once_its_heartbeats_are_overdue(pool):
    root, channels, clock, looked_at, _ = pool
    started = clock.now
    while clock.now < started + TIMEOUT + 1:
        clock.now += 2.0
        for child_id, channel in channels.items():
            if child_id != "slot-07":
                channel.send(messages.Heartbeat(child_id=child_id, seq=1))
        root._pass()
    assert stopped(root) == {"slot-07"}
    assert root._wake_at <= clock.now + 5.0
    # It was looked at when its deadline came, not at every pass.
    assert 0 < looked_at.count("slot-07") <= 2


def test_an_earlier_state_deadline_in_a_heartbeat_is_kept_to(pool):
    root, channels, clock, _, _ = pool
    due = clock.now + 3.0
    channels["slot-11"].send(messages.Heartbeat(child_id="slot-11", seq=1, state="stopping", deadline=due))
    root._pass()
    assert root._wake_at <= due + TIMEOUT, "the next wake-up takes the new deadline"
    clock.now = due + TIMEOUT + 0.5
    for child_id, channel in channels.items():
        # Every child heartbeats; slot-11 still carries the deadline it has outlived.
        channel.send(messages.Heartbeat(child_id=child_id, seq=2, state="stopping" if child_id == "slot-11" else None,
                                        deadline=due if child_id == "slot-11" else None))
    root._pass()
    assert stopped(root) == {"slot-11"}


def test_a_child_stopped_while_the_others_are_looked_at_has_its_shutdown_budget_kept(pool):
    root, channels, clock, _, _ = pool
    clock.now += TIMEOUT + 1           # every child is silent past its timeout
    root._pass()
    assert stopped(root) == set(channels)
    budget = root.tree.leaves["slot-00"].spec.shutdown
    clock.now += budget + 0.1
    root._pass()
    killed = {root.by_pid[pid] for pid, signum in root.processes.signals if signum == signal.SIGKILL}
    assert killed == set(channels)


def test_the_title_follows_the_slots_at_most_every_half_second_and_catches_up(pool):
    root, channels, clock, _, titles = pool
    titles.clear()
    clock.now += rootmod.SUMMARY_MIN_SECONDS
    channels["slot-05"].send(messages.StateReport(child_id="slot-05", state="running", detail={}))
    root._pass()
    assert titles == ["supervisor [20 slots: 1 running, 19 idle, 0 backoff]"]
    clock.now += 0.1
    channels["slot-06"].send(messages.StateReport(child_id="slot-06", state="running", detail={}))
    root._pass()
    assert len(titles) == 1, "too soon after the last title"
    assert root._wake_at <= clock.now + rootmod.SUMMARY_MIN_SECONDS, "a pass is planned to bring it up to date"
    clock.now = root._wake_at
    root._pass()
    assert titles[-1] == "supervisor [20 slots: 2 running, 18 idle, 0 backoff]"
