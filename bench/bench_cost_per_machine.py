"""vac's own CPU per machine lifecycle beside the engine's, at steady turnover.

A real vacd with 32 slots (BENCH_COST_SLOTS) runs busybox machines that
write "200 done" and exit at once, on the local Docker engine. It begins
once the host's 1-minute load has fallen to its CPU count (waiting
BENCH_COST_SETTLE seconds at most: a host still busy with an earlier
bench's containers slows vac's Python more than the engine). After a
warm-up, for a window of BENCH_COST_WINDOW seconds, /proc is sampled every
0.1 s and the CPU seconds (user + system) are counted:

- vac: the whole tree under vacd (root, slot workers, helpers, forked jobs).
  Each live process's own times plus its cutime/cstime, which hold every
  child it has reaped; the difference between the window's ends. Processes
  that left the tree without being reaped by it would escape that sum, so
  the sum of every tree process's own times as last sampled is shown too,
  and the larger of the two is judged.
- engine: dockerd and containerd (own times plus reaped children, such as
  the `shim start` processes), and the containerd-shim of each of this
  run's containers, as last sampled (their parent is init, so their times
  reach no one's cutime; a shim's last 0.1 s before it exits is missed,
  which counts the engine low). A shim's cutime holds the runc commands it
  ran and the container's own processes (a busybox shell writing one line).

Machines: the containers of this factory that died within the window
(engine events). Prints tables and the target line; writes
bench/results/cost_per_machine.json.
"""

import os
import sys
import threading
import time

import report
from engine_events import BENCH_ERRORS, EventRecorder, bench_image, cleanup, client, remove_leftovers
from vacd_factory import TURNOVER_USER_DATA as USER_DATA, VacdFailed, turnover_factory

SLOTS = int(os.environ.get("BENCH_COST_SLOTS", "32"))
WARMUP = float(os.environ.get("BENCH_COST_WARMUP", "20"))
WINDOW = float(os.environ.get("BENCH_COST_WINDOW", "90"))
SAMPLE_S = 0.1
START_DEADLINE = 180.0
TARGET_RATIO = 0.10
# Before it starts, the bench waits this long at most for the host's load to fall to its CPU count.
SETTLE_SECONDS = float(os.environ.get("BENCH_COST_SETTLE", "240"))
TICK = os.sysconf("SC_CLK_TCK")


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


def read_stat(pid):
    """(comm, ppid, starttime, own cpu s, children's cpu s) from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as source:
            data = source.read()
    except OSError:
        return None
    close = data.rindex(b")")
    comm = data[data.index(b"(") + 1:close].decode(errors="replace")
    fields = data[close + 2:].split()
    # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, starttime 22.
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return comm, ppid, int(fields[19]), own, children


def scan():
    """{pid: stat tuple} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as source:
            return source.read().split(b"\0")
    except OSError:
        return []


def descendants(table, root):
    kids = {}
    for pid, stat in table.items():
        kids.setdefault(stat[1], []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
            todo.extend(kids.get(pid, ()))
    return found


class Sampler:
    """Samples /proc every SAMPLE_S seconds in a thread, from start() to stop()."""

    def __init__(self, vac_root, engine_pids):
        self.vac_root = vac_root
        self.engine_pids = engine_pids
        self.vac_first, self.vac_last = {}, {}     # (pid, starttime) -> own cpu s
        self.shim_first, self.shim_last = {}, {}   # (pid, starttime) -> own + children's cpu s
        self.shim_ids = {}                         # (pid, starttime) -> container id
        self.vac_sum_start = self.vac_sum_end = None
        self.engine_start = self.engine_end = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _vac_sum(self, table):
        """Own + reaped children's times of every live process in the tree."""
        return sum(table[pid][3] + table[pid][4] for pid in descendants(table, self.vac_root))

    def _engine_sum(self, table):
        return sum(table[pid][3] + table[pid][4] for pid in self.engine_pids if pid in table)

    def _sample(self, first):
        table = scan()
        for pid in descendants(table, self.vac_root):
            key = (pid, table[pid][2])
            self.vac_last[key] = table[pid][3]
            if first:
                self.vac_first[key] = table[pid][3]
        for pid, stat in table.items():
            if not stat[0].startswith("containerd-shim"):
                continue
            key = (pid, stat[2])
            self.shim_last[key] = stat[3] + stat[4]
            if first:
                self.shim_first[key] = stat[3] + stat[4]
            if key not in self.shim_ids:
                args = cmdline(pid)
                self.shim_ids[key] = (args[args.index(b"-id") + 1].decode()
                                      if b"-id" in args[:-1] else None)
        self.samples += 1
        return table

    def start(self):
        table = self._sample(first=True)
        self.vac_sum_start, self.engine_start = self._vac_sum(table), self._engine_sum(table)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(SAMPLE_S):
            self._sample(first=False)

    def stop(self):
        self._stop.set()
        self._thread.join()
        table = self._sample(first=False)
        self.vac_sum_end, self.engine_end = self._vac_sum(table), self._engine_sum(table)

    def figures(self, containers):
        """CPU seconds in the window: vac two ways, the daemons, this run's shims, other shims."""
        vac_sampled = sum(last - self.vac_first.get(key, 0.0) for key, last in self.vac_last.items())
        ours = others = 0.0
        for key, last in self.shim_last.items():
            spent = last - self.shim_first.get(key, 0.0)
            if self.shim_ids.get(key) in containers:
                ours += spent
            else:
                others += spent
        return {"vac_cutime_s": self.vac_sum_end - self.vac_sum_start,
                "vac_sampled_s": vac_sampled,
                "vac_processes_seen": len(self.vac_last),
                "daemons_s": self.engine_end - self.engine_start,
                "shims_s": ours, "shims_seen": sum(1 for k in self.shim_ids
                                                   if self.shim_ids[k] in containers),
                "other_shims_s": others, "samples": self.samples}


def engine_daemons():
    """{name: pid} of dockerd and containerd."""
    found = {}
    for pid, stat in scan().items():
        if stat[0] in ("dockerd", "containerd"):
            found[stat[0]] = pid
    if set(found) != {"dockerd", "containerd"}:
        raise MeasurementFailed(f"dockerd and containerd not both found: {found}")
    return found


def measure(docker_client, image):
    factory = turnover_factory("cost", SLOTS, image)
    recorder = None
    try:
        factory.start()
        factory.wait_slots_idle(time.monotonic() + START_DEADLINE)
        recorder = EventRecorder(docker_client, factory.label)
        daemons = engine_daemons()
        factory.set_draining(False)
        time.sleep(WARMUP)
        factory.check_alive()
        sampler = Sampler(factory.proc.pid, list(daemons.values()))
        began = time.time()
        load_before = os.getloadavg()[0]
        sampler.start()
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            factory.check_alive()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        sampler.stop()
        ended = time.time()
        load_after = os.getloadavg()[0]
        factory.set_draining(True)
        time.sleep(1.0)
        events = recorder.snapshot()
        died = [e for e in events if e.action == "die" and began <= e.time <= ended]
        started = [e for e in events if e.action == "start" and began <= e.time <= ended]
        containers = {e.container for e in events}
        # The low-level list: no inspection of containers that may go away meanwhile.
        others = [c for c in docker_client.api.containers(all=True)
                  if (c.get("Labels") or {}).get("vac.factory") != factory.factory_name]
        figures = sampler.figures(containers)
        figures.update({"window_s": ended - began, "machines": len(died), "starts": len(started),
                        "load_before": load_before, "load_after": load_after,
                        "other_containers_at_end": len(others)})
        if not died:
            raise MeasurementFailed(f"no machine ended in the {WINDOW:.0f} s window")
        return figures
    finally:
        if recorder is not None:
            recorder.close()
        factory.stop()
        cleanup(docker_client, factory.label)
        factory.remove_dir()


def main():
    print(f"vac's own cost per machine: {SLOTS} slots of busybox machines that exit at once, "
          f"{WARMUP:.0f} s warm-up, then CPU (user + sys, /proc) over {WINDOW:.0f} s, "
          f"sampled every {SAMPLE_S} s")
    waited, load = report.settle(os.cpu_count(), SETTLE_SECONDS)
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f} (after waiting {waited:.0f} s for it "
          f"to fall to {os.cpu_count()}), vac {host['vac_commit']}")
    figures, failure = None, None
    try:
        docker_client = client()
        image = bench_image(docker_client)
        remove_leftovers(docker_client)
        figures = measure(docker_client, image)
    except (MeasurementFailed, VacdFailed, OSError, *BENCH_ERRORS) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    targets = []
    if figures is not None:
        f = figures
        machines = f["machines"]
        vac_s = max(f["vac_cutime_s"], f["vac_sampled_s"])
        engine_s = f["daemons_s"] + f["shims_s"]
        f["vac_ms_per_machine"] = 1000 * vac_s / machines
        f["engine_ms_per_machine"] = 1000 * engine_s / machines
        f["ratio"] = vac_s / engine_s if engine_s else None
        print()
        print(f"{machines} machines ended in {f['window_s']:.1f} s ({f['starts']} started; "
              f"{60 * machines / f['window_s']:.0f}/min); load {f['load_before']:.1f} → "
              f"{f['load_after']:.1f}; {f['samples']} samples of /proc")
        report.print_table(
            ["whose CPU", "CPU s in window", "ms per machine", "% of one core"],
            [["vac tree: own + reaped children (cutime)", f["vac_cutime_s"],
              1000 * f["vac_cutime_s"] / machines, 100 * f["vac_cutime_s"] / f["window_s"]],
             [f"vac tree: own, as last sampled ({f['vac_processes_seen']} processes)",
              f["vac_sampled_s"], 1000 * f["vac_sampled_s"] / machines,
              100 * f["vac_sampled_s"] / f["window_s"]],
             ["engine: dockerd + containerd (+ reaped children)", f["daemons_s"],
              1000 * f["daemons_s"] / machines, 100 * f["daemons_s"] / f["window_s"]],
             [f"engine: this run's containerd-shims + runc ({f['shims_seen']} shims)", f["shims_s"],
              1000 * f["shims_s"] / machines, 100 * f["shims_s"] / f["window_s"]],
             ["engine, in all", engine_s, f["engine_ms_per_machine"],
              100 * engine_s / f["window_s"]]])
        if f["other_shims_s"] or f["other_containers_at_end"]:
            print(f"(other containers on the engine: {f['other_containers_at_end']} at the end, "
                  f"their shims {f['other_shims_s']:.2f} s; dockerd and containerd may include their work)")
        print()
        targets.append((f"vac's CPU per machine at most {100 * TARGET_RATIO:.0f}% of the engine's "
                        f"({SLOTS} slots)", f["ratio"] is not None and f["ratio"] <= TARGET_RATIO,
                        f"{f['vac_ms_per_machine']:.1f} ms vs {f['engine_ms_per_machine']:.1f} ms: "
                        f"{100 * (f['ratio'] or 0):.1f}%"))
        report.print_targets(targets)
    path = report.write_results("cost_per_machine", {
        "host": host, "settings": {"slots": SLOTS, "warmup_s": WARMUP, "window_s": WINDOW,
                                   "sample_s": SAMPLE_S, "user_data": USER_DATA},
        "figures": figures,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets],
        "failure": failure})
    print(f"results: {path}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
