"""Supervision decisions as scripted histories through Tree with a fake clock (vac.supervisor.tree).

Each test plays the root: it feeds what happened to the OS processes and
compares the Start and Stop actions the tree returns and the child states.
"""

import signal

import pytest

from vac.supervisor.policy import (
    BreakerPolicy, ExitStatus, HelperRestartPolicy, Intensity, SlotRestartPolicy,
)
from vac.vocabulary.child_states import EXIT_BAD_SPEC, ChildState, Restart, Strategy
from vac.supervisor.tree import (
    BRUTAL_KILL, Node, ChildSpec, PoolPolicy, Start, Stop, SupervisorSpec, Tree, TreeSpecError,
    validate_tree,
)

T0 = 5000.0
CRASH = ExitStatus(code=1)
CLEAN = ExitStatus(code=0)
TERMINATED = ExitStatus(signal=signal.SIGTERM)
KILLED = ExitStatus(signal=signal.SIGKILL)
BAD_SPEC = ExitStatus(code=EXIT_BAD_SPEC)

RUNNING, STARTING, STOPPING = ChildState.RUNNING, ChildState.STARTING, ChildState.STOPPING
STOPPED, BACKOFF, FATAL, EXITED = ChildState.STOPPED, ChildState.BACKOFF, ChildState.FATAL, ChildState.EXITED


def run_child(channel, args):
    """Stands for a worker entry point; the tree never calls it."""


def child(child_id, restart=Restart.PERMANENT, **fields):
    return ChildSpec(id=child_id, target=run_child, restart=restart, **fields)


# Most tests here are about strategies and intensity: their helpers restart at
# once. The delay itself is tested with the default policy below.
AT_ONCE = HelperRestartPolicy(first_delay=0.0, max_delay=0.0)


def group(group_id, *children, **fields):
    fields.setdefault("helper_restart", AT_ONCE)
    return SupervisorSpec(id=group_id, children=children, **fields)


def pool(pool_id, count, slot_restart=SlotRestartPolicy(), breaker=BreakerPolicy(), **fields):
    return SupervisorSpec(
        id=pool_id, pool=PoolPolicy(slot_restart=slot_restart, breaker=breaker),
        children=tuple(child(f"s{n}", Restart.TRANSIENT, role="slot") for n in range(count)),
        **fields)


def starts(*ids):
    return [Start(i) for i in ids]


def stops(*ids):
    return [Stop(i) for i in ids]


class Script:
    """The root's side of the conversation, with a fake clock."""

    def __init__(self, spec, now=T0):
        self.tree = Tree(spec)
        self.now = now
        self.pids = {}
        self.log = []           # every action returned, in order

    def _record(self, actions):
        self.log.extend(actions)
        for action in actions:
            if isinstance(action, Start):
                self.pids[action.child_id] = self.pids.get(action.child_id, 100) + 1
                self.tree.started(action.child_id, self.pids[action.child_id])
        return actions

    def start(self, ready=True):
        actions = self._record(self.tree.start(self.now))
        if ready:
            self.ready(*[a.child_id for a in actions])
        return actions

    def ready(self, *ids):
        for child_id in ids:
            self.tree.ready(child_id, self.now)

    def exit(self, child_id, status=CRASH):
        return self._record(self.tree.exited(child_id, status, self.now))

    def fail(self, child_id, reason="no heartbeat"):
        return self._record(self.tree.fail(child_id, reason))

    def at(self, offset):
        """Move the clock to T0 + offset and collect what has fallen due."""
        self.now = T0 + offset
        return self._record(self.tree.due(self.now))

    def reset(self, child_id):
        return self._record(self.tree.reset(child_id, self.now))

    def state(self, child_id):
        return self.tree.leaves[child_id].state

    def states(self, *ids):
        return [self.state(i) for i in ids]

    def starts_of(self, child_id):
        return self.tree.leaves[child_id].starts


# Strategies.

def test_start_order_is_tree_order():
    script = Script(group("top", group("services", child("a"), child("b")), pool("slots", 2), child("z")))
    assert script.start(ready=False) == starts("a", "b", "s0", "s1", "z")
    assert script.states("a", "s1", "z") == [STARTING] * 3
    script.ready("a")
    assert script.state("a") is RUNNING


def test_one_for_one_restarts_only_the_failed_child():
    script = Script(group("top", child("a"), child("b"), child("c")))
    script.start()
    assert script.exit("b") == starts("b")
    assert script.states("a", "b", "c") == [RUNNING, STARTING, RUNNING]
    assert [script.starts_of(i) for i in "abc"] == [1, 2, 1]


def test_rest_for_one_stops_later_siblings_in_reverse_then_restarts_in_order():
    script = Script(group("top", child("a"), child("b"), child("c"), child("d"),
                          strategy=Strategy.REST_FOR_ONE))
    script.start()
    assert script.exit("b") == stops("d", "c")
    assert script.states("a", "b", "c", "d") == [RUNNING, STOPPED, STOPPING, STOPPING]
    # Nothing starts while a later sibling still runs.
    assert script.exit("d", TERMINATED) == []
    assert script.at(1) == []
    assert script.exit("c", TERMINATED) == starts("b", "c", "d")
    assert script.state("a") is RUNNING and script.starts_of("a") == 1
    assert not any(isinstance(a, Stop) and a.child_id == "a" for a in script.log)


def test_rest_for_one_of_the_last_child_restarts_only_it():
    script = Script(group("top", child("a"), child("b"), strategy=Strategy.REST_FOR_ONE))
    script.start()
    assert script.exit("b") == starts("b")


def test_rest_for_one_a_sibling_crashing_while_stopping_is_restarted_once():
    script = Script(group("top", child("a"), child("b"), child("c"), strategy=Strategy.REST_FOR_ONE))
    script.start()
    assert script.exit("a") == stops("c", "b")
    assert script.exit("b", CRASH) == []
    assert script.exit("c", KILLED) == starts("a", "b", "c")
    assert [script.starts_of(i) for i in "abc"] == [2, 2, 2]


def test_one_for_all_stops_every_sibling_then_restarts_all_in_order():
    script = Script(group("top", child("a"), child("b"), child("c"), strategy=Strategy.ONE_FOR_ALL))
    script.start()
    assert script.exit("b") == stops("c", "a")
    assert script.exit("a", TERMINATED) == []
    assert script.exit("c", TERMINATED) == starts("a", "b", "c")


def test_a_child_still_starting_is_stopped_too():
    script = Script(group("top", child("a"), child("b"), strategy=Strategy.ONE_FOR_ALL))
    script.start(ready=False)
    assert script.exit("a") == stops("b")


# Restart types and exit codes.

@pytest.mark.parametrize("restart, status, actions, state", [
    (Restart.PERMANENT, CLEAN, starts("a"), STARTING),
    (Restart.PERMANENT, CRASH, starts("a"), STARTING),
    (Restart.TRANSIENT, CLEAN, [], EXITED),
    (Restart.TRANSIENT, CRASH, starts("a"), STARTING),
    (Restart.TRANSIENT, KILLED, starts("a"), STARTING),
    (Restart.TEMPORARY, CLEAN, [], EXITED),
    (Restart.TEMPORARY, CRASH, [], EXITED),
    (Restart.PERMANENT, BAD_SPEC, [], FATAL),
    (Restart.TRANSIENT, BAD_SPEC, [], FATAL),
])
def test_restart_types(restart, status, actions, state):
    script = Script(group("top", child("a", restart), child("b")))
    script.start()
    assert script.exit("a", status) == actions
    assert script.state("a") is state
    assert script.state("b") is RUNNING


def test_bad_spec_in_the_pool_parks_fatal_without_backoff():
    script = Script(group("top", pool("slots", 2)))
    script.start()
    assert script.exit("s1", BAD_SPEC) == []
    assert script.state("s1") is FATAL
    assert script.tree.next_deadline() is None


def test_a_child_failed_by_the_supervisor_is_stopped_and_restarted_even_after_exit_0():
    script = Script(group("top", child("a", Restart.TRANSIENT), child("b")))
    script.start()
    assert script.fail("a") == stops("a")
    assert script.state("a") is STOPPING
    assert script.fail("a") == []          # asked once is enough
    assert script.exit("a", CLEAN) == starts("a")
    assert script.fail("b") == stops("b")


def test_failing_a_child_that_is_not_alive_does_nothing():
    script = Script(group("top", child("a", Restart.TEMPORARY)))
    script.start()
    script.exit("a")
    assert script.fail("a") == []
    assert script.state("a") is EXITED


def test_a_group_restart_skips_temporary_children_that_ended():
    script = Script(group("top", child("a"), child("t", Restart.TEMPORARY), child("c"),
                          strategy=Strategy.ONE_FOR_ALL))
    script.start()
    assert script.exit("t") == []
    assert script.exit("a") == stops("c")
    assert script.exit("c", TERMINATED) == starts("a", "c")


# Intensity and escalation.

def test_intensity_exceeded_in_a_nested_group_restarts_the_whole_group():
    services = group("services", child("a"), child("b"), child("c"), intensity=Intensity(2, 10.0))
    script = Script(group("top", services, pool("slots", 2), intensity=Intensity(5, 100.0)))
    script.start()
    assert script.exit("b") == starts("b")
    script.at(1)
    assert script.exit("b") == starts("b")
    script.at(2)
    # The third restart within 10 s is too many for services: top restarts it as a group.
    assert script.exit("b") == stops("c", "a")
    assert script.exit("c", TERMINATED) == []
    assert script.exit("a", TERMINATED) == starts("a", "b", "c")
    assert script.states("s0", "s1") == [RUNNING, RUNNING]
    assert not script.tree.degraded
    # The group got a fresh intensity record.
    script.ready("a", "b", "c")
    assert script.exit("a") == starts("a")


def test_restarts_spread_wider_than_the_period_never_escalate():
    script = Script(group("top", group("services", child("a"), child("b"), intensity=Intensity(1, 10.0)),
                          intensity=Intensity(0, 100.0)))
    script.start()
    for offset in (0, 11, 22, 33):
        script.at(offset)
        assert script.exit("a") == starts("a")
    assert not script.tree.degraded


def test_escalation_at_the_top_never_stops_the_slot_pool_and_degrades():
    services = group("services", child("a"), child("b"), intensity=Intensity(0, 10.0))
    script = Script(group("top", services, pool("slots", 3), intensity=Intensity(1, 100.0),
                          degraded_retry=60.0))
    script.start()
    after_start = len(script.log)
    # First escalation: top may restart services once.
    assert script.exit("a") == stops("b")
    assert script.exit("b", TERMINATED) == starts("a", "b")
    script.at(1)
    # Second: top's intensity is exhausted too. Services stop and wait; slots stay.
    assert script.exit("a") == stops("b")
    assert script.tree.degraded
    assert script.exit("b", TERMINATED) == []
    assert script.states("a", "b") == [STOPPED, STOPPED]
    assert script.states("s0", "s1", "s2") == [RUNNING] * 3
    assert script.tree.next_deadline() == T0 + 1 + 60.0
    assert script.at(60.9) == []
    assert script.at(61) == starts("a", "b")
    assert [a for a in script.log[after_start:] if a.child_id.startswith("s")] == []


def test_degraded_clears_after_the_helpers_run_well_again():
    services = group("services", child("a"), child("b"), intensity=Intensity(0, 10.0))
    script = Script(group("top", services, pool("slots", 1), intensity=Intensity(0, 50.0),
                          degraded_retry=30.0))
    script.start()
    script.exit("a")
    script.exit("b", TERMINATED)
    assert script.tree.degraded
    assert script.at(30) == starts("a", "b")
    script.ready("a", "b")
    # Well means: twice the top period since the trouble, and each helper up that long.
    assert script.at(129) == [] and script.tree.degraded
    script.at(130)
    assert not script.tree.degraded


def test_degraded_stays_while_a_helper_keeps_failing():
    services = group("services", child("a"), child("b"), intensity=Intensity(0, 10.0))
    script = Script(group("top", services, intensity=Intensity(0, 50.0), degraded_retry=30.0))
    script.start()
    script.exit("a")
    script.exit("b", TERMINATED)
    script.at(30)
    script.ready("b")          # a never gets ready
    script.at(500)
    assert script.tree.degraded


# The slot pool.

BACKOFF_POLICY = SlotRestartPolicy(healthy_after=10.0, first_delay=1.0, max_delay=4.0, max_failed_starts=5)
QUIET_BREAKER = BreakerPolicy(crashes=100, window=10.0, pause=30.0)


def test_pool_backoff_grows_per_slot_then_fatal_and_reset_revives():
    script = Script(group("top", pool("slots", 3, BACKOFF_POLICY, QUIET_BREAKER)))
    script.start()
    delays = []
    offset = 0.0
    for _ in range(4):
        offset += 0.5                       # dies half a second after starting, never ready
        script.at(offset)
        assert script.exit("s1") == []
        assert script.state("s1") is BACKOFF
        wait = script.tree.next_deadline() - script.now
        delays.append(wait)
        assert script.at(offset + wait - 0.01) == []
        offset += wait
        assert script.at(offset) == starts("s1")
    assert delays == [1.0, 2.0, 4.0, 4.0]
    script.at(offset + 0.5)
    assert script.exit("s1") == []
    assert script.state("s1") is FATAL
    assert script.tree.next_deadline() is None
    assert script.at(offset + 3600) == []
    # Only s1 was ever touched.
    assert {a.child_id for a in script.log[3:]} == {"s1"}   # after the three first starts
    assert script.states("s0", "s2") == [RUNNING, RUNNING]
    # An operator reset revives it with a clean record.
    assert script.reset("s0") == []
    assert script.reset("s1") == starts("s1")
    assert script.tree.leaves["s1"].failed_starts == 0
    assert script.exit("s1") == [] and script.tree.next_deadline() == script.now + 1.0


def test_slots_back_off_independently():
    script = Script(group("top", pool("slots", 2, BACKOFF_POLICY, QUIET_BREAKER)))
    script.start(ready=False)
    script.exit("s0")
    assert script.at(1) == starts("s0")
    script.exit("s0")                        # s0: second failed start, waits 2 s
    script.exit("s1")                        # s1: first failed start, waits 1 s
    assert script.at(2) == starts("s1")
    assert script.at(3) == starts("s0")


def test_a_slot_that_ran_healthily_restarts_at_once():
    script = Script(group("top", pool("slots", 2, BACKOFF_POLICY, QUIET_BREAKER)))
    script.start()
    script.at(10)
    assert script.exit("s0", KILLED) == starts("s0")
    assert script.tree.leaves["s0"].failed_starts == 0


def test_a_slot_that_finished_cleanly_is_not_restarted():
    script = Script(group("top", pool("slots", 2, BACKOFF_POLICY, QUIET_BREAKER)))
    script.start()
    assert script.exit("s0", CLEAN) == []
    assert script.state("s0") is EXITED


def test_pool_never_escalates():
    script = Script(group("top", group("services", child("a")), pool("slots", 2, BACKOFF_POLICY, QUIET_BREAKER),
                          intensity=Intensity(0, 100.0)))
    script.start()
    for n in range(3):
        script.at(n * 20)
        script.exit("s0", KILLED)
    assert not script.tree.degraded
    assert script.state("a") is RUNNING


def test_breaker_pauses_restarts_in_a_storm_without_touching_healthy_slots():
    storm = BreakerPolicy(crashes=3, window=10.0, pause=30.0)
    script = Script(group("top", pool("slots", 6, BACKOFF_POLICY, storm)))
    script.start()
    script.at(60)                              # everyone has run healthily
    assert script.exit("s0", KILLED) == starts("s0")
    assert script.exit("s1", KILLED) == starts("s1")
    # The third crash within 10 s opens the breaker: no restart, no stop.
    assert script.exit("s2", KILLED) == []
    assert script.state("s2") is BACKOFF
    assert script.exit("s0", CRASH) == []      # the restarted one dies again meanwhile
    assert script.tree.next_deadline() is not None
    assert script.at(89.9) == []
    assert script.states("s3", "s4", "s5") == [RUNNING] * 3
    assert not any(isinstance(a, Stop) for a in script.log)
    # After the pause both come back.
    assert script.at(90) == starts("s0", "s2")


def test_breaker_defers_slots_that_were_already_backing_off():
    storm = BreakerPolicy(crashes=2, window=10.0, pause=30.0)
    script = Script(group("top", pool("slots", 3, BACKOFF_POLICY, storm)))
    script.start(ready=False)
    script.at(0.5)
    assert script.exit("s0") == []            # backoff until 1.5
    assert script.exit("s1") == []            # storm: paused until 30.5
    assert script.at(1.5) == []
    assert script.at(30.5) == starts("s0", "s1")


# Shutdown.

def test_shutdown_stops_the_slot_pool_first_then_helpers_in_reverse():
    script = Script(group("top", group("services", child("keeper"), child("reaper")), pool("slots", 3)))
    script.start()
    assert script.tree.shutdown_phases() == [["s0", "s1", "s2"], ["reaper"], ["keeper"]]
    # Exits during shutdown restart nothing.
    assert script.exit("s0", TERMINATED) == []
    assert script.exit("reaper", CRASH) == []
    assert script.states("s0", "reaper") == [STOPPED, STOPPED]


def test_shutdown_order_of_nested_groups_and_loose_children():
    script = Script(group("top", child("first"), group("mid", child("m1"), group("deep", child("d1"), child("d2"))),
                          pool("slots", 2), child("last")))
    assert script.tree.shutdown_phases() == [["last"], ["s0", "s1"], ["d2"], ["d1"], ["m1"], ["first"]]


# next_deadline.

def test_next_deadline():
    script = Script(group("top", group("services", child("a"), child("b"), strategy=Strategy.ONE_FOR_ALL),
                          pool("slots", 2, BACKOFF_POLICY, QUIET_BREAKER)))
    assert script.tree.next_deadline() is None
    script.start(ready=False)
    assert script.tree.next_deadline() is None
    script.exit("s0")
    assert script.tree.next_deadline() == T0 + 1.0
    script.at(0.5)
    script.exit("s1")
    assert script.tree.next_deadline() == T0 + 1.0
    # A group waiting for a member's exit has no deadline: the exit wakes it.
    script.exit("a")
    assert script.tree.next_deadline() == T0 + 1.0
    script.at(1.0)
    assert script.tree.next_deadline() == T0 + 1.5


def test_due_before_the_next_deadline_looks_at_no_member_until_an_event(monkeypatch):
    script = Script(group("top", pool("slots", 8, BACKOFF_POLICY, QUIET_BREAKER)))
    script.start()
    script.exit("s3")
    assert script.tree.next_deadline() == T0 + 1.0
    looked = []
    members = Node.leaves
    monkeypatch.setattr(Node, "leaves", lambda node: looked.append(node.id) or members(node))
    assert [script.at(offset) for offset in (0.25, 0.5, 0.75)] == [[], [], []]
    assert looked == [], "nothing can be due before the deadline already worked out"
    # An event forgets it: after another crash, the members are looked at again.
    script.exit("s5")
    assert script.at(0.8) == [] and looked
    assert script.at(1.0) == starts("s3")
    assert script.tree.next_deadline() == T0 + 0.75 + 1.0
    assert script.at(1.75) == starts("s5")


# Validation.

def sound(*children, **fields):
    return group("top", *children, **fields)


TREE_FAULTS = {
    "duplicate child ids": sound(child("a"), child("a")),
    "a child with a group's id": sound(group("a", child("x")), child("a")),
    "a group with the top's id": sound(group("top", child("x"))),
    "upper case id": sound(child("Slot")),
    "id with underscore": sound(child("cvmfs_keeper")),
    "id starting with a dash": sound(child("-a")),
    "empty id": sound(child("")),
    "id with a trailing newline": sound(child("a\n")),
    "id not a string": sound(child(3)),
    "pool with rest_for_one": sound(pool("slots", 2, strategy=Strategy.REST_FOR_ONE)),
    "pool with one_for_all": sound(pool("slots", 2, strategy=Strategy.ONE_FOR_ALL)),
    "pool holding a group": sound(group("slots", group("g", child("x")), pool=PoolPolicy())),
    "heartbeat interval equal to timeout": sound(child("a", heartbeat_interval=5.0, heartbeat_timeout=5.0)),
    "heartbeat interval above timeout": sound(child("a", heartbeat_interval=30.0, heartbeat_timeout=20.0)),
    "heartbeat interval zero": sound(child("a", heartbeat_interval=0)),
    "args with a set": sound(child("a", args={"repos": {"atlas", "lhcb"}})),
    "args with an object": sound(child("a", args={"when": object()})),
    "args with an int msgpack cannot carry": sound(child("a", args={"n": 2**70})),
    "args not a mapping": sound(child("a", args=["x"])),
    "target not callable": sound(ChildSpec(id="a", target="vac.workers.reaper.run")),
    "restart not a Restart": sound(child("a", restart="permanent")),
    "negative shutdown": sound(child("a", shutdown=-1)),
    "shutdown as a word": sound(child("a", shutdown="soon")),
    "negative intensity": sound(child("a"), intensity=Intensity(-1, 5.0)),
    "zero period": sound(child("a"), intensity=Intensity(3, 0)),
    "not a spec at all": sound(child("a"), "b"),
}


@pytest.mark.parametrize("spec", TREE_FAULTS.values(), ids=TREE_FAULTS.keys())
def test_validate_tree_rejects(spec):
    problems = validate_tree(spec)
    assert len(problems) == 1, problems
    with pytest.raises(TreeSpecError) as refused:
        Tree(spec)
    assert refused.value.problems == problems


def test_validate_tree_reports_every_problem_with_its_path():
    problems = validate_tree(sound(group("services", child("A"), child("b", shutdown=-1)), child("b")))
    assert len(problems) == 3
    assert any(p.startswith("top/services/A:") for p in problems)
    assert any(p.startswith("top/services/b:") and "shutdown" in p for p in problems)
    assert any(p.startswith("top/b:") and "twice" in p for p in problems)


def test_validate_tree_accepts_a_sound_tree():
    spec = sound(group("services", child("cvmfs-keeper", args={"repositories": ["atlas.cern.ch"]}),
                       child("reaper", shutdown=BRUTAL_KILL), strategy=Strategy.REST_FOR_ONE),
                 pool("slots", 16), child("0x", shutdown=0, args={"n": [1, 2.5, None, b"x", {"k": True}]}))
    assert validate_tree(spec) == []


def test_degraded_clears_although_a_transient_helper_finished_its_job():
    # A helper that ended normally and is not to be restarted is not failing.
    services = group("services", child("a"), child("once", Restart.TRANSIENT), intensity=Intensity(0, 10.0))
    script = Script(group("top", services, intensity=Intensity(0, 50.0), degraded_retry=30.0))
    script.start()
    assert script.exit("once", CLEAN) == []
    script.exit("a")
    assert script.tree.degraded
    # The group restart starts it again (as OTP does); it finishes again.
    assert script.at(30) == starts("a", "once")
    script.ready("a", "once")
    assert script.exit("once", CLEAN) == []
    script.at(130)
    assert script.state("once") is EXITED
    assert not script.tree.degraded


def test_a_second_restart_in_a_node_does_not_lose_the_first_one():
    # g1 escalates and waits for b to stop; z crashes meanwhile. Both restarts must happen.
    g1 = group("g1", child("a"), child("b"), intensity=Intensity(1, 10.0))
    script = Script(group("top", g1, child("z"), intensity=Intensity(5, 100.0)))
    script.start()
    assert script.exit("a") == starts("a")
    script.ready("a")
    assert script.exit("a") == stops("b")
    # z joins the pending restart of top, which waits for b's exit.
    assert script.exit("z") == []
    assert script.exit("b", TERMINATED) == starts("a", "b", "z")


# Helpers wait a short, growing delay before they run again.

def test_a_crashed_helper_restarts_after_a_growing_delay_not_at_once():
    script = Script(SupervisorSpec(id="top", intensity=Intensity(10, 60.0), children=(
        child("keeper"), pool("slots", 1))))
    script.start()
    assert script.exit("keeper") == []
    assert script.state("keeper") is STOPPED
    assert script.tree.next_deadline() == T0 + 0.5
    assert script.at(0.49) == []
    assert script.at(0.5) == starts("keeper")
    # It fails again before it was ever ready: twice as long now.
    assert script.exit("keeper") == []
    assert script.tree.next_deadline() == T0 + 0.5 + 1.0
    assert script.at(1.5) == starts("keeper")
    assert script.tree.leaves["keeper"].failed_starts == 2
    # Ready and up for a while: the next crash waits the first delay again.
    script.ready("keeper")
    script.at(100)
    assert script.exit("keeper") == []
    assert script.tree.next_deadline() == T0 + 100.5
    assert script.state("s0") is RUNNING, "a helper's delay never touches the slots"


def test_a_delayed_helper_still_escalates_to_degraded():
    services = SupervisorSpec(id="services", intensity=Intensity(1, 10.0), children=(child("a"),))
    script = Script(SupervisorSpec(id="top", intensity=Intensity(0, 100.0), degraded_retry=30.0,
                                   children=(services, pool("slots", 1))))
    script.start()
    script.exit("a")
    assert script.at(0.5) == starts("a")
    script.exit("a")
    # The second restart within 10 s is too many for services; top has none to give.
    assert script.tree.degraded
    assert script.tree.next_deadline() == T0 + 0.5 + 30.0
