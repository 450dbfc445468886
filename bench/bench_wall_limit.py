"""Wall-limit precision: when a machine at its wall-clock limit dies, minus its deadline.

Every container sleeps far past max_wallclock_seconds, so every one is ended
by the limit. The deadline is the machine's jobfeatures/shutdowntime_job
(whole seconds); the kill time is the engine's die event. Two payloads: one
that exits on SIGTERM, one that ignores it (ended by SIGKILL after vac's one
second of grace). vac: a real vacd; its machines' shutdown_message must be
the 700 wall-clock message. Anchor: a plain thread per slot that sleeps
until the same kind of deadline and calls the SDK's stop with the same grace.
Prints tables and the target line; writes bench/results/wall_limit.json.
"""

import os
import sys
import threading
import time

import report
from engine_events import (BENCH_ERRORS, ENGINE_ERRORS, EventRecorder, bench_image, cleanup, client,
                           remove_leftovers)
from plain_slots import PlainSlots
from vacd_factory import VacdFactory, VacdFailed

SLOTS = int(os.environ.get("BENCH_WALL_SLOTS", "16"))
ROUNDS = int(os.environ.get("BENCH_WALL_ROUNDS", "3"))
WALL_SECONDS = 6
GRACE_SECONDS = 1       # vac's grace at the wall-clock limit (slot_rules.WALLCLOCK_GRACE_SECONDS)
PAYLOADS = {
    "exits-on-term": "#!/bin/sh\nexec sleep 1000\n",
    "ignores-term": "#!/bin/sh\ntrap '' TERM\nexec sleep 1000\n",
}
EXCEEDED = "700 Exceeded max_wallclock_seconds"
NOTICED_LINE = ": reached its shutdown time "
STOPPING_LINE = "stopping container "
START_DEADLINE = 120.0
RELOAD_DEADLINE = 30.0
# Each peer: ROUNDS machines per slot, each living WALL_SECONDS plus start and stop.
RUN_DEADLINE = ROUNDS * (WALL_SECONDS + GRACE_SECONDS) * 3 + 60.0
# The integration target: a sleeping container ends within 2 s of its deadline.
TARGET_MAX_S = 2.0


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def die_times(events):
    """{container id: engine time of its first die event}."""
    times = {}
    for event in sorted(events, key=lambda e: e.time):
        if event.action == "die":
            times.setdefault(event.container, event.time)
    return times


def measure_vac(docker_client, image):
    """{payload: [die time - deadline]}, the shutdown_messages seen, and {step: [s after the deadline]}."""
    machinetypes = {
        payload: ({"root_image": f"docker://{image}", "target_share": "1",
                   "max_wallclock_seconds": str(WALL_SECONDS), "min_wallclock_seconds": str(WALL_SECONDS),
                   "fizzle_seconds": "1", "backoff_seconds": "10"}, user_data)
        for payload, user_data in PAYLOADS.items()}
    factory = VacdFactory("wall", slots=SLOTS, machinetypes=machinetypes)
    recorder = None
    try:
        factory.start()
        factory.wait_slots_idle(time.monotonic() + START_DEADLINE)
        recorder = EventRecorder(docker_client, factory.label)
        factory.set_draining(False)
        wanted = SLOTS * ROUNDS
        deadline = time.monotonic() + RUN_DEADLINE
        while not recorder.wait_count("die", wanted, min(deadline, time.monotonic() + 1)):
            factory.check_alive()
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"vac: {recorder.count('die')} of {wanted} machines ended "
                                        f"within {RUN_DEADLINE:.0f}s\n{factory.log_tail()}")
        applied = factory.applied_count()
        factory.set_draining(True)
        factory.wait_applied(applied + 1, time.monotonic() + RELOAD_DEADLINE)
        events = recorder.snapshot()
        # vacd's log tells when the slot saw the deadline and when it asked the engine to stop.
        noticed = factory.logged_times_by_machine(NOTICED_LINE)
        requested = factory.logged_times_by_machine(STOPPING_LINE)
        lateness, messages = {payload: [] for payload in PAYLOADS}, {}
        steps = {"noticed": [], "stop requested": [], "died": []}
        for container, died in die_times(events).items():
            labels = next(e.labels for e in events if e.container == container)
            machine = labels["vac.machine"]
            message = (factory.machine_file(machine, "joboutputs", "shutdown_message") or "none").strip()
            messages[message] = messages.get(message, 0) + 1
            shutdown = factory.machine_file(machine, "jobfeatures", "shutdowntime_job")
            if message != EXCEEDED or shutdown is None:
                continue
            deadline = int(shutdown)
            lateness[labels["vac.machinetype"]].append(died - deadline)
            if labels["vac.machinetype"] == "exits-on-term" and machine in noticed and machine in requested:
                steps["noticed"].append(noticed[machine] - deadline)
                steps["stop requested"].append(requested[machine] - deadline)
                steps["died"].append(died - deadline)
        return lateness, messages, steps
    finally:
        if recorder is not None:
            recorder.close()
        factory.stop()
        cleanup(docker_client, factory.label)
        factory.remove_dir()


def measure_plain(docker_client, image):
    """{payload: [die time - deadline]}: half of the slots run each payload, side by side."""
    names = list(PAYLOADS)
    runs = [PlainSlots(docker_client, image, PAYLOADS[name]) for name in names]
    recorders = [EventRecorder(docker_client, run.label) for run in runs]
    results, errors = [None] * len(runs), []

    def run_payload(index):
        try:
            results[index] = runs[index].wall_limit(SLOTS // len(runs), ROUNDS, WALL_SECONDS,
                                                    GRACE_SECONDS)
        except (*ENGINE_ERRORS, TimeoutError) as error:
            errors.append(error)

    try:
        threads = [threading.Thread(target=run_payload, args=(index,), daemon=True)
                   for index in range(len(runs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RUN_DEADLINE)
        if errors or any(result is None for result in results):
            raise MeasurementFailed(f"plain loop: {errors[0] if errors else 'did not finish in time'}")
        time.sleep(0.5)
        lateness = {}
        for name, recorder, deadlines in zip(names, recorders, results):
            died = die_times(recorder.snapshot())
            lateness[name] = [died[container] - deadline for container, deadline in deadlines
                              if container in died]
        return lateness
    finally:
        for run, recorder in zip(runs, recorders):
            run.stop_flag.set()
            recorder.close()
            cleanup(docker_client, run.label)
            run.remove_dir()


def rows_of(peer, lateness):
    rows = []
    for payload, values in lateness.items():
        if not values:
            raise MeasurementFailed(f"{peer}: no {payload} machine was ended at its deadline")
        stats = report.summarize(values)
        rows.append({"peer": peer, "payload": payload, **stats})
    return rows


def main():
    print(f"wall-limit precision: {SLOTS} slots, max_wallclock_seconds = {WALL_SECONDS}, {ROUNDS} machines "
          f"per slot; die event minus shutdowntime_job, seconds; grace {GRACE_SECONDS} s")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}")
    rows, failure, messages, steps = [], None, None, None
    try:
        docker_client = client()
        image = bench_image(docker_client)
        remove_leftovers(docker_client)
        vac, messages, steps = measure_vac(docker_client, image)
        rows += rows_of("vac", vac)
        rows += rows_of("plain SDK timer", measure_plain(docker_client, image))
    except (MeasurementFailed, VacdFailed, *BENCH_ERRORS) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    print()
    report.print_table(["peer", "payload", "n", "min s", "p50 s", "p99 s", "max s"],
                       [[r["peer"], r["payload"], r["n"], r["min"], r["p50"], r["p99"], r["max"]]
                        for r in rows])
    print()
    if messages is not None:
        print(f"vac machines' shutdown_message: {messages}")
    if steps and steps["died"]:
        print()
        print("where vac's time goes, exits-on-term (ms after the deadline; the first two from vacd's log):")
        report.print_table(["step", "n", "p50 ms", "p99 ms", "max ms"],
                           [[step, len(values), 1000 * report.percentile(values, 0.5),
                             1000 * report.percentile(values, 0.99), 1000 * max(values)]
                            for step, values in steps.items()])
        print()
    targets = []
    vac_rows = [r for r in rows if r["peer"] == "vac"]
    if vac_rows:
        worst = max(r["max"] for r in vac_rows)
        targets.append((f"every vac machine dies within {TARGET_MAX_S:.0f} s of its deadline",
                        worst <= TARGET_MAX_S, f"max {worst:.3f} s"))
    report.print_targets(targets)
    path = report.write_results("wall_limit", {
        "host": host, "settings": {"slots": SLOTS, "rounds": ROUNDS, "max_wallclock_seconds": WALL_SECONDS,
                                   "grace_s": GRACE_SECONDS, "payloads": PAYLOADS},
        "rows": rows, "vac_shutdown_messages": messages, "vac_steps_s": steps,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
