"""Idle overhead: 128 slot children doing nothing but heartbeats (BENCH_IDLE_SLOTS for another count).

Unique memory (USS) per child and of the whole tree, and the tree's CPU use
over 60 idle seconds, for vac (the real tree: root, cvmfs-keeper, reaper,
128 slots) and for supervisord managing 128 copies of the peer's child
program. Prints tables, one line per target, and writes
bench/results/idle.json.
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

import report
from supervisord_tree import SupervisordTree
from vac_tree import VacTree

from vac.supervisor.build import TreeSettings

SLOTS = int(os.environ.get("BENCH_IDLE_SLOTS", "128"))
SETTLE = 5.0             # after the last first heartbeat, before measuring
WINDOW = float(os.environ.get("BENCH_IDLE_WINDOW", "60"))
START_DEADLINE = 120.0 * max(1.0, SLOTS / 128)   # for every child's first heartbeat
MIB = 1024 * 1024
HELPERS = ("cvmfs-keeper", "reaper")

# bench/results/idle.json at the default count, idle_<count>.json at another.
RESULTS_NAME = "idle" if SLOTS == 128 else f"idle_{SLOTS}"

TARGET_USS_MIB = 3.0
TARGET_CPU_PERCENT = 1.0


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def cpu_seconds(pid):
    """user + system CPU seconds of one process (clock-tick resolution)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_seconds(pid):
    """Time on CPU from /proc/PID/schedstat (nanosecond resolution), or None."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def uss_pss_mib(pid):
    info = psutil.Process(pid).memory_full_info()
    return info.uss / MIB, info.pss / MIB


def tree_roles(tree):
    """{"root": pid, "children": [pids of the slot-like children], "helpers": [...]}"""
    children = [tree.current[name] for name in tree.names]
    helpers = [tree.current[name] for name in HELPERS if name in tree.current]
    return {"root": tree.process.pid, "children": children, "helpers": helpers}


def all_pids(roles):
    return [roles["root"], *roles["helpers"], *roles["children"]]


def memory(roles):
    """USS per child and in total; PSS in total, which also counts shared pages once."""
    children = [uss_pss_mib(pid) for pid in roles["children"]]
    root = uss_pss_mib(roles["root"])
    helpers = [uss_pss_mib(pid) for pid in roles["helpers"]]
    child_uss = [uss for uss, _ in children]
    everyone = [root, *helpers, *children]
    return {
        "child_uss_mib": {"min": min(child_uss), "median": statistics.median(child_uss),
                          "max": max(child_uss)},
        "root_uss_mib": root[0],
        "helpers_uss_mib": [uss for uss, _ in helpers],
        "total_uss_mib": sum(uss for uss, _ in everyone),
        "total_pss_mib": sum(pss for _, pss in everyone),
    }


def cpu_snapshot(pids):
    return {pid: (cpu_seconds(pid), run_seconds(pid)) for pid in pids}


def bare_interpreter_uss():
    """USS of a Python interpreter that imported nothing: a floor for exec-based peers."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                               stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        return uss_pss_mib(process.pid)[0]
    finally:
        process.kill()
        process.wait(5)


def pump_all(trees, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for tree in trees:
            tree.pump(min(0.1, max(deadline - time.monotonic(), 0)))


def measure(trees):
    """Both trees idle through the same window; return per-tree figures."""
    for tree in trees:
        tree.wait_all_ready(time.monotonic() + START_DEADLINE)
    pump_all(trees, SETTLE)
    roles = {tree.label: tree_roles(tree) for tree in trees}
    memory_before = {label: memory(r) for label, r in roles.items()}
    before = {label: cpu_snapshot(all_pids(r)) for label, r in roles.items()}
    started = time.monotonic()
    pump_all(trees, WINDOW)
    try:
        after = {label: cpu_snapshot(all_pids(r)) for label, r in roles.items()}
    except psutil.NoSuchProcess as error:
        raise MeasurementFailed(f"a process ended during the idle window: {error}") from error
    wall = time.monotonic() - started
    for tree in trees:
        if tree_roles(tree) != roles[tree.label]:
            raise MeasurementFailed(f"{tree.label}: children were restarted during the idle window")
    figures = {}
    for label, r in roles.items():
        pids = all_pids(r)
        ticks = [after[label][pid][0] - before[label][pid][0] for pid in pids]
        runs = [None if None in (after[label][pid][1], before[label][pid][1])
                else after[label][pid][1] - before[label][pid][1] for pid in pids]
        figures[label] = {
            "processes": len(pids),
            "children": len(r["children"]),
            "window_s": wall,
            "cpu_s": sum(ticks),
            "cpu_percent": 100 * sum(ticks) / wall,
            "root_cpu_percent": 100 * ticks[0] / wall,
            "schedstat_cpu_percent": None if None in runs else 100 * sum(runs) / wall,
            "schedstat_root_cpu_percent": None if runs[0] is None else 100 * runs[0] / wall,
            "memory_start": memory_before[label],
            "memory_end": memory(r),
        }
    return figures


def judged_cpu_percent(figures):
    """The larger of the two CPU figures: tick rounding must not hide CPU use."""
    return max(figures["cpu_percent"], figures["schedstat_cpu_percent"] or 0.0)


def main():
    # A SIGTERM (a timeout in CI, say) must still run the cleanups below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    host = report.host_facts()
    print(f"idle overhead: {SLOTS} children doing nothing but heartbeats "
          f"(every {TreeSettings.heartbeat_interval:g} s, vacd's default, for both), CPU over {WINDOW:.0f} s, "
          f"USS at its end")
    print(f"vac: the real tree (root, cvmfs-keeper, reaper, {SLOTS} slots); supervisord: "
          f"{SLOTS} copies of a program with a slot worker's imports, heartbeating to the bench")
    print("both trees idle through the same window; CPU time is accounted per process, "
          "so neither is charged for the other")
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, "
          f"Linux {host['kernel']}, Python {host['python']}, vac {host['vac_commit']}")
    print()

    # The peer's children heartbeat as often as vac's: the same work, so the wake-ups compare.
    trees = [VacTree(SLOTS), SupervisordTree(SLOTS, heartbeat_interval=TreeSettings.heartbeat_interval)]
    started = []
    try:
        with tempfile.TemporaryDirectory(prefix="vac-bench-idle-") as workdir:
            try:
                for tree in trees:
                    path = os.path.join(workdir, tree.label)
                    os.mkdir(path)
                    tree.start(path)
                    started.append(tree)
                figures = measure(trees)
            finally:
                for tree in reversed(started):
                    tree.stop()
        floor = bare_interpreter_uss()
    except (MeasurementFailed, RuntimeError, OSError, psutil.Error) as error:
        print(f"measurement failed: {error}", file=sys.stderr)
        report.write_results(RESULTS_NAME, {"host": host, "failure": str(error)})
        return 1

    rows = []
    for label, f in figures.items():
        m = f["memory_end"]
        child = m["child_uss_mib"]
        rows.append([label, f["children"], child["min"], child["median"], child["max"],
                     m["root_uss_mib"], m["total_uss_mib"], m["total_pss_mib"]])
    print("memory (MiB) after the idle window: USS (unique) per child and in total "
          "(root + helpers + children), and total PSS, which also counts shared pages once:")
    report.print_table(["peer", "children", "child USS min", "median", "max",
                        "root USS", "total USS", "total PSS"], rows)
    print(f"for reference: a Python interpreter that imported nothing has {floor:.1f} MiB USS")
    print()
    rows = [[label, f["processes"], f["cpu_s"], f["cpu_percent"], f["root_cpu_percent"],
             _or_dash(f["schedstat_cpu_percent"]), _or_dash(f["schedstat_root_cpu_percent"])]
            for label, f in figures.items()]
    print(f"tree CPU over {figures['vac']['window_s']:.1f} idle seconds, % of one core: "
          "user + sys of every process (clock ticks, which round a short burst down to "
          "nothing), and time on CPU from /proc/PID/schedstat (ns):")
    report.print_table(["peer", "processes", "user+sys s", "user+sys %", "root's %",
                        "schedstat %", "root's %"], rows)
    print()

    vac = figures["vac"]
    median = vac["memory_end"]["child_uss_mib"]["median"]
    worst = vac["memory_end"]["child_uss_mib"]["max"]
    targets = [
        (f"under {TARGET_USS_MIB:.0f} MiB USS per slot child (median; max {worst:.2f})",
         median < TARGET_USS_MIB, f"{median:.2f} MiB"),
        (f"idle tree CPU under {TARGET_CPU_PERCENT:.0f}% of one core (the larger figure)",
         judged_cpu_percent(vac) < TARGET_CPU_PERCENT, f"{judged_cpu_percent(vac):.2f}%"),
    ]
    report.print_targets(targets)
    path = report.write_results(RESULTS_NAME, {
        "host": host,
        "settings": {"slots": SLOTS, "window_s": WINDOW, "settle_s": SETTLE,
                     "heartbeat_interval_s": TreeSettings.heartbeat_interval},
        "peers": figures,
        "bare_interpreter_uss_mib": floor,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
    })
    print(f"results: {path}")
    return 0


def _or_dash(value):
    return "-" if value is None else value


if __name__ == "__main__":
    sys.exit(main())
