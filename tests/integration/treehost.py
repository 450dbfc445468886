"""Runs a real Root with a test tree in this process, for integration tests.

usage: python treehost.py SCENARIO EVENTS_FILE [STATE_DIR]

Every event of the root is appended to EVENTS_FILE as one JSON line; lines
on stdin are operator commands ("reset CHILD"). The scenarios use the real
workers where they can and small misbehaving workers where a test needs one.
"""

import errno
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from vac import logs  # noqa: E402
from vac.ipc import messages  # noqa: E402
from vac.supervisor import policy  # noqa: E402
from vac.supervisor.build import TreeSettings, build_tree  # noqa: E402
from vac.supervisor.process import Processes  # noqa: E402
from vac.supervisor.root import Root  # noqa: E402
from vac.vocabulary.child_states import Restart, Strategy  # noqa: E402
from vac.supervisor.tree import ChildSpec, PoolPolicy, SupervisorSpec  # noqa: E402
from vac.workers.harness import WorkerLoop  # noqa: E402

STATE_DIR = sys.argv[3] if len(sys.argv) > 3 else "/tmp"


def idle(channel, spec):
    """A well-behaved worker that does nothing but heartbeat."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.title(f"test {spec['child_id']}")
    loop.ready()
    while not loop.stopping:
        loop.wait(1.0)


def crash_while_marker(channel, spec):
    """Crashes at start while the marker file exists, else behaves."""
    if os.path.exists(spec["marker"]):
        raise RuntimeError("told to crash at start")
    idle(channel, spec)


def crash_at_once(channel, spec):
    raise RuntimeError("a helper that always fails")


def hang_after_ready(channel, spec):
    """Becomes ready, then stops heartbeating and ignores SIGTERM."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not os.path.exists(spec["marker"]):
        open(spec["marker"], "w").close()
        while True:
            time.sleep(60)
    while not loop.stopping:
        loop.wait(1.0)


def send_raw(channel, data):
    """Send bytes as they are, past the framing: how a broken child writes."""
    channel.sock.sendall(data)


def send_garbage(channel, spec):
    """Becomes ready, then sends bytes that are no frame at all (once)."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    if not os.path.exists(spec["marker"]):
        open(spec["marker"], "w").close()
        send_raw(channel, b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
    while not loop.stopping:
        loop.wait(1.0)


def send_oversize(channel, spec):
    """Becomes ready, then announces a 1 GiB frame (once)."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    if not os.path.exists(spec["marker"]):
        open(spec["marker"], "w").close()
        send_raw(channel, b"\x40\x00\x00\x00" + b"x" * 64)
    while not loop.stopping:
        loop.wait(1.0)


def leave_orphan(channel, spec):
    """Forks a grandchild that forks again and exits: the last one is orphaned."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        orphan = os.fork()
        if orphan == 0:
            time.sleep(1.0)
            os._exit(7)
        os.write(write_end, str(orphan).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    orphan_pid = int(os.read(read_end, 32))
    loop.report("orphan", pid=orphan_pid)
    while not loop.stopping:
        loop.wait(1.0)


def stuck_in_a_state(channel, spec):
    """Heartbeats on, but (the first time) its state stays past the deadline its heartbeats carry."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    if not os.path.exists(spec["marker"]):
        open(spec["marker"], "w").close()
        stuck_since = time.monotonic()
        loop.progress = lambda: ("stopping", stuck_since)
    loop.ready()
    while not loop.stopping:
        loop.wait(1.0)


def busy_with_a_deadline(channel, spec):
    """Heartbeats carrying a deadline an hour away: nothing to act on."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    deadline = time.monotonic() + 3600
    loop.progress = lambda: ("running", deadline)
    loop.ready()
    while not loop.stopping:
        loop.wait(1.0)


def slow_to_stop(channel, spec):
    """Takes `stop_delay` seconds to stop after SIGTERM (a budget test)."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    while not loop.stopping:
        loop.wait(1.0)
    time.sleep(spec["stop_delay"])


FAST = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5}


def factory():
    """The real factory tree: keeper, reaper and three real slot workers."""
    # A label of its own: real slot workers clean up containers of their factory.
    name = f"treehost-{os.getpid()}.test"
    return build_tree(TreeSettings(slots=3, state_dir=STATE_DIR, factory_name=name,
                                   heartbeat_interval=0.2,
                                   heartbeat_timeout=3.0, slot_shutdown=3.0,
                                   helper_shutdown=3.0))


def crashing_slot():
    marker = os.path.join(STATE_DIR, "crash-marker")
    slot_policy = policy.SlotRestartPolicy(healthy_after=5.0, first_delay=0.2, max_delay=2.0,
                                           max_failed_starts=4)
    slots = SupervisorSpec(id="slots", pool=PoolPolicy(slot_restart=slot_policy), children=(
        ChildSpec(id="slot-00", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-01", target=crash_while_marker, args={"marker": marker},
                  restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-02", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST),
    ))
    return SupervisorSpec(id="vacd", children=(slots,))


def fork_fails():
    """Three idle slots; the second fork of the run fails (see ForkFailsOnce)."""
    slot_policy = policy.SlotRestartPolicy(healthy_after=5.0, first_delay=0.2, max_delay=2.0)
    slots = SupervisorSpec(id="slots", pool=PoolPolicy(slot_restart=slot_policy), children=tuple(
        ChildSpec(id=f"slot-0{n}", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST)
        for n in range(3)))
    return SupervisorSpec(id="vacd", children=(slots,))


class ForkFailsOnce(Processes):
    """Real processes, except that the second fork fails as fork does when out of pids."""

    def __init__(self):
        self.spawns = 0

    def spawn(self, child_main):
        self.spawns += 1
        if self.spawns == 2:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().spawn(child_main)


def crash_storm():
    slot_policy = policy.SlotRestartPolicy(healthy_after=5.0, first_delay=0.1, max_delay=0.2,
                                           max_failed_starts=100)
    breaker = policy.BreakerPolicy(crashes=5, window=5.0, pause=2.0)
    children = tuple(
        ChildSpec(id=f"slot-{n:02d}", target=crash_at_once if n >= 2 else idle,
                  restart=Restart.TRANSIENT, role="slot", **FAST) for n in range(5))
    slots = SupervisorSpec(id="slots", children=children,
                           pool=PoolPolicy(slot_restart=slot_policy, breaker=breaker))
    return SupervisorSpec(id="vacd", children=(slots,))


def helper_storm():
    # Escalation is what is tested here: helpers wait only a little before each restart.
    quick = policy.HelperRestartPolicy(first_delay=0.05, max_delay=0.2)
    services = SupervisorSpec(
        id="services", intensity=policy.Intensity(max_restarts=2, period=10.0), helper_restart=quick,
        children=(
            ChildSpec(id="good-helper", target=idle, **FAST),
            ChildSpec(id="bad-helper", target=crash_at_once, **FAST),
        ))
    slots = SupervisorSpec(id="slots", pool=PoolPolicy(), children=(
        ChildSpec(id="slot-00", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST),))
    return SupervisorSpec(id="vacd", intensity=policy.Intensity(max_restarts=1, period=10.0),
                          degraded_retry=1.0, helper_restart=quick, children=(services, slots))


def rest_for_one():
    group = SupervisorSpec(
        id="chain", strategy=Strategy.REST_FOR_ONE,
        intensity=policy.Intensity(max_restarts=10, period=10.0),
        children=tuple(ChildSpec(id=f"link-{n}", target=idle, **FAST) for n in range(4)))
    return SupervisorSpec(id="vacd", children=(group,))


def misbehaving():
    marker = os.path.join(STATE_DIR, "marker")
    pool = SupervisorSpec(id="slots", pool=PoolPolicy(), children=(
        ChildSpec(id="slot-00", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-01", target=hang_after_ready, args={"marker": marker + "-hang"},
                  restart=Restart.TRANSIENT, role="slot", shutdown=0.5, **FAST),
        ChildSpec(id="slot-02", target=send_garbage, args={"marker": marker + "-garbage"},
                  restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-03", target=send_oversize, args={"marker": marker + "-oversize"},
                  restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-04", target=idle, restart=Restart.TRANSIENT, role="slot", **FAST),
    ))
    return SupervisorSpec(id="vacd", children=(pool,))


def stuck():
    marker = os.path.join(STATE_DIR, "stuck-marker")
    pool = SupervisorSpec(id="slots", pool=PoolPolicy(), children=(
        ChildSpec(id="slot-00", target=busy_with_a_deadline, restart=Restart.TRANSIENT, role="slot", **FAST),
        ChildSpec(id="slot-01", target=stuck_in_a_state, args={"marker": marker},
                  restart=Restart.TRANSIENT, role="slot", **FAST),
    ))
    return SupervisorSpec(id="vacd", children=(pool,))


def orphans():
    services = SupervisorSpec(id="services", children=(
        ChildSpec(id="orphan-maker", target=leave_orphan, **FAST),))
    return SupervisorSpec(id="vacd", children=(services,))


def shutdown_budget():
    services = SupervisorSpec(id="services", children=(
        ChildSpec(id="helper-a", target=idle, **FAST),
        ChildSpec(id="helper-b", target=slow_to_stop, args={"stop_delay": 30}, shutdown=1.0,
                  **FAST),
    ))
    slots = SupervisorSpec(id="slots", pool=PoolPolicy(), children=tuple(
        ChildSpec(id=f"slot-{n:02d}", target=slow_to_stop, args={"stop_delay": 0.3},
                  restart=Restart.TRANSIENT, role="slot", shutdown=2.0, **FAST)
        for n in range(3)))
    return SupervisorSpec(id="vacd", children=(services, slots))


# Stands in for `stat` on a hung CernVM-FS mount: it never answers for a
# repository named hung.*, and otherwise does what stat does.
STAT_STAND_IN = [sys.executable, "-c", (
    "import os, sys, time\n"
    "path = sys.argv[1]\n"
    "if '/hung.' in path: time.sleep(3600)\n"
    "try: os.stat(path)\n"
    "except OSError as error: sys.exit(f'stat: {error.strerror}')\n")]


def cvmfs():
    from vac.workers import cvmfs_keeper
    services = SupervisorSpec(id="services", children=(
        ChildSpec(id="cvmfs-keeper", target=cvmfs_keeper.run, args={
            "repositories": ["ok.example.org", "missing.example.org", "hung.example.org"],
            "cvmfs_root": os.path.join(STATE_DIR, "cvmfs"), "check_command": STAT_STAND_IN,
            "interval_seconds": 0.5, "timeout_seconds": 1.0}, **FAST),))
    return SupervisorSpec(id="vacd", children=(services,))


def cvmfs_autofs():
    """The keeper with the real `stat`, on the autofs root and repositories the test names."""
    from vac.workers import cvmfs_keeper
    services = SupervisorSpec(id="services", children=(
        ChildSpec(id="cvmfs-keeper", target=cvmfs_keeper.run, args={
            "repositories": os.environ["VAC_TEST_REPOSITORIES"].split(),
            "cvmfs_root": os.environ["VAC_TEST_CVMFS_ROOT"],
            "interval_seconds": 0.3, "timeout_seconds": 1.0}, **FAST),))
    return SupervisorSpec(id="vacd", children=(services,))


SCENARIOS = {f.__name__.replace("_", "-"): f for f in (
    cvmfs, cvmfs_autofs,
    factory, crashing_slot, fork_fails, crash_storm, helper_storm, rest_for_one, misbehaving, stuck, orphans,
    shutdown_budget)}
PROCESSES = {"fork-fails": ForkFailsOnce}


# Faults in the root's own services: each must cost only what it was serving.

LARGE_NAMES = 10_000   # ~570 kB of repository names: more than a socket takes at once


def talker(channel, spec):
    """Reports a state the app chokes on, then one it takes; then waits for the app's
    large message and reports how many names arrived."""
    loop = WorkerLoop(channel, spec, role=spec["child_id"])
    loop.ready()
    loop.report("bug")
    loop.report("fine")
    while not loop.stopping:
        for msg in loop.wait(1.0):
            if isinstance(msg, messages.Repositories):
                loop.report("received", names=len(msg.names), last=msg.names[-1])


class FaultyApp:
    """Stands for the factory: a bug on one message and in one tick, and one large message."""

    def __init__(self):
        self.outbox = []
        self.ticks = 0

    def on_message(self, child_id, msg):
        if msg.state == "bug":
            raise KeyError("a bug in the factory's handling of one message")
        if msg.state == "fine":
            names = [f"{n:05d}." + "r" * 50 for n in range(LARGE_NAMES)]
            self.outbox.append((child_id, messages.Repositories(names=names)))

    def tick(self, may_start):
        self.ticks += 1
        if self.ticks == 2:
            raise ValueError("a bug in one tick")
        out, self.outbox = self.outbox, []
        return out

    def next_deadline(self):
        return None

    def on_child_exit(self, child_id):
        pass


class FaultyService:
    """A service of the loop whose second pass fails."""

    def __init__(self):
        self.passes = 0

    def next_deadline(self):
        return None

    def on_pass(self, now):
        self.passes += 1
        if self.passes == 2:
            raise RuntimeError("a bug in one pass of a service")


def faults():
    services = SupervisorSpec(id="services", children=(ChildSpec(id="talker", target=talker, **FAST),))
    return SupervisorSpec(id="vacd", children=(services,))


def prepare_faults(root):
    def failing_observer(event):
        if event["event"] == "ready":
            raise RuntimeError("a bug in an observer")

    root.app = FaultyApp()
    root.add_service(FaultyService())
    root.observers.insert(0, failing_observer)


SCENARIOS["faults"] = faults
PREPARE = {"faults": prepare_faults}


def main():
    scenario, events_path = sys.argv[1], sys.argv[2]
    logs.configure("INFO")
    events = open(events_path, "a", buffering=1)

    def observe(event):
        events.write(json.dumps(event) + "\n")

    processes = PROCESSES.get(scenario, Processes)()
    root = Root(SCENARIOS[scenario](), observer=observe, processes=processes)
    PREPARE.get(scenario, lambda root: None)(root)

    def on_command():
        line = sys.stdin.readline()
        if not line:
            root.remove_reader(sys.stdin.fileno())
            return
        command, _, argument = line.strip().partition(" ")
        if command == "reset":
            root.reset(argument)
        observe({"event": "command", "command": line.strip(), "t": time.time()})

    root.add_reader(sys.stdin.fileno(), on_command)
    sys.exit(root.run())


if __name__ == "__main__":
    main()
