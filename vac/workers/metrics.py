"""The metrics exporter: Prometheus metrics of the factory, served or written outside the root.

The root sends a MetricsSnapshot every few seconds; this child keeps the
latest, measures the CPU and memory of the processes it names (and of the
root) with psutil, and serves GET /metrics on a loopback address from its own
loop, writes a node_exporter textfile atomically every interval, or both.
"""

import dataclasses
import logging
import os
import time

import psutil

from vac.config.settings import parse_metrics_listen
from vac.config.values import BadValue
from vac.ipc import messages
from vac.machine.atomicfile import write_atomic
from vac.workers.harness import WorkerLoop
from vac.workers.metrics_exposition import CONTENT_TYPE, Exposition
from vac.workers.metrics_http import CLIENT_SECONDS, MetricsServer
from vac.workers.serving_child import SpecError, next_wake, options_or_exit, serve

log = logging.getLogger(__name__)

TEXTFILE_SECONDS = 15.0
# Several scrapes within this time share one measurement of the processes.
MEASURE_SECONDS = 1.0
BIND_RETRY_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class ExporterOptions:
    """Where the metrics go and how often, from the child's spec."""
    address: tuple | None          # (host, port) to serve /metrics on
    textfile: str | None           # the node_exporter textfile to rewrite
    interval: float                # seconds between textfile writes
    client_seconds: float          # how long one HTTP client may take


def exporter_options(spec):
    """The checked ExporterOptions of `spec`, or SpecError."""
    listen, textfile = spec.get("listen"), spec.get("textfile")
    if not listen and not textfile:
        raise SpecError("neither listen nor textfile is set: nothing to export to")
    address = None
    if listen:
        try:
            address = parse_metrics_listen(listen)
        except BadValue as error:
            raise SpecError(f"listen {listen!r}: {error}") from None
    if textfile and not os.path.isabs(textfile):
        raise SpecError(f"textfile {textfile!r}: must be an absolute path")
    interval = float(spec.get("interval_seconds", TEXTFILE_SECONDS))
    client_seconds = float(spec.get("client_timeout_seconds", CLIENT_SECONDS))
    if interval <= 0 or client_seconds <= 0:
        raise SpecError("interval_seconds and client_timeout_seconds must be greater than 0")
    return ExporterOptions(address, textfile or None, interval, client_seconds)


class ProcessMeter:
    """CPU seconds, RSS and USS of the tree's processes, named as the snapshot names them."""

    def __init__(self, root_pid):
        self.root_pid = root_pid
        self._processes = {}   # pid -> psutil.Process, kept so a reused pid is noticed

    def measure(self, children):
        """One entry per live process: the root, then each child with a pid."""
        wanted = [("vacd", "supervisor", self.root_pid)] if self.root_pid else []
        wanted += [(c["child"], c["role"], c["pid"]) for c in children if c.get("pid")]
        measured = []
        for child, role, pid in wanted:
            entry = self._measure_one(pid, child != "vacd")
            if entry is not None:
                measured.append(dict(entry, child=child, role=role))
        live = {pid for _, _, pid in wanted}
        for pid in set(self._processes) - live:
            del self._processes[pid]
        return measured

    def _measure_one(self, pid, is_child):
        try:
            process = self._processes.get(pid)
            if process is None or not process.is_running():
                process = self._processes[pid] = psutil.Process(pid)
            # A child that exited since the snapshot may have left its pid to
            # an unrelated process: only the root's children are ours.
            if is_child and process.ppid() != self.root_pid:
                return None
            with process.oneshot():
                cpu = process.cpu_times()
                try:
                    memory = process.memory_full_info()
                    uss = memory.uss
                except psutil.AccessDenied:
                    memory, uss = process.memory_info(), None
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            self._processes.pop(pid, None)
            return None
        return {"pid": pid, "cpu_seconds": cpu.user + cpu.system, "rss_bytes": memory.rss,
                "uss_bytes": uss}


class Exporter:
    """The latest snapshot, the process measurements and their exposition."""

    def __init__(self, root_pid, clock=time.monotonic):
        self.exposition = Exposition()
        self.meter = ProcessMeter(root_pid)
        self.clock = clock
        self._measured_at = None

    def update(self, snapshot):
        self.exposition.collector.snapshot = snapshot
        self._measured_at = None

    def render(self):
        """(body, content type), measuring the processes if the last measurement is old."""
        now = self.clock()
        if self._measured_at is None or now - self._measured_at >= MEASURE_SECONDS:
            snapshot = self.exposition.collector.snapshot or {}
            self.exposition.collector.processes = self.meter.measure(snapshot.get("children", []))
            self._measured_at = now
        return self.exposition.render(), CONTENT_TYPE


class Sink:
    """Where the metrics go: the HTTP server (bound, or retrying) and the textfile."""

    def __init__(self, loop, exporter, options):
        self.loop = loop
        self.exporter = exporter
        self.address = options.address
        self.textfile = options.textfile
        self.interval = options.interval
        self.client_seconds = options.client_seconds
        self.server = None
        self.bind_error = None
        self.write_error = None
        self._bind_at = None
        self._write_at = 0.0 if self.textfile else None
        self._reported = None

    def bind(self, now):
        if self.address is None:
            return
        host, port = self.address
        try:
            self.server = MetricsServer(host, port, self.exporter.render,
                                        client_seconds=self.client_seconds)
        except OSError as error:
            # A port another program holds must not make the supervisor restart
            # us in a loop (and put the factory in DEGRADED): say so and retry.
            self.bind_error = f"cannot listen on {host}:{port}: {error.strerror or error}"
            self._bind_at = now + BIND_RETRY_SECONDS
            log.error("metrics exporter: %s; retrying in %.0f s", self.bind_error,
                      BIND_RETRY_SECONDS)
            return
        self.bind_error = None
        self._bind_at = None
        log.info("metrics exporter: serving http://%s/metrics", self.server.address)

    def next_deadline(self, now):
        return next_wake(now, self.server, self._bind_at, self._write_at)

    def on_pass(self, now):
        if self.server is not None:
            self.server.handle(now)
        if self._bind_at is not None and now >= self._bind_at:
            self.bind(now)
        if self._write_at is not None and now >= self._write_at:
            self._write_at = now + self.interval
            self.write_textfile()
        self.report()

    def write_textfile(self):
        body, _ = self.exporter.render()
        try:
            write_atomic(self.textfile, body, mode=0o644)
        except OSError as error:
            # A full disk or a missing directory costs this write, not the exporter.
            if self.write_error is None:
                log.error("metrics exporter: cannot write %s: %s; retrying every %.0f s",
                          self.textfile, error, self.interval)
            self.write_error = f"cannot write {self.textfile}: {error.strerror or error}"
            return
        if self.write_error is not None:
            log.info("metrics exporter: writing %s again", self.textfile)
        self.write_error = None

    def report(self):
        """Tell the root (and ps) where metrics go and what fails, when that changes."""
        listen = self.server.address if self.server is not None else None
        error = self.bind_error or self.write_error
        state = "failing" if error else "exporting"
        detail = {"listen": listen, "textfile": self.textfile, "error": error}
        if (state, detail) == self._reported:
            return
        self._reported = (state, detail)
        self.loop.report(state, **detail)
        where = []
        if self.address is not None:
            where.append(f"http {listen or '%s:%d' % self.address}")
        if self.textfile is not None:
            where.append(f"file {self.textfile}")
        self.loop.title(f"metrics [{', '.join(where)}{', failing' if error else ''}]")

    def close(self):
        if self.server is not None:
            self.server.close()


def run(channel, spec):
    """Entry point in the forked metrics process."""
    loop = WorkerLoop(channel, spec, role="metrics")
    options = options_or_exit(exporter_options, spec, "metrics exporter")
    exporter = Exporter(loop.root_pid)
    sink = Sink(loop, exporter, options)
    sink.bind(time.monotonic())
    loop.ready()
    # The first pass writes the textfile at once, replacing what an earlier run left.
    sink.on_pass(time.monotonic())

    def on_message(msg):
        if isinstance(msg, messages.MetricsSnapshot):
            exporter.update(msg.snapshot)
        else:
            log.warning("metrics exporter: unexpected %s message; ignoring it", msg.TAG)

    serve(loop, sink, "metrics exporter", on_message)
