"""Recovery of a full node: the whole tree SIGKILLed, then dockerd restarted.

A real vacd with 128 slots (BENCH_RECOVERY_SLOTS) fills every slot with a
busybox machine that sleeps for an hour (wall limit a day) on the local
Docker engine. Everything is seen as an operator sees it: the control
socket's `slots` answer, asked every 25 ms on a new connection, gives each
slot's state and machine; the engine is asked only to kill containers.

- A, tree SIGKILL: every process of the tree is stopped (SIGSTOP), then all
  are SIGKILLed (tests/integration/outages.py). While no vacd runs, BENCH_
  RECOVERY_FREED containers (4) are killed with `docker kill`, so their slots
  are free. vacd is started again on the same configuration and state
  directory. From its exec: the socket's first answer; for each slot whose
  container lived on, when it reports `running` with the same machine (its
  worker adopted it); for the freed slots, when the first one shows a new
  machine, and when all of them run one.
- B, dockerd restart with live-restore: with every slot full again, dockerd
  gets SIGTERM and is waited for; every slot must report `unavailable`, and
  the containers' processes must live on. The init processes of FREED other
  containers are SIGKILLed from the host meanwhile. dockerd is started again
  the way scripts/bootstrap runs it. From its first answer to /_ping (asked
  every 20 ms): when each slot whose container lived on reports `running`
  with the same machine again, and the freed slots as in A.

At the end every machine is ended (drain with deadline 0) and the state
directory is read: each machine that ran must be finalised once (its
`finished` marker, one "finalised" line in all vacds' logs, one end reported
to the root) with one APEL record (fizzle_seconds is 1), and none lost.
The peer is the original Vac's documented cycle, not a measurement: it
rebuilt its view of the machines only at its next 60 s cycle and started at
most one machine per cycle. Prints a table and the targets; writes
bench/results/recovery.json.
"""

import os
import signal
import sys
import time
from pathlib import Path

import psutil

import report
from engine_events import BENCH_ERRORS, cleanup, prepare
from vacd_factory import VacdFactory, VacdFailed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from outages import DockerEngine, kill_tree  # noqa: E402
from state_records import accounting, apel_records, read_machines  # noqa: E402
from vac.control.client import ControlClient, ControlError  # noqa: E402

SLOTS = int(os.environ.get("BENCH_RECOVERY_SLOTS", "128"))
FREED = int(os.environ.get("BENCH_RECOVERY_FREED", "4"))
MACHINETYPE = "sleeper"
# A machine that sleeps for an hour and ends at once on SIGTERM (a shell as
# pid 1 ignores it unless it traps it), so that the final drain is quick.
USER_DATA = "#!/bin/sh\ntrap 'exit 0' TERM\nsleep 3600 &\nwait $!\n"
WALLCLOCK_SECONDS = 86400
FIZZLE_SECONDS = 1
POLL_S = 0.025
PING_POLL_S = 0.02
SOCKET_TIMEOUT = 5.0
FILL_DEADLINE = 60.0 + 2.0 * SLOTS
RECOVERY_DEADLINE = 60.0 + SLOTS / 2
OUTAGE_DEADLINE = 60.0
DRAIN_DEADLINE = 60.0 + SLOTS
TARGET_S = 5.0
PEER_CYCLE_S = 60.0
RUNNING = "running"
UNAVAILABLE = "unavailable"


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def slot_rows(socket_path):
    """{slot: row} of the control socket's `slots` answer; None while nothing answers."""
    try:
        with ControlClient(socket_path, timeout=SOCKET_TIMEOUT) as control:
            return {row["slot"]: row for row in control.request("slots")}
    except (ControlError, OSError):
        return None


def wait_rows(factory, done, what, deadline, seen):
    """Poll the socket until done(rows) is truthy; return that value. `seen` collects every machine shown."""
    while True:
        factory.check_alive()
        rows = slot_rows(factory.socket_path)
        if rows is not None:
            seen.update(row["machine"] for row in rows.values() if row["machine"])
            value = done(rows)
            if value:
                return value
        if time.monotonic() > deadline:
            states = {} if rows is None else {s: (r["state"], r["machine"]) for s, r in rows.items()}
            raise MeasurementFailed(f"not in time: {what}; slots: {dict(list(states.items())[:8])} …"
                                    f"\n{factory.log_tail()}")
        time.sleep(POLL_S)


def all_running(rows):
    """{slot: row} once every slot runs a machine."""
    if len(rows) == SLOTS and all(row["state"] == RUNNING and row["machine"] for row in rows.values()):
        return rows
    return None


def full_node(factory, seen, what):
    """{slot: row} once every slot runs a machine that has lived past fizzle_seconds.

    A machine killed sooner would count as an abort and back its machinetype
    off, which would hold the freed slots empty for backoff_seconds.
    """
    rows = wait_rows(factory, all_running, what, time.monotonic() + FILL_DEADLINE, seen)
    youngest = max(row["started_at"] for row in rows.values())
    time.sleep(max(0.0, youngest + FIZZLE_SECONDS + 1.0 - time.time()))
    return rows


def freed_slots(offset):
    """FREED slots spread over the pool."""
    return sorted({(i * SLOTS // FREED + offset) % SLOTS for i in range(FREED)})


class Recovery:
    """Watches the socket from time.monotonic() `origin` until every slot is supervised again."""

    def __init__(self, factory, before, freed, origin, seen):
        self.factory = factory
        self.before = before          # {slot: machine uuid} when the outage began
        self.freed = freed            # slots whose containers were killed meanwhile
        self.origin = origin
        self.seen = seen
        self.first_answer = None
        self.adopted = {}             # slot -> seconds until it showed its machine running again
        self.placed = {}              # freed slot -> seconds until it showed a new machine
        self.refilled = {}            # freed slot -> seconds until that machine ran
        self.replaced = set()         # slots whose living machine gave way to another (must stay empty)

    def watch(self, deadline):
        wait_rows(self.factory, self._look, "every slot supervised again", deadline, self.seen)
        return self

    def _look(self, rows):
        now = time.monotonic() - self.origin
        if self.first_answer is None:
            self.first_answer = now
        for slot, row in rows.items():
            machine, state = row["machine"], row["state"]
            if slot in self.freed:
                if machine and machine != self.before[slot]:
                    self.placed.setdefault(slot, now)
                    if state == RUNNING:
                        self.refilled.setdefault(slot, now)
            elif machine and machine != self.before[slot]:
                self.replaced.add(slot)
            elif machine == self.before[slot] and state == RUNNING:
                self.adopted.setdefault(slot, now)
        return (len(self.adopted) + len(self.replaced) == SLOTS - len(self.freed)
                and len(self.refilled) == len(self.freed))

    def figures(self):
        adopted = sorted(self.adopted.values())
        return {"machines": len(self.before), "lived_on": SLOTS - len(self.freed), "freed": len(self.freed),
                "socket_answer_s": self.first_answer,
                "adopted": report.summarize(adopted) if adopted else None,
                "adopted_by_slot_s": {str(slot): t for slot, t in sorted(self.adopted.items())},
                "first_placement_s": min(self.placed.values()) if self.placed else None,
                "all_refilled_s": max(self.refilled.values()) if self.refilled else None,
                "replaced_slots": sorted(self.replaced)}


def wait_exited(docker_client, container_ids, deadline):
    """Wait until the engine says each container has exited."""
    for container_id in container_ids:
        while docker_client.api.inspect_container(container_id)["State"]["Running"]:
            if time.monotonic() > deadline:
                raise MeasurementFailed(f"container {container_id[:12]} did not exit after its kill")
            time.sleep(POLL_S)


def tree_sigkill(factory, docker_client, seen):
    """Scenario A: the whole tree SIGKILLed, containers killed while no vacd runs, vacd started again."""
    rows = full_node(factory, seen, "every slot running")
    before = {slot: row["machine"] for slot, row in rows.items()}
    root_pid = factory.proc.pid
    killed = kill_tree(factory)
    freed = freed_slots(0)
    for slot in freed:
        docker_client.api.kill(rows[slot]["container_id"])
    wait_exited(docker_client, [rows[slot]["container_id"] for slot in freed], time.monotonic() + 30)
    living = len(docker_client.api.containers(filters={"label": factory.label, "status": "running"}))
    factory.stop()     # closes the killed vacd's log
    origin = time.monotonic()
    factory.start()
    recovery = Recovery(factory, before, freed, origin, seen).watch(origin + RECOVERY_DEADLINE)
    figures = recovery.figures()
    figures.update({"processes_killed": len(killed), "killed_root_pid": root_pid,
                    "containers_running_while_down": living})
    return figures, set(before.values())


def dockerd_restart(factory, docker_client, engine, seen):
    """Scenario B: dockerd stopped and started again under a running vacd, with live-restore."""
    rows = full_node(factory, seen, "every slot running again")
    before = {slot: row["machine"] for slot, row in rows.items()}
    root_pid = factory.proc.pid
    pids = {slot: docker_client.api.inspect_container(row["container_id"])["State"]["Pid"]
            for slot, row in rows.items()}
    freed = freed_slots(1)
    stop_began = time.monotonic()
    engine.stop()
    stopped_s = time.monotonic() - stop_began
    unavailable = wait_rows(factory, lambda rs: all(r["state"] == UNAVAILABLE for r in rs.values()) and rs,
                            "every slot reports the engine unavailable", time.monotonic() + OUTAGE_DEADLINE, seen)
    reported_s = time.monotonic() - stop_began
    lived_on = sum(1 for pid in pids.values() if psutil.pid_exists(pid))
    for slot in freed:
        os.kill(pids[slot], signal.SIGKILL)
    killed_at = time.monotonic()
    while any(psutil.pid_exists(pids[slot]) for slot in freed):
        if time.monotonic() > killed_at + 30:
            raise MeasurementFailed("a container's init process outlived its SIGKILL")
        time.sleep(POLL_S)
    engine.start(poll_seconds=PING_POLL_S)
    outage_s = engine.answered_at - stop_began
    recovery = Recovery(factory, before, freed, engine.answered_at, seen).watch(
        engine.answered_at + RECOVERY_DEADLINE)
    figures = recovery.figures()
    figures.update({"dockerd_stop_s": stopped_s, "all_unavailable_after_s": reported_s,
                    "unavailable_slots": len(unavailable), "outage_s": outage_s,
                    "containers_alive_while_down": lived_on,
                    "root_pid_unchanged": factory.proc.pid == root_pid and factory.proc.poll() is None})
    return figures, set(before.values())


def drain_all(factory, seen):
    """End every machine (drain, deadline 0) and wait until each is finalised and every slot idle."""
    with ControlClient(factory.socket_path, timeout=SOCKET_TIMEOUT) as control:
        control.request("drain", deadline=0)
    deadline = time.monotonic() + DRAIN_DEADLINE
    wait_rows(factory, lambda rs: len(rs) == SLOTS and all(r["state"] == "idle" for r in rs.values()),
              "every slot idle after the drain", deadline, seen)
    while not all(m.finished for m in read_machines(factory.state_dir)):
        if time.monotonic() > deadline:
            raise MeasurementFailed("not every machine was finalised after the drain")
        time.sleep(POLL_S)


def apel_expected(machine):
    """1 if the machine lived at least fizzle_seconds (it has an APEL record), else 0."""
    lived = machine.ended - machine.started if machine.started is not None and machine.ended is not None else 0
    return 1 if lived >= FIZZLE_SECONDS else 0


def check_records(factory, seen, groups):
    """Finalisations and losses, in all and for each group of machines ({name: uuids})."""
    machines = {m.uuid: m for m in read_machines(factory.state_dir)}
    counts = accounting(machines.values(), apel_records(factory.state_dir), factory.log_texts())

    def judged(uuids):
        twice = sorted(u for u in uuids if u in counts and (counts[u].finalised > 1 or counts[u].reported > 1
                                                             or counts[u].apel_records > 1))
        lost = sorted(u for u in uuids if u not in machines or not machines[u].finished
                      or counts[u].finalised == 0 or counts[u].reported == 0
                      or counts[u].apel_records < apel_expected(machines[u]))
        return {"machines": len(uuids), "finalised_twice": twice, "lost": lost,
                "details": {u: {"record": machines[u].state if u in machines else None,
                                "finished": u in machines and machines[u].finished,
                                "accounting": counts[u].__dict__ if u in counts else None}
                            for u in twice + lost}}

    result = {name: judged(uuids) for name, uuids in groups.items()}
    result["all"] = judged(set(machines) | seen)
    result["all"]["apel_records"] = sum(c.apel_records for c in counts.values())
    return result


def measure(docker_client, image):
    factory = VacdFactory("recovery", slots=SLOTS, machinetypes={MACHINETYPE: (
        {"root_image": f"docker://{image}", "target_share": "1", "max_wallclock_seconds": str(WALLCLOCK_SECONDS),
         "fizzle_seconds": str(FIZZLE_SECONDS), "backoff_seconds": "10"}, USER_DATA)})
    engine = DockerEngine()
    seen = set()
    try:
        factory.start()
        factory.wait_slots_idle(time.monotonic() + FILL_DEADLINE)
        fill_began = time.monotonic()
        factory.set_draining(False)
        wait_rows(factory, all_running, "every slot running", time.monotonic() + FILL_DEADLINE, seen)
        fill_s = time.monotonic() - fill_began
        print(f"filled {SLOTS} slots in {fill_s:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
        load_a = os.getloadavg()[0]
        tree, tree_machines = tree_sigkill(factory, docker_client, seen)
        tree["load_before"] = load_a
        print(f"A done: all adopted at {tree['adopted']['max']:.2f} s", flush=True)
        load_b = os.getloadavg()[0]
        restart, restart_machines = dockerd_restart(factory, docker_client, engine, seen)
        restart["load_before"] = load_b
        print(f"B done: all supervised again at {restart['adopted']['max']:.2f} s", flush=True)
        drain_all(factory, seen)
        factory.stop()
        records = check_records(factory, seen, {"tree_sigkill": tree_machines,
                                                "dockerd_restart": restart_machines})
        return {"fill_s": fill_s, "tree_sigkill": tree, "dockerd_restart": restart, "records": records}
    finally:
        factory.stop()
        if engine.stopped:
            engine.ensure_running()
        cleanup(docker_client, factory.label)
        factory.remove_dir()


def seconds(value):
    return "-" if value is None else f"{value:.2f}"


def print_figures(f):
    rows = []
    for key, label in (("tree_sigkill", "A: tree SIGKILL, vacd started"),
                       ("dockerd_restart", "B: dockerd restart, live-restore")):
        s, judged = f[key], f["records"][key]
        rows.append([label, f"{s['machines']} ({s['freed']} freed)", seconds(s["socket_answer_s"])
                     if key == "tree_sigkill" else "up", seconds(s["adopted"]["p50"]), seconds(s["adopted"]["max"]),
                     seconds(s["first_placement_s"]), seconds(s["all_refilled_s"]),
                     len(judged["finalised_twice"]), len(judged["lost"])])
    rows.append(["original Vac (documented 60 s cycle, not measured)", "-", "-", "-",
                 f"<= {PEER_CYCLE_S:.0f}", f"<= {PEER_CYCLE_S:.0f}",
                 f"<= {FREED * PEER_CYCLE_S:.0f} (one per cycle)", "-", "-"])
    report.print_table(["scenario", "machines", "socket s", "adopted p50 s", "all adopted s",
                        "first new s", "all freed refilled s", "finalised twice", "lost"], rows)
    a, b = f["tree_sigkill"], f["dockerd_restart"]
    print(f"A: {a['processes_killed']} processes killed; {a['containers_running_while_down']} containers ran on "
          f"while no vacd ran; times from the new vacd's exec")
    print(f"B: dockerd stopped in {b['dockerd_stop_s']:.1f} s, every slot reported it unavailable "
          f"{b['all_unavailable_after_s']:.1f} s after the stop began, {b['containers_alive_while_down']} of "
          f"{b['machines']} containers ran on while it was down, it answered again {b['outage_s']:.1f} s after "
          f"the stop began; times from that answer; the root "
          f"{'ran throughout' if b['root_pid_unchanged'] else 'DID NOT run throughout'}")
    every = f["records"]["all"]
    print(f"records: {every['machines']} machines in all, {every['apel_records']} APEL records, "
          f"{len(every['finalised_twice'])} finalised more than once, {len(every['lost'])} lost")


def main():
    # A SIGTERM (a timeout in CI, say) must still run the cleanups below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    print(f"recovery of a full node: {SLOTS} slots of busybox machines that sleep; the whole tree SIGKILLed "
          f"(A), then dockerd restarted with live-restore (B); {FREED} containers killed during each outage; "
          f"the control socket asked every {1000 * POLL_S:.0f} ms")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}", flush=True)
    figures, failure = None, None
    try:
        figures = measure(*prepare())
    except (MeasurementFailed, VacdFailed, AssertionError, ControlError, OSError, *BENCH_ERRORS) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    targets = []
    if figures is not None:
        print()
        print_figures(figures)
        print()
        for key, label in (("tree_sigkill", "A"), ("dockerd_restart", "B")):
            worst = figures[key]["adopted"]["max"]
            targets.append((f"{label}: every machine supervised again within {TARGET_S:.0f} s", worst <= TARGET_S,
                            f"{worst:.2f} s"))
        judged = figures["records"]["all"]
        targets.append(("no machine finalised twice", not judged["finalised_twice"],
                        f"{len(judged['finalised_twice'])} of {judged['machines']}"))
        targets.append(("no machine lost", not judged["lost"], f"{len(judged['lost'])} of {judged['machines']}"))
        report.print_targets(targets)
    settings = {"slots": SLOTS, "freed": FREED, "poll_s": POLL_S, "user_data": USER_DATA,
                "wallclock_s": WALLCLOCK_SECONDS, "peer_cycle_s": PEER_CYCLE_S}
    return report.finish("recovery", {"host": host, "settings": settings, "figures": figures}, targets, failure)


if __name__ == "__main__":
    sys.exit(main())
