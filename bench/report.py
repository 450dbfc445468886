"""Benchmark output: summary statistics, aligned tables, target lines, JSON results."""

import json
import math
import os
import platform
import statistics
import subprocess
import time

import vac

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def percentile(values, fraction):
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    # round() first: 0.99 * 200 is 198.00000000000003 in binary floating point.
    rank = max(math.ceil(round(fraction * len(ordered), 9)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values):
    """min, p50, p99, mean and max of a non-empty list of numbers."""
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def print_table(headers, rows):
    """Print rows under headers, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value):
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def print_targets(targets):
    """One line per target: (description, met, measured text)."""
    for description, met, measured in targets:
        print(f"target: {description}: {'met' if met else 'NOT MET'} ({measured})")


def settle(max_load, max_seconds):
    """Wait until the 1-minute load average is at most `max_load`, for `max_seconds` at the most.

    A bench that follows another (as under `make bench`) would otherwise
    begin while the last one's containers still wind down. Returns
    (seconds waited, load then).
    """
    began = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - began < max_seconds:
        time.sleep(5.0)
    return time.monotonic() - began, os.getloadavg()[0]


def host_facts():
    """What the figures depend on: CPU count, load, kernel, Python."""
    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "vac_path": os.path.dirname(os.path.abspath(vac.__file__)),
        "vac_commit": vac_commit(),
    }


def vac_commit():
    """The commit of the vac package measured, '+dirty' if vac/ has local changes; or None."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(vac.__file__)))
    try:
        head = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--", "vac"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changes.strip() else "")


def write_results(name, data):
    """Write `data` as bench/results/<name>.json and return the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    return path


def finish(name, data, targets, failure):
    """Write `data` with the targets and the failure as bench/results/<name>.json, say where,
    and return the exit code: 1 if the measurement failed (a missed target is no failure)."""
    path = write_results(name, {**data, "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
                                "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0
