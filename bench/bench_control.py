"""Control socket: `status` round-trip latency with 128 slots, and the `vac` CLI's end-to-end time.

BENCH_CONTROL_SLOTS sets another slot count. A real vacd with that many slots (draining, a machinetype with target_share 0 and
an image that does not exist, so no container ever starts) is started and
waited for until every slot worker says idle. Then: `status` requests one
after another over one connection, the same over a new connection each
time, `slots` (an entry per slot) over one connection, and the whole `vac status`
and `vac slots` commands (`vac --socket PATH status --json`, a new Python
process each time). Prints a table and the target lines, and writes
bench/results/control.json (control_<count>.json at another count).
"""

import os
import subprocess
import sys
import time

import msgpack

import report
from vacd_factory import VacdFactory, VacdFailed

from vac.control.client import ControlClient, ControlError

SLOTS = int(os.environ.get("BENCH_CONTROL_SLOTS", "128"))
RESULTS_NAME = "control" if SLOTS == 128 else f"control_{SLOTS}"
REQUESTS = int(os.environ.get("BENCH_CONTROL_REQUESTS", "2000"))
CONNECTIONS = int(os.environ.get("BENCH_CONTROL_CONNECTIONS", "1000"))
SLOTS_REQUESTS = 500
CLI_RUNS = int(os.environ.get("BENCH_CONTROL_CLI_RUNS", "30"))
WARMUP = 50
START_DEADLINE = 180.0 * max(1.0, SLOTS / 128)     # vacd up with every slot worker idle
CLI_TIMEOUT = 30.0
TARGET_P99_MS = 10.0


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def timed(call, count):
    """Milliseconds each of `count` calls took."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def status_checked(client):
    status = client.request("status")
    if status["slots"]["slots"] != SLOTS:
        raise MeasurementFailed(f"status reports {status['slots']['slots']} slots, not {SLOTS}")
    return status


def one_connection(path, command, count):
    with ControlClient(path) as client:
        timed(lambda: client.request(command), WARMUP)
        return timed(lambda: client.request(command), count)


def new_connection_each(path, count):
    def once():
        with ControlClient(path) as client:
            client.request("status")
    timed(once, WARMUP)
    return timed(once, count)


def cli_command(path):
    """`vac --socket PATH status --json`, or the client from `python -c` where `vac status` is missing."""
    vac = os.path.join(os.path.dirname(sys.executable), "vac")
    command = [vac, "--socket", path, "status", "--json"]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    except OSError:
        probe = None
    if probe is not None and probe.returncode == 0 and '"slots"' in probe.stdout:
        return command, "vac --socket PATH status --json"
    code = ("import json, sys; from vac.control.client import ControlClient; "
            "print(json.dumps(ControlClient(sys.argv[1]).request('status')))")
    return [sys.executable, "-c", code, path], "python -c (ControlClient status): no working `vac status`"


def cli_runs(command, count):
    def once():
        result = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if result.returncode != 0:
            raise MeasurementFailed(f"{' '.join(command)} exited {result.returncode}: "
                                    f"{result.stderr[-2000:]}")
    timed(once, 2)
    return timed(once, count)


def main():
    print(f"control: status round trips over vacd's control socket with {SLOTS} slots")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}")
    rows, failure, factory, cli_label, reply_bytes = [], None, None, None, None
    try:
        factory = VacdFactory("control", slots=SLOTS, machinetypes={
            "idle": ({"root_image": "docker://vac-bench-nonexistent:latest", "target_share": "0"},
                     "#!/bin/sh\nexit 0\n")})
        factory.start()
        factory.wait_slots_idle(time.monotonic() + START_DEADLINE)
        path = os.path.join(factory.dir, "control.sock")
        with ControlClient(path) as client:
            status = status_checked(client)
        reply_bytes = len(msgpack.packb(status, use_bin_type=True))

        rows.append(("status, one connection", one_connection(path, "status", REQUESTS)))
        rows.append(("status, new connection each", new_connection_each(path, CONNECTIONS)))
        rows.append((f"slots ({SLOTS} entries), one connection",
                     one_connection(path, "slots", SLOTS_REQUESTS)))
        command, cli_label = cli_command(path)
        rows.append((f"CLI end to end: {cli_label}", cli_runs(command, CLI_RUNS)))
        vac = os.path.join(os.path.dirname(sys.executable), "vac")
        if os.path.exists(vac):
            rows.append(("CLI end to end: vac --socket PATH slots",
                         cli_runs([vac, "--socket", path, "slots"], CLI_RUNS)))
        factory.check_alive()
    except (MeasurementFailed, VacdFailed, ControlError, OSError, subprocess.SubprocessError) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
        if factory is not None:
            print(factory.log_tail(), file=sys.stderr)
    finally:
        if factory is not None:
            factory.stop()
            factory.remove_dir()

    summaries = {name: report.summarize(times) for name, times in rows}
    print()
    report.print_table(["measurement", "n", "min ms", "p50 ms", "p99 ms", "mean ms", "max ms"],
                       [[name, s["n"], s["min"], s["p50"], s["p99"], s["mean"], s["max"]]
                        for name, s in summaries.items()])
    if reply_bytes is not None:
        print(f"(a status reply is {reply_bytes} bytes of msgpack; vacd drains, so no container runs)")
    targets = []
    for name in ("status, one connection", "status, new connection each"):
        if name in summaries:
            p99 = summaries[name]["p99"]
            targets.append((f"{name}: p99 under {TARGET_P99_MS:.0f} ms with {SLOTS} slots",
                            p99 < TARGET_P99_MS, f"p99 {p99:.2f} ms"))
    print()
    report.print_targets(targets)
    path = report.write_results(RESULTS_NAME, {
        "host": host,
        "settings": {"slots": SLOTS, "requests": REQUESTS, "connections": CONNECTIONS,
                     "slots_requests": SLOTS_REQUESTS, "cli_runs": CLI_RUNS, "warmup": WARMUP,
                     "cli": cli_label},
        "status_reply_bytes": reply_bytes,
        "latency_ms": summaries,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
