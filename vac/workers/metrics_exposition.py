"""Prometheus text exposition of a metrics snapshot and of the tree's processes.

prometheus_client does the format (names, escaping, HELP and TYPE lines);
the collector here only maps the root's plain-data snapshot and the metrics
child's process measurements onto metric families, every name prefixed vac_.
"""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vac.vocabulary.child_states import FactoryState

# What generate_latest writes: the classic text format, which every Prometheus
# and node_exporter reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _gauge(name, documentation, labels, rows):
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in rows:
        family.add_metric(label_values, value)
    return family


def _counter(name, documentation, labels, rows):
    # The family name has no _total: the library appends it to the samples.
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in rows:
        family.add_metric(label_values, value)
    return family


class SnapshotCollector:
    """A prometheus_client collector over the latest snapshot and process measurements."""

    def __init__(self):
        self.snapshot = None
        self.processes = []

    def collect(self):
        families = list(process_families(self.processes))
        if self.snapshot is not None:
            families += supervision_families(self.snapshot)
            if "machinetypes" in self.snapshot:
                families += factory_families(self.snapshot)
        # A family without samples (no pipes, nothing finished yet) says nothing.
        return [family for family in families if family.samples]


def supervision_families(snapshot):
    """The tree: factory state, slots by state, each child's health and restarts."""
    yield _gauge("vac_snapshot_timestamp_seconds",
                 "When the supervisor took the state these metrics show (Unix time).",
                 [], [([], snapshot["taken_at"])])
    yield _gauge("vac_factory_state", "The factory's condition: 1 for the current state.",
                 ["state"], [([state], 1.0 if state == snapshot["factory_state"] else 0.0)
                             for state in (s.value for s in FactoryState)])
    yield _gauge("vac_slots", "Slots by state: the slot worker's report, or backoff or fatal "
                 "while its worker process is down.",
                 ["state"], [([state], n) for state, n in sorted(snapshot["slots"].items())])
    children = snapshot["children"]
    yield _gauge("vac_child_up", "1 while the supervised process runs and heartbeats, else 0.",
                 ["child", "role"],
                 [([c["child"], c["role"]], 1.0 if c["state"] == "running" else 0.0)
                  for c in children])
    yield _counter("vac_child_restarts", "Times the supervisor started the process again.",
                   ["child", "role"], [([c["child"], c["role"]], c["restarts"]) for c in children])
    yield _gauge("vac_child_failed_starts",
                 "Consecutive failed starts of the process (a slot is fatal after too many).",
                 ["child", "role"],
                 [([c["child"], c["role"]], c["failed_starts"]) for c in children])


def factory_families(snapshot):
    """Machinetypes, machines, backoff and the scheduler's decisions."""
    if snapshot.get("processors") is not None:
        yield _gauge("vac_factory_processors",
                     "Processors the factory allocates to machines (total_processors).",
                     [], [([], snapshot["processors"])])
    mts = snapshot["machinetypes"]

    def per_machinetype(key):
        return [([m["machinetype"]], float(m[key])) for m in mts]

    yield _gauge("vac_machines", "Machines the factory holds now.", ["machinetype"],
                 per_machinetype("machines"))
    yield _gauge("vac_machine_processors", "Processors held by the machines the factory holds.",
                 ["machinetype"], per_machinetype("processors"))
    yield _gauge("vac_machinetype_target_share",
                 "The machinetype's target share (0: never started).", ["machinetype"],
                 per_machinetype("target_share"))
    yield _gauge("vac_machinetype_paused", "1 while an operator has paused the machinetype.",
                 ["machinetype"], per_machinetype("paused"))
    yield _gauge("vac_machinetype_backoff",
                 "1 while the machinetype is not started because of a recent abort.",
                 ["machinetype"], per_machinetype("in_backoff"))
    yield _gauge("vac_machinetype_backoff_remaining_seconds",
                 "Seconds until the machinetype leaves backoff (0 when not in backoff).",
                 ["machinetype"], per_machinetype("backoff_remaining"))
    yield _counter("vac_machines_started", "Machines whose container started running.",
                   ["machinetype"], per_machinetype("started"))
    yield _counter("vac_machines_finished",
                   "Machines that finished, by shutdown_message code ('none': no message).",
                   ["machinetype", "code"],
                   [([f["machinetype"], "none" if f["code"] is None else str(f["code"])],
                     f["count"]) for f in snapshot["finished"]])
    yield _counter("vac_wall_limit_kills",
                   "Machines ended at max_wallclock_seconds (700 Exceeded max_wallclock_seconds).",
                   ["machinetype"], per_machinetype("wall_limit_kills"))
    yield _counter("vac_scheduler_placements", "Machines the scheduler placed in free slots.",
                   ["machinetype"], per_machinetype("placements"))
    yield _counter("vac_scheduler_refusals",
                   "Scheduling passes that left free slots empty, by reason.", ["reason"],
                   [([reason], n) for reason, n in sorted(snapshot["refusals"].items())])
    yield _gauge("vac_scheduler_refusing",
                 "1 for the reason the last scheduling pass left free slots empty.", ["reason"],
                 [([reason], 1.0 if reason == snapshot["refusing"] else 0.0)
                  for reason in sorted(snapshot["refusals"])])
    pipes = snapshot.get("pipes", [])
    yield _gauge("vac_pipe_fetched_timestamp_seconds",
                 "When the pipe's document in use was fetched (Unix time; 0: never).", ["pipe"],
                 [([p["pipe"]], p["fetched_at"] or 0.0) for p in pipes])
    yield _gauge("vac_pipe_stale",
                 "1 while the pipe's last refresh failed and an older copy is used.",
                 ["pipe"], [([p["pipe"]], float(p["stale"])) for p in pipes])
    yield _gauge("vac_pipe_usable", "1 while the pipe's machinetypes can be started.",
                 ["pipe"], [([p["pipe"]], float(p["usable"])) for p in pipes])


def process_families(processes):
    """CPU and memory of the tree's own processes: the cost of the factory itself."""
    labels = ["child", "role"]
    yield _counter("vac_process_cpu_seconds", "CPU time (user and system) the process used.",
                   labels, [([p["child"], p["role"]], p["cpu_seconds"]) for p in processes])
    yield _gauge("vac_process_resident_memory_bytes", "The process's resident memory (RSS).",
                 labels, [([p["child"], p["role"]], p["rss_bytes"]) for p in processes])
    yield _gauge("vac_process_unique_memory_bytes",
                 "Memory only this process holds (USS): what the process costs the host.",
                 labels, [([p["child"], p["role"]], p["uss_bytes"]) for p in processes
                          if p.get("uss_bytes") is not None])


class Exposition:
    """One registry holding one collector; render() gives the text of its current data."""

    def __init__(self):
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self):
        """The exposition as bytes in CONTENT_TYPE."""
        return generate_latest(self.registry)
