"""build_snapshot over a real tree and a real factory fed scripted reports."""

import random

import msgpack
import pytest

from vac.config.load import load_configuration
from vac.ipc import messages
from vac.supervisor import notify
from vac.supervisor.build import TreeSettings, build_tree
from vac.supervisor.factory import Factory
from vac.supervisor.metrics_snapshot import MetricsFeed, build_snapshot
from vac.supervisor.policy import ExitStatus
from vac.supervisor.root import Root
from vac.vocabulary.child_states import FactoryState

CONFIG = """
[settings]
vac_space = space.example.com
total_processors = 3

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 3
max_wallclock_seconds = 3600
backoff_seconds = 100
fizzle_seconds = 60

[machinetype other]
machine_model = docker
root_image = docker://other:latest
user_data = other.user_data
target_share = 1
max_wallclock_seconds = 3600

[vacuum_pipe lhcb]
vacuum_pipe_url = https://pipes.example.com/lhcb.json
target_share = 2
"""
WALL = 1_800_000_000.0


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clocks():
    return Clock(1000.0), Clock(WALL)


def machine(uuid, machinetype="work", started_at=WALL):
    return {"uuid": uuid, "machinetype": machinetype, "processors": 1, "started_at": started_at,
            "shutdown_at": int(WALL) + 3600, "superslot": 0, "container_id": "c"}


def report(root, child, state, **detail):
    msg = messages.StateReport(child_id=child, state=state, detail=detail)
    root.reports[child] = msg
    if root.app is not None:
        root.app.on_message(child, msg)


def make_root(tmp_path, clocks, with_factory=True):
    monotonic, wall = clocks
    factory = None
    if with_factory:
        path = tmp_path / "vac.conf"
        path.write_text(CONFIG)
        factory = Factory(load_configuration([str(path)]), factory_name="f1.example.com",
                          rng=random.Random(1), clock=wall, load_average=lambda: 0.0)
    root = Root(build_tree(TreeSettings(slots=3)), app=factory,
                notifier=notify.Notifier(environ={}), clock=monotonic)
    root.tree.start(monotonic.now)
    for pid, child in enumerate(root.tree.leaves, start=100):
        root.tree.started(child, pid)
        root.tree.ready(child, monotonic.now)
    root.state = FactoryState.RUNNING
    return root


def test_slots_children_machinetypes_and_decisions_as_plain_data(tmp_path, clocks):
    monotonic, wall = clocks
    root = make_root(tmp_path, clocks)
    factory = root.app
    report(root, "slot-00", "starting", slot=0, machine=machine("m1"))
    report(root, "slot-00", "running", slot=0, machine=machine("m1"))
    report(root, "slot-01", "idle", slot=1, machine=None)
    # slot-02's worker crashes: it waits in backoff, then restarts.
    monotonic.now += 1
    root.tree.exited("slot-02", ExitStatus(code=1), monotonic.now)
    factory.on_child_exit("slot-02")
    # The reaper crashes once and is restarted after its short delay.
    root.tree.exited("reaper", ExitStatus(code=1), monotonic.now)
    monotonic.now += 0.5
    root.tree.due(monotonic.now)
    root.tree.started("reaper", 200)
    # An earlier machine of "work" hit its wall-clock limit: an abort, so "work" backs off.
    factory.on_message("slot-00", messages.MachineFinished(
        uuid="m0", machinetype="work", started_at=WALL - 3600, ended_at=WALL, code=700,
        text="Exceeded max_wallclock_seconds", processors=1, cpu_seconds=3500.0))
    wall.now += 40
    placed = [child for child, msg in factory.tick(True) if isinstance(msg, messages.Place)]
    assert placed == ["slot-01"], "slot-01 is the only free slot; only 'other' may start"

    snapshot = build_snapshot(root, factory, wall.now)

    assert snapshot["taken_at"] == wall.now
    assert snapshot["factory_state"] == "running"
    assert snapshot["processors"] == 3
    slots = {state: n for state, n in snapshot["slots"].items() if n}
    assert slots == {"running": 1, "idle": 1, "backoff": 1}
    assert snapshot["slots"]["fatal"] == 0 and snapshot["slots"]["preparing"] == 0
    children = {c["child"]: c for c in snapshot["children"]}
    assert children["reaper"] == {"child": "reaper", "role": "helper", "state": "starting",
                                  "pid": 200, "restarts": 1, "failed_starts": 1}
    assert children["slot-02"]["state"] == "backoff" and children["slot-02"]["pid"] is None
    assert children["slot-00"]["role"] == "slot" and children["slot-00"]["pid"] is not None
    mts = {m["machinetype"]: m for m in snapshot["machinetypes"]}
    assert mts["work"] == {"machinetype": "work", "configured": True, "target_share": 3.0,
                           "paused": False, "machines": 1, "processors": 1,
                           "backoff_remaining": 60.0, "in_backoff": True, "started": 1,
                           "placements": 0, "wall_limit_kills": 1}
    assert mts["other"]["placements"] == 1 and mts["other"]["in_backoff"] is False
    assert snapshot["finished"] == [{"machinetype": "work", "code": 700, "count": 1}]
    assert snapshot["refusals"]["all_in_backoff"] == 0 and snapshot["refusing"] is None
    assert snapshot["pipes"] == [{"pipe": "lhcb", "fetched_at": None, "stale": False,
                                  "usable": False}]
    assert msgpack.unpackb(msgpack.packb(snapshot), strict_map_key=False) == snapshot


def test_refusals_are_counted_and_the_current_one_named(tmp_path, clocks):
    monotonic, wall = clocks
    root = make_root(tmp_path, clocks)
    factory = root.app
    factory.paused.update({"work", "other"})
    for slot in range(3):
        report(root, f"slot-{slot:02d}", "idle", slot=slot, machine=None)
    factory.tick(True)
    snapshot = build_snapshot(root, factory, wall.now)
    assert snapshot["refusing"] == "paused"
    assert snapshot["refusals"]["paused"] == 1
    assert {m["machinetype"]: m["paused"] for m in snapshot["machinetypes"]} == {
        "other": True, "work": True}


def test_a_machinetype_removed_by_a_reload_keeps_its_counts(tmp_path, clocks):
    monotonic, wall = clocks
    root = make_root(tmp_path, clocks)
    factory = root.app
    factory.on_message("slot-00", messages.MachineFinished(
        uuid="g1", machinetype="gone", started_at=WALL - 10, ended_at=WALL, code=None, text="",
        processors=1, cpu_seconds=1.0))
    snapshot = build_snapshot(root, factory, wall.now)
    gone = next(m for m in snapshot["machinetypes"] if m["machinetype"] == "gone")
    assert gone["configured"] is False and gone["target_share"] == 0.0
    assert {"machinetype": "gone", "code": None, "count": 1} in snapshot["finished"]


def test_a_bare_tree_shows_degraded_and_fatal_slots(tmp_path, clocks):
    monotonic, wall = clocks
    root = make_root(tmp_path, clocks, with_factory=False)
    root.tree.degraded_since = monotonic.now
    root.tree.leaves["slot-01"].state = root.tree.leaves["slot-01"].state.FATAL
    snapshot = build_snapshot(root, None, wall.now)
    assert snapshot["factory_state"] == "degraded"
    assert snapshot["slots"]["fatal"] == 1 and snapshot["slots"]["unknown"] == 2
    assert "machinetypes" not in snapshot


class RecordingRoot:
    """Just what MetricsFeed uses of the root: live children, the clock, send()."""

    class Live:
        def __init__(self, pid):
            self.pid = pid

    def __init__(self, real_root):
        self.real = real_root
        self.live = {}
        self.sent = []
        self.stop_requested = False
        self.clock = real_root.clock

    def __getattr__(self, name):
        return getattr(self.real, name)

    def send(self, child_id, msg):
        self.sent.append((child_id, msg))


def test_the_feed_sends_every_interval_and_at_once_to_a_new_metrics_child(tmp_path, clocks):
    monotonic, wall = clocks
    root = RecordingRoot(make_root(tmp_path, clocks))
    feed = MetricsFeed(root, root.app, interval=5.0, wall_clock=wall)
    feed.on_pass(monotonic.now)
    assert root.sent == [] and feed.next_deadline() is None, "no metrics child running"
    root.live["metrics"] = RecordingRoot.Live(300)
    assert feed.next_deadline() == monotonic.now
    feed.on_pass(monotonic.now)
    assert [(child, type(msg).__name__) for child, msg in root.sent] == [
        ("metrics", "MetricsSnapshot")]
    assert root.sent[0][1].snapshot["taken_at"] == wall.now
    monotonic.now += 4
    feed.on_pass(monotonic.now)
    assert len(root.sent) == 1
    monotonic.now += 1
    assert feed.next_deadline() == monotonic.now
    feed.on_pass(monotonic.now)
    assert len(root.sent) == 2
    root.live["metrics"] = RecordingRoot.Live(301)  # restarted
    feed.on_pass(monotonic.now + 0.1)
    assert len(root.sent) == 3
