"""Turnover: machines that exit at once, vac beside a plain Docker SDK loop.

Every container writes "200 done" as its shutdown_message and exits. The
idle gap is the time from one container's die event to the next start event
in the same slot; machines per minute count the starts in a fixed window.
vac: a real vacd, started draining, undrained (vac.conf, SIGHUP) for the
window. Plain: one thread per slot that waits for its container, removes
it, then creates and starts the next, with the same image, command, mounts
and limits. The original Vac polled every 60 s and started one machine per
cycle. Prints tables and the target line; writes bench/results/slots_turnover.json.
"""

import os
import sys
import time

import report
from engine_events import (BENCH_ERRORS, BENCH_SLOT_LABEL, EventRecorder, bench_image, cleanup, client,
                           idle_gaps, remove_leftovers)
from plain_slots import PlainSlots
from vacd_factory import TURNOVER_USER_DATA as USER_DATA, VacdFailed, turnover_factory

# One slot shows the factory's own latency on an engine with nothing else to
# do; eight keep a 2-CPU engine busy, where the engine sets the pace.
WIDTHS = tuple(int(n) for n in os.environ.get("BENCH_TURNOVER_SLOTS", "1,8").split(","))
WINDOW = float(os.environ.get("BENCH_TURNOVER_WINDOW", "15"))
START_DEADLINE = 120.0
RELOAD_DEADLINE = 30.0
SETTLE = 1.0          # after the window, for its last exits to reach the event stream
TARGET_P50_S = 0.5
VAC_CYCLE_S = 60.0    # the original Vac: one machine per 60 s cycle


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def summary_row(peer, slots, events, began, slot_label):
    """Gaps and throughput of the events in [began, began + WINDOW], and those events."""
    inside = [event for event in events if began <= event.time <= began + WINDOW]
    gaps = idle_gaps(inside, slot_label)
    starts = sorted(event.time - began for event in inside if event.action == "start")
    if not gaps:
        raise MeasurementFailed(f"{peer}: no container exited and was followed by another "
                                f"in {WINDOW:.0f}s ({len(starts)} starts)")
    stats = report.summarize(gaps)
    return {"peer": peer, "slots": slots, "starts": len(starts), "first_start_s": starts[0],
            "per_minute": len(starts) / WINDOW * 60.0,
            "gaps": len(gaps), "gap_p50_s": stats["p50"], "gap_p99_s": stats["p99"],
            "gap_max_s": stats["max"], "gap_mean_s": stats["mean"],
            # For a look afterwards at what the summary hides: (slot, action, seconds from the go).
            "events": [(int(event.labels.get(slot_label, -1)), event.action, round(event.time - began, 4))
                       for event in sorted(inside, key=lambda e: e.time)]}


def measure_vac(docker_client, image, slots):
    factory = turnover_factory("turnover", slots, image)
    recorder = None
    try:
        factory.start()
        factory.wait_slots_idle(time.monotonic() + START_DEADLINE)
        recorder = EventRecorder(docker_client, factory.label)
        began = factory.set_draining(False)
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            factory.check_alive()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        applied = factory.applied_count()
        factory.set_draining(True)
        factory.wait_applied(applied + 1, time.monotonic() + RELOAD_DEADLINE)
        time.sleep(SETTLE)
        events = recorder.snapshot()
        codes = outcome_codes(factory, events)
        row = summary_row("vac", slots, events, began, "vac.slot")
        row["shutdown_messages"] = codes
        return row
    finally:
        if recorder is not None:
            recorder.close()
        factory.stop()
        cleanup(docker_client, factory.label)
        factory.remove_dir()


def outcome_codes(factory, events):
    """{shutdown_message line: count} of the machines that started, from their directories."""
    codes = {}
    for event in events:
        if event.action == "die":
            machine = event.labels.get("vac.machine")
            line = (factory.machine_file(machine, "joboutputs", "shutdown_message") or "none").strip()
            codes[line] = codes.get(line, 0) + 1
    return codes


def measure_plain(docker_client, image, slots):
    plain = PlainSlots(docker_client, image, USER_DATA)
    recorder = EventRecorder(docker_client, plain.label)
    try:
        began = plain.turnover(slots, WINDOW)
        time.sleep(1.0)
        return summary_row("plain SDK loop", slots, recorder.snapshot(), began, BENCH_SLOT_LABEL)
    finally:
        recorder.close()
        cleanup(docker_client, plain.label)
        plain.remove_dir()


def main():
    print(f"turnover: containers that exit at once, {WINDOW:.0f}s window per peer and width "
          f"{', '.join(map(str, WIDTHS))} slots; idle gap = die to the next start in the same slot "
          "(engine events)")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}")
    rows, failure = [], None
    try:
        docker_client = client()
        image = bench_image(docker_client)
        remove_leftovers(docker_client)
        for slots in WIDTHS:
            for measure in (measure_vac, measure_plain):
                rows.append(measure(docker_client, image, slots))
    except (MeasurementFailed, VacdFailed, *BENCH_ERRORS) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    print()
    table = [[r["peer"], r["slots"], r["first_start_s"], r["starts"], r["per_minute"], r["gaps"],
              r["gap_p50_s"], r["gap_p99_s"], r["gap_max_s"]] for r in rows]
    table.append([f"original Vac ({VAC_CYCLE_S:.0f} s cycle, by design)", "any", "up to 60", "-",
                  60.0 / VAC_CYCLE_S, "-", "up to 60", "up to 60", "-"])
    report.print_table(["peer", "slots", "first start s", "starts", "machines/min", "gaps", "gap p50 s",
                        "gap p99 s", "gap max s"], table)
    print()
    targets = []
    for slots in WIDTHS:
        vac = next((r for r in rows if r["peer"] == "vac" and r["slots"] == slots), None)
        plain = next((r for r in rows if r["peer"] != "vac" and r["slots"] == slots), None)
        if vac is None:
            continue
        print(f"{slots} slots: vac machines' shutdown_message: {vac['shutdown_messages']}")
        measured = f"{vac['gap_p50_s']:.3f} s"
        if plain is not None:
            print(f"{slots} slots: vac machines/min / plain loop machines/min = "
                  f"{vac['per_minute'] / plain['per_minute']:.2f}")
            measured += f"; plain loop {plain['gap_p50_s']:.3f} s"
        targets.append((f"vac idle gap p50 under {TARGET_P50_S} s with {slots} slots",
                        vac["gap_p50_s"] < TARGET_P50_S, measured))
    report.print_targets(targets)
    path = report.write_results("slots_turnover", {
        "host": host, "settings": {"widths": WIDTHS, "window_s": WINDOW, "user_data": USER_DATA},
        "peers": rows, "original_vac_cycle_s": VAC_CYCLE_S,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
