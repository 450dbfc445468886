"""The factory's state as plain data for the metrics exporter, and its periodic delivery.

build_snapshot() is pure: it reads the root's tree and reports and the
factory's tables and counters at `now`, and returns msgpack-able data. The
metrics child turns that into Prometheus text and measures the processes it
names, so the root never does more than build a small dict every few seconds.
"""

import collections
import time

from vac.ipc import messages
from vac.supervisor.scheduler import NoPlacementReason
from vac.vocabulary.child_states import ChildState, FactoryState
from vac.vocabulary.slot_states import SlotState

SNAPSHOT_VERSION = 1
METRICS_CHILD = "metrics"
SNAPSHOT_SECONDS = 5.0
# Every state a slot can be counted in, so each has a series even at 0: the
# worker's report, "unknown" before its first, backoff or fatal while it is down.
SLOT_STATES = tuple(state.value for state in SlotState) + ("unknown", "backoff", "fatal")
REFUSAL_REASONS = tuple(reason.value for reason in NoPlacementReason)
_WORKER_DOWN = (ChildState.BACKOFF, ChildState.STOPPED, ChildState.EXITED)


def build_snapshot(root, factory, now):
    """The snapshot of `root` and its `factory` (None for a bare tree) at wall-clock `now`."""
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "taken_at": float(now),
        "factory_state": factory_state(root),
        "slots": slot_states(root),
        "children": children(root),
    }
    if factory is not None:
        snapshot.update(factory_part(factory, now))
    return snapshot


def factory_state(root):
    """The factory's condition as status shows it: DEGRADED overrides RUNNING."""
    if root.state is FactoryState.RUNNING and root.tree.degraded:
        return FactoryState.DEGRADED.value
    return root.state.value


def slot_states(root):
    """Slot count per state, every known state present."""
    counts = dict.fromkeys(SLOT_STATES, 0)
    for leaf in root.tree.leaves.values():
        if leaf.spec.role != "slot":
            continue
        if leaf.state is ChildState.FATAL:
            state = "fatal"
        elif leaf.state in _WORKER_DOWN:
            state = "backoff"
        else:
            report = root.reports.get(leaf.id)
            state = report.state if report is not None else "unknown"
        counts[state] = counts.get(state, 0) + 1
    return counts


def children(root):
    """Every supervised process: its role, state, pid (None when not running) and restarts."""
    return [{"child": leaf.id, "role": leaf.spec.role, "state": leaf.state.value,
             "pid": leaf.pid, "restarts": max(leaf.starts - 1, 0),
             "failed_starts": leaf.failed_starts}
            for leaf in root.tree.leaves.values()]


def factory_part(factory, now):
    """Machinetypes, finished machines, scheduler decisions and pipes of `factory`."""
    backoff = factory.backoff()
    machines = collections.Counter()
    processors = collections.Counter()
    for entry in factory.table.entries.values():
        if entry.machine is not None:
            machines[entry.machine.get("machinetype")] += 1
            processors[entry.machine.get("machinetype")] += entry.machine.get("processors", 0)
    # A machinetype a reload or a pipe removed keeps its counts until vacd restarts.
    names = (set(factory.machinetypes) | set(factory.started_total) | set(factory.wall_limit_kills)
             | set(factory.placements_total) | set(machines)
             | {name for name, _ in factory.finished_total})
    machinetypes = []
    for name in sorted(str(name) for name in names):
        configured = factory.machinetypes.get(name)
        until = backoff.get(name)
        machinetypes.append({
            "machinetype": name,
            "configured": configured is not None,
            "target_share": float(configured.target_share) if configured is not None else 0.0,
            "paused": name in factory.paused,
            "machines": machines[name],
            "processors": processors[name],
            "backoff_remaining": max(until - now, 0.0) if until is not None else 0.0,
            "in_backoff": until is not None,
            "started": factory.started_total[name],
            "placements": factory.placements_total[name],
            "wall_limit_kills": factory.wall_limit_kills[name],
        })
    finished = [{"machinetype": str(name), "code": code, "count": count}
                for (name, code), count in sorted(
                    factory.finished_total.items(),
                    key=lambda item: (str(item[0][0]), -1 if item[0][1] is None else item[0][1]))]
    refusal = factory.last_refusal
    return {
        "processors": factory.config.settings.total_processors,
        "machinetypes": machinetypes,
        "finished": finished,
        "refusals": {reason: factory.refusals_total[reason] for reason in REFUSAL_REASONS},
        "refusing": refusal.reason.value if refusal is not None else None,
        "pipes": pipes(factory),
    }


def pipes(factory):
    """Each configured pipe: when its document was fetched, whether stale, whether in use."""
    out = []
    for prefix in sorted(factory.config.vacuum_pipes):
        report = factory.pipe_reports.get(prefix)
        out.append({"pipe": prefix,
                    "fetched_at": report.fetched_at if report is not None else None,
                    "stale": bool(report.stale) if report is not None else False,
                    "usable": prefix in factory.pipe_machinetypes})
    return out


class MetricsFeed:
    """A root service: sends the metrics child a snapshot every `interval` seconds.

    Register it with root.add_service(); a metrics child that (re)starts gets
    a snapshot in the next pass, so its first scrape already has data.
    """

    def __init__(self, root, factory, child_id=METRICS_CHILD, interval=SNAPSHOT_SECONDS,
                 wall_clock=time.time):
        self.root = root
        self.factory = factory
        self.child_id = child_id
        self.interval = interval
        self.wall_clock = wall_clock
        self._sent_to = None      # pid of the child the last snapshot went to
        self._next_at = None      # monotonic time of the next snapshot

    def next_deadline(self):
        if self._live_pid() is None:
            return None
        return self._next_at if self._sent_to == self._live_pid() else self.root.clock()

    def on_pass(self, now):
        pid = self._live_pid()
        if pid is None or self.root.stop_requested:
            return
        if pid == self._sent_to and now < self._next_at:
            return
        # Scheduled before building: a snapshot that fails to build (the root's
        # fault barrier logs it) or to encode is tried again next interval,
        # not on every pass.
        self._sent_to = pid
        self._next_at = now + self.interval
        snapshot = build_snapshot(self.root, self.factory, self.wall_clock())
        self.root.send(self.child_id, messages.MetricsSnapshot(snapshot=snapshot))

    def _live_pid(self):
        live = self.root.live.get(self.child_id)
        return live.pid if live is not None else None
