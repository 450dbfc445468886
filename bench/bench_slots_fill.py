"""Fill: 32 free slots to 32 running containers, vac beside a plain Docker SDK loop.

vac: a real vacd with 32 slots, started draining; once every slot's title
says idle, draining is turned off (vac.conf rewritten, SIGHUP) and the time
runs until the engine has sent 32 start events. Then draining is turned on
again, the containers are killed and the slots go idle for the next round.
Plain: 32 threads, each creating and starting one container with the same
image, command, mounts and limits. Rounds alternate between the peers.
Prints tables and the target line, and writes bench/results/slots_fill.json.
"""

import os
import statistics
import sys
import time

import report
from engine_events import BENCH_ERRORS, EventRecorder, bench_image, cleanup, client, remove_leftovers
from plain_slots import PlainSlots
from vacd_factory import VacdFactory, VacdFailed

SLOTS = 32
ROUNDS = int(os.environ.get("BENCH_FILL_ROUNDS", "3"))
USER_DATA = "#!/bin/sh\nexec sleep 1000\n"
START_DEADLINE = 120.0     # vacd's 32 slot workers up and idle
FILL_DEADLINE = 120.0      # 32 containers started
RELOAD_DEADLINE = 30.0
PLACING_LINE = ": placing fill machine "
TARGET_RATIO = 1.25


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def start_offsets(events, began):
    """Seconds from the go to each start event."""
    return sorted(event.time - began for event in events if event.action == "start")


def round_row(peer, number, offsets):
    fill = offsets[-1]
    return {"peer": peer, "round": number, "n": len(offsets), "first_s": offsets[0],
            "p50_s": report.percentile(offsets, 0.5), "p99_s": report.percentile(offsets, 0.99),
            "fill_s": fill, "per_second": len(offsets) / fill}


def plain_round(docker_client, image, number):
    plain = PlainSlots(docker_client, image, USER_DATA)
    recorder = EventRecorder(docker_client, plain.label)
    try:
        began, _ = plain.fill(SLOTS)
        if not recorder.wait_count("start", SLOTS, time.monotonic() + FILL_DEADLINE):
            raise MeasurementFailed(f"plain loop: {recorder.count('start')} of {SLOTS} start events")
        return round_row("plain SDK loop", number, start_offsets(recorder.snapshot(), began))
    finally:
        recorder.close()
        cleanup(docker_client, plain.label)
        plain.remove_dir()


def vac_round(docker_client, factory, number):
    factory.wait_slots_idle(time.monotonic() + START_DEADLINE)
    left = docker_client.api.containers(all=True, filters={"label": factory.label})
    if left:
        raise MeasurementFailed(f"vac: {len(left)} containers of the last round are still there")
    recorder = EventRecorder(docker_client, factory.label)
    try:
        began = factory.set_draining(False)
        deadline = time.monotonic() + FILL_DEADLINE
        while not recorder.wait_count("start", SLOTS, min(deadline, time.monotonic() + 1)):
            factory.check_alive()
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"vac: {recorder.count('start')} of {SLOTS} start events "
                                        f"within {FILL_DEADLINE:.0f}s\n{factory.log_tail()}")
        row = round_row("vac", number, start_offsets(recorder.snapshot(), began))
        # When the root placed the first machine after the SIGHUP, from its log.
        placed = factory.logged_times(PLACING_LINE, began)
        row["first_placement_s"] = min(placed) - began if placed else None
        # Free the slots for the next round as an operator would: drain, then
        # end the machines. fizzle_seconds = 0, so a killed machine is no abort.
        applied = factory.applied_count()
        factory.set_draining(True)
        factory.wait_applied(applied + 1, time.monotonic() + RELOAD_DEADLINE)
        for container in docker_client.api.containers(filters={"label": factory.label}):
            docker_client.api.kill(container["Id"])
        return row
    finally:
        recorder.close()


def main():
    print(f"fill: {SLOTS} free slots to {SLOTS} running containers (engine start events), "
          f"{ROUNDS} rounds per peer, alternating")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}")
    rows, failure, cold_start, factory = [], None, None, None
    try:
        docker_client = client()
        image = bench_image(docker_client)
        remove_leftovers(docker_client)
        factory = VacdFactory("fill", slots=SLOTS, machinetypes={
            "fill": ({"root_image": f"docker://{image}", "target_share": "1",
                      "max_wallclock_seconds": "3600", "fizzle_seconds": "0", "backoff_seconds": "10"},
                     USER_DATA)})
        launched = time.time()
        factory.start()
        cold_start = factory.wait_slots_idle(time.monotonic() + START_DEADLINE) - launched
        for number in range(ROUNDS):
            # Alternate which peer goes first, so neither always meets a busier engine.
            order = ("vac", "plain") if number % 2 == 0 else ("plain", "vac")
            for peer in order:
                if peer == "vac":
                    rows.append(vac_round(docker_client, factory, number))
                else:
                    rows.append(plain_round(docker_client, image, number))
    except (MeasurementFailed, VacdFailed, *BENCH_ERRORS) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    finally:
        if factory is not None:
            factory.stop()
            cleanup(docker_client, factory.label)
            factory.remove_dir()

    print()
    report.print_table(["peer", "round", "n", "first placed s", "first start s", "p50 s", "p99 s",
                        "all running s", "starts/s"],
                       [[r["peer"], r["round"], r["n"], _or_dash(r.get("first_placement_s")), r["first_s"],
                         r["p50_s"], r["p99_s"], r["fill_s"], r["per_second"]] for r in rows])
    print("(seconds from the go: vac's SIGHUP that ends draining, the plain loop's first call; "
          "'first placed' from vacd's log)")
    print()
    summary = {}
    for peer in ("vac", "plain SDK loop"):
        fills = [r["fill_s"] for r in rows if r["peer"] == peer]
        if fills:
            summary[peer] = statistics.median(fills)
    placements = [r["first_placement_s"] for r in rows if r.get("first_placement_s") is not None]
    if cold_start is not None:
        print(f"vac cold start (vacd launched to {SLOTS} idle slot workers): {cold_start:.2f} s")
    targets, ratio = [], None
    # A round that failed leaves the peers measured unequally: no verdict then.
    if len(summary) == 2 and failure is None:
        ratio = summary["vac"] / summary["plain SDK loop"]
        print(f"median time to {SLOTS} running: vac {summary['vac']:.2f} s, "
              f"plain SDK loop {summary['plain SDK loop']:.2f} s, ratio {ratio:.2f}x")
        if placements:
            delay = statistics.median(placements)
            print(f"of vac's time, SIGHUP to the first placement (median): {delay:.2f} s; "
                  f"from the first placement the ratio would be "
                  f"{(summary['vac'] - delay) / summary['plain SDK loop']:.2f}x")
        targets.append((f"vac fills {SLOTS} slots within {TARGET_RATIO}x of the plain loop (median)",
                        ratio <= TARGET_RATIO, f"{ratio:.2f}x"))
    report.print_targets(targets)
    path = report.write_results("slots_fill", {
        "host": host, "settings": {"slots": SLOTS, "rounds": ROUNDS, "user_data": USER_DATA},
        "rounds": rows, "median_fill_s": summary, "ratio": ratio, "cold_start_s": cold_start,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0


def _or_dash(value):
    return "-" if value is None else value


if __name__ == "__main__":
    sys.exit(main())
