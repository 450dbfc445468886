"""Restart latency: SIGKILL of a child to its replacement's first heartbeat.

vac (the real factory tree: Root on build_tree) and supervisord (restarting a
program with a slot worker's imports) run one after the other in the same
run, with the same number of children and the same kill pacing. Prints a
table, one line per target, and writes bench/results/restart.json.
"""

import os
import signal
import sys
import tempfile
import time

import report
from supervisord_tree import SupervisordTree
from vac_tree import VacTree

CHILDREN = 8
# BENCH_KILLS shortens a trial run; the figures for the README use 200.
KILLS = int(os.environ.get("BENCH_KILLS", "200"))
# Kill pacing, the same for both peers: children are killed round-robin, one
# at a time; a child is killed only once it has been up (since its first
# heartbeat) MIN_UP seconds, and GAP seconds after the previous replacement's
# first heartbeat, so no restart overlaps another.
MIN_UP = 0.5
GAP = 0.05
# vac restarts a slot at once only if it had been ready healthy_after seconds
# (10 s by default); otherwise it backs off. The bench lowers the threshold
# below MIN_UP so that 200 kills fit in seconds; every kill still takes the
# path of a healthy slot's restart. supervisord's startsecs=0 is the match.
HEALTHY_AFTER = 0.25
START_DEADLINE = 90.0        # for all children's first heartbeats
KILL_DEADLINE = 10.0         # for one replacement's first heartbeat
# supervisord takes over a second per restart (see supervisord_tree.py).
SERIES_DEADLINE = KILLS * 2.0 + 30.0   # for one peer's whole series of kills

TARGET_P50_MS = 20.0
TARGET_RATIO = 10.0


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def wait_killable(tree, name, last_ready, deadline):
    """Pump until `name` may be killed under the pacing rules; return its pid."""
    while True:
        now = time.time()
        pid = tree.current.get(name)
        ready = tree.moments.get(pid, {}).get("ready")
        if ready is not None:
            wait = max(ready + MIN_UP - now, last_ready + GAP - now)
            if wait <= 0:
                return pid
        else:
            wait = 0.05
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"{tree.label}: {name} was not up in time for its kill")
        tree.pump(wait)


def wait_replacement(tree, name, old_pid, deadline):
    """Pump until a new incarnation of `name` has sent its first heartbeat."""
    while True:
        pid = tree.current.get(name)
        if pid != old_pid and "ready" in tree.moments.get(pid, {}):
            return pid
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"{tree.label}: {name} (killed pid {old_pid}) had no "
                                    f"replacement heartbeat within {KILL_DEADLINE:.0f}s")
        tree.pump(0.5)


def kill_series(tree, names):
    """Kill `names` round-robin KILLS times; return one sample per kill (ms)."""
    samples = []
    last_ready = 0.0
    series_deadline = time.monotonic() + SERIES_DEADLINE
    for n in range(KILLS):
        name = names[n % len(names)]
        old_pid = wait_killable(tree, name, last_ready, series_deadline)
        killed_at = time.time()
        os.kill(old_pid, signal.SIGKILL)
        new_pid = wait_replacement(tree, name, old_pid,
                                   min(time.monotonic() + KILL_DEADLINE, series_deadline))
        moments = tree.moments[new_pid]
        last_ready = moments["ready"]
        sample = {"child": name, "killed_pid": old_pid, "pid": new_pid,
                  "ready_ms": (moments["ready"] - killed_at) * 1000}
        if "started" in moments:          # vac: the root forked the replacement
            sample["forked_ms"] = (moments["started"] - killed_at) * 1000
        if "exited" in tree.moments[old_pid]:   # vac: the root reaped the killed child
            sample["reaped_ms"] = (tree.moments[old_pid]["exited"] - killed_at) * 1000
        if "code_started" in moments:     # supervisord: the new interpreter ran our code
            sample["code_started_ms"] = (moments["code_started"] - killed_at) * 1000
        samples.append(sample)
    return samples


def run_peer(tree, names):
    with tempfile.TemporaryDirectory(prefix=f"vac-bench-{tree.label}-") as workdir:
        try:
            tree.start(workdir)
            tree.wait_all_ready(time.monotonic() + START_DEADLINE)
            return kill_series(tree, names)
        finally:
            tree.stop()


def phase(samples, key):
    values = [s[key] for s in samples if key in s]
    return report.summarize(values)["p50"] if values else None


def main():
    # A SIGTERM (a timeout in CI, say) must still run the cleanups below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    print(f"restart latency: SIGKILL of a child to its replacement's first heartbeat; "
          f"{CHILDREN} children, {KILLS} kills round-robin, one at a time; each killed "
          f"child had been up >= {MIN_UP}s, >= {GAP}s after the previous restart")
    print(f"vac: the real tree (cvmfs-keeper, reaper, {CHILDREN} slots) with "
          f"SlotRestartPolicy(healthy_after={HEALTHY_AFTER}) (default 10 s) and the pool "
          f"breaker off, so every kill is a healthy slot's immediate restart")
    print("supervisord: autorestart=true, startsecs=0; its child imports docker, msgpack, "
          "psutil, setproctitle and then sends its first heartbeat")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, "
          f"Linux {host['kernel']}, Python {host['python']}, vac {host['vac_commit']}")
    print()

    peers = [VacTree(CHILDREN, healthy_after=HEALTHY_AFTER), SupervisordTree(CHILDREN)]
    results, failures = {}, []
    for tree in peers:
        started = time.monotonic()
        try:
            samples = run_peer(tree, tree.names[:CHILDREN])
        except (MeasurementFailed, RuntimeError, OSError) as error:
            print(f"{tree.label}: measurement failed: {error}", file=sys.stderr)
            failures.append(f"{tree.label}: {error}")
            continue
        latencies = [s["ready_ms"] for s in samples]
        results[tree.label] = {
            "summary_ms": report.summarize(latencies),
            "phases_p50_ms": {key: phase(samples, key)
                              for key in ("reaped_ms", "forked_ms", "code_started_ms")},
            "samples": samples,
            "seconds": time.monotonic() - started,
        }

    rows = []
    for label, result in results.items():
        s = result["summary_ms"]
        rows.append([label, s["n"], s["p50"], s["p99"], s["min"], s["mean"], s["max"]])
    if rows:
        report.print_table(["peer", "kills", "p50 ms", "p99 ms", "min ms", "mean ms", "max ms"],
                           rows)
        print()
        phases = []
        for label, result in results.items():
            p = result["phases_p50_ms"]
            phases.append([label, _or_dash(p["reaped_ms"]), _or_dash(p["forked_ms"]),
                           _or_dash(p["code_started_ms"]), result["summary_ms"]["p50"]])
        print("where the time goes (p50 ms after the kill):")
        report.print_table(["peer", "old reaped", "new forked", "new code runs", "first heartbeat"],
                           phases)
        print()

    targets = []
    vac, peer = results.get("vac"), results.get("supervisord")
    ratio = None
    if vac is not None:
        p50 = vac["summary_ms"]["p50"]
        targets.append((f"vac restart p50 under {TARGET_P50_MS:.0f} ms", p50 < TARGET_P50_MS,
                        f"{p50:.2f} ms"))
    if vac is not None and peer is not None:
        ratio = peer["summary_ms"]["p50"] / vac["summary_ms"]["p50"]
        print(f"supervisord p50 / vac p50 = {ratio:.1f}x")
        targets.append((f"vac at least {TARGET_RATIO:.0f}x faster than supervisord (p50)",
                        ratio >= TARGET_RATIO, f"{ratio:.1f}x"))
    report.print_targets(targets)

    path = report.write_results("restart", {
        "host": host,
        "settings": {"children": CHILDREN, "kills": KILLS, "min_up_s": MIN_UP, "gap_s": GAP,
                     "vac_healthy_after_s": HEALTHY_AFTER, "supervisord_startsecs": 0},
        "peers": results,
        "ratio_p50": ratio,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failures": failures,
    })
    print(f"results: {path}")
    return 1 if failures else 0


def _or_dash(value):
    return "-" if value is None else value


if __name__ == "__main__":
    sys.exit(main())
