"""Singularity machines: start and stop latency beside the stand-in launched by hand; wall-limit lateness.

Apptainer is not installed on the development machine: every machine here is
the bubblewrap stand-in (tests/bin/apptainer) running a busybox directory
image as a throwaway account, in real cgroups, with the test helpers of
tests/integration. Each measurement has its peer, measured in the same run:
the stand-in started by hand (subprocess, as the same account, in a cgroup2
cgroup of its own, with the options and binds vac gives it), without vac.

- start: from the Place message sent to a real slot worker (slot_driver.py),
  and from the runtime's create() after the machine was prepared, to the
  payload's first command (a touch of joboutputs/running, seen by a 1 ms
  poll); peer: from the stand-in's Popen to the same.
- stop: SingularityRuntime.stop() with no grace, on a payload that ignores
  SIGTERM (so the cgroup kill ends it), until it returns with the exit
  recorded; peer: cgroup.kill written by hand until the cgroup is empty and
  the stand-in reaped.
- wall limit: machines in real slot workers, several slots at once, whose
  shutdown time is a few seconds away: the end their record holds, when every
  payload process was gone (the payload cgroup's `populated 0`) and when the
  slot reported MachineFinished, minus the shutdown time; peer: a timer per
  slot that SIGTERMs the hand-started stand-in's cgroup at the same kind of
  deadline and kills it after the same grace.

Needs root, useradd and bwrap. Cleans up its accounts, cgroups and processes
even when interrupted. Prints tables; writes bench/results/singularity.json.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuid_module
from pathlib import Path

import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from singularity_images import build_busybox_image  # noqa: E402
from singularity_site import (STANDIN, account_prefix, kill_account_processes, machine_uuids,  # noqa: E402
                              make_accounts, reachable_directory, reachable_state_dir, remove_machine_cgroups)
from slot_driver import SlotDriver, place  # noqa: E402
from vac.config.model import Machinetype, Settings  # noqa: E402
from vac.ipc import messages  # noqa: E402
from vac.machine.layout import MachinePaths  # noqa: E402
from vac.machine.prepare import MachineTerms, container_request, create_directory, prepare_machine  # noqa: E402
from vac.runtimes.singularity import SingularityRuntime, SingularitySettings  # noqa: E402
from vac.runtimes.singularity_command import PAYLOAD_PATHS, SAFE_PATH  # noqa: E402
from vac.supervisor.machine_spec import machine_spec  # noqa: E402
from vac.supervisor.scheduler import Placement  # noqa: E402
from vac.workers.slot_rules import WALLCLOCK_GRACE_SECONDS  # noqa: E402

MACHINES = int(os.environ.get("BENCH_SINGULARITY_MACHINES", "20"))
WALL_SLOTS = int(os.environ.get("BENCH_SINGULARITY_WALL_SLOTS", "8"))
WALL_ROUNDS = int(os.environ.get("BENCH_SINGULARITY_WALL_ROUNDS", "3"))
WALL_SECONDS = 4         # shutdown_at = int(now) + WALL_SECONDS: 3 to 4 s of life
SLOT = 1                 # the slot (and account) of the start and stop measurements
FACTORY = "bench-singularity.vac.example"
POLL_SECONDS = 0.001
STEP_DEADLINE = 30.0
STOP_GRACE = 0.0
RUNNING = "running"
STARTS = "#!/bin/sh\ntouch $JOBOUTPUTS/running\necho '200 Started' > $JOBOUTPUTS/shutdown_message\n"
PAYLOADS = {
    "exits-on-term": "#!/bin/sh\ntouch $JOBOUTPUTS/running\nexec sleep 1000\n",
    "ignores-term": "#!/bin/sh\ntrap '' TERM\ntouch $JOBOUTPUTS/running\nwhile true; do sleep 1; done\n",
}
EXCEEDED = 700
# One Popen at a time: its preexec_fn runs in a child forked from a process with threads.
LAUNCH_LOCK = threading.Lock()


class MeasurementFailed(Exception):
    """The bench could not take a measurement (not: a target was missed)."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop measuring and clean up."""


def wait_for_file(path, deadline, interval=POLL_SECONDS):
    """time.monotonic() once `path` exists (polled every `interval`)."""
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"{path} did not appear in time")
        time.sleep(interval)
    return time.monotonic()


def wait_cgroup_empty(directory, deadline):
    """time.time() once the cgroup2 cgroup holds no process (cgroup.events, woken by poll); None at the deadline."""
    with open(Path(directory) / "cgroup.events", "rb", buffering=0) as events:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        while True:
            events.seek(0)
            if b"populated 0" in events.read():
                return time.time()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            poller.poll(min(remaining, 1.0) * 1000)


def cgroup2_mount():
    """Where the cgroup2 hierarchy is mounted (/sys/fs/cgroup on v2 hosts, .../unified on hybrid ones)."""
    with open("/proc/self/mounts", encoding="ascii") as mounts:
        for line in mounts:
            _, mount_point, kind = line.split()[:3]
            if kind == "cgroup2":
                return Path(mount_point)
    raise MeasurementFailed("the peer needs a cgroup2 hierarchy, and this host mounts none")


class Site:
    """The busybox image, the accounts, the state directories, and everything to clean up afterwards."""

    def __init__(self):
        # Names only: set_up() makes things, and clean_up() removes whatever of them exists.
        self.prefix = account_prefix()
        self.root = self.peer_cgroups = self.image = None
        self.drivers, self.launches, self.state_dirs, self.accounts = [], [], [], []

    def set_up(self):
        self.root = reachable_directory("vac-bench-singularity-")
        self.image = build_busybox_image(self.root / "image")
        self.accounts, _ = make_accounts(self.prefix, max(WALL_SLOTS, SLOT + 1))
        self.peer_cgroups = cgroup2_mount() / f"vac-bench-{uuid_module.uuid4().hex[:8]}"
        self.peer_cgroups.mkdir()
        if not (self.peer_cgroups / "cgroup.kill").exists():
            raise MeasurementFailed(f"{self.peer_cgroups} offers no cgroup.kill (kernel 5.14 or later needed)")

    def state_dir(self):
        state_dir = reachable_state_dir(self.root)
        self.state_dirs.append(state_dir)
        return state_dir

    def user_data(self, name, text):
        path = self.root / f"{name}.user_data"
        path.write_text(text)
        path.chmod(0o644)
        return path

    def driver(self, state_dir, slot):
        singularity = {"command": str(STANDIN), "cgroups": "vac", "sweep_seconds": 2,
                       "accounts": [account.pw_name for account in self.accounts]}
        driver = SlotDriver(state_dir, FACTORY, slot, self.root / f"slot-{len(self.drivers)}.log",
                            singularity=singularity)
        self.drivers.append(driver)
        driver.start()
        return driver

    def place(self, state_dir, slot, user_data, shutdown_in=600):
        return place(state_dir, FACTORY, slot, user_data, shutdown_in=shutdown_in,
                     settings_changes={"singularity_user_prefix": self.prefix}, machine_model="singularity",
                     root_image=str(self.image), tmp_binds=("/scratch",), fizzle_seconds=1)

    def clean_up(self):
        """Kill and remove what the run made, each step whatever the others did."""
        steps = [("slot workers", lambda: [driver.kill() for driver in self.drivers]),
                 ("hand-started stand-ins", lambda: [launch.close() for launch in self.launches]),
                 ("account processes", lambda: kill_account_processes({a.pw_uid for a in self.accounts})),
                 ("machine cgroups", lambda: [remove_machine_cgroups(machine) for state_dir in self.state_dirs
                                              for machine in machine_uuids(state_dir)]),
                 ("peer cgroups", lambda: self.peer_cgroups and self.peer_cgroups.exists()
                  and self.peer_cgroups.rmdir()),
                 ("accounts", lambda: remove_accounts(self.prefix)),
                 ("files", lambda: self.root and shutil.rmtree(self.root))]
        for what, step in steps:
            try:
                step()
            except (MeasurementFailed, OSError, AssertionError, subprocess.SubprocessError) as error:
                print(f"cleanup: {what}: {error}", file=sys.stderr)


def remove_accounts(prefix):
    """userdel every account (and groupdel its group) named with this run's prefix, however many were made."""
    names = [line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines()]
    for name in names:
        if name.startswith(prefix):
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


class HandLaunch:
    """The stand-in started by hand as the account, without vac: directories and a cgroup2 cgroup of its own."""

    def __init__(self, site, account, user_data_text):
        self.name = f"peer-{uuid_module.uuid4().hex[:8]}"
        self.dir = site.root / self.name
        self.account = account
        self.cgroup = site.peer_cgroups / self.name
        self.process = None
        site.launches.append(self)
        self.dir.mkdir(mode=0o755)
        for name in ("machinefeatures", "jobfeatures", "joboutputs", "scratch", "scratch/scratch"):
            (self.dir / name).mkdir(mode=0o755)
        for name in ("joboutputs", "scratch", "scratch/scratch"):
            os.chown(self.dir / name, account.pw_uid, account.pw_gid)
        user_data = self.dir / "user_data"
        user_data.write_text(user_data_text)
        os.chown(user_data, account.pw_uid, account.pw_gid)
        user_data.chmod(0o500)
        self.running = self.dir / "joboutputs" / RUNNING
        self.cgroup.mkdir()

    def argv(self, image):
        """What vac's apptainer_argv gives for such a machine: the same options, binds and environment."""
        binds = [(self.dir / "user_data", "/user_data", "ro"),
                 (self.dir / "machinefeatures", PAYLOAD_PATHS.machinefeatures, "ro"),
                 (self.dir / "jobfeatures", PAYLOAD_PATHS.jobfeatures, "ro"),
                 (self.dir / "joboutputs", PAYLOAD_PATHS.joboutputs, "rw"),
                 (self.dir / "scratch" / "scratch", "/scratch", "rw")]
        argv = [str(STANDIN), "exec", "--contain", "--ipc", "--pid", "--cleanenv", "--hostname", self.name,
                "--workdir", str(self.dir / "scratch")]
        for source, destination, mode in binds:
            argv += ["--bind", f"{source}:{destination}:{mode}"]
        for key in ("machinefeatures", "jobfeatures", "joboutputs"):
            argv += ["--env", f"{key.upper()}={getattr(PAYLOAD_PATHS, key)}"]
        return argv + [str(image), "/user_data"]

    def start(self, image):
        account, procs = self.account, str(self.cgroup / "cgroup.procs")
        groups = os.getgrouplist(account.pw_name, account.pw_gid)   # looked up here, not in the forked child

        def enter():
            # In the child, still root: join the cgroup first, so nothing of it runs outside; then drop to the account.
            with open(procs, "w") as stream:
                stream.write("0")
            os.setgroups(groups)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

        env = {"PATH": SAFE_PATH, "LANG": "C", "HOME": account.pw_dir, "USER": account.pw_name,
               "LOGNAME": account.pw_name}
        with LAUNCH_LOCK, open(self.dir / "output.log", "wb") as log:
            self.process = subprocess.Popen(self.argv(image), cwd=self.dir / "scratch", env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            close_fds=True, start_new_session=True, preexec_fn=enter)

    def signal_all(self, signum):
        for pid in (self.cgroup / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signum)
            except ProcessLookupError:
                pass

    def kill(self):
        (self.cgroup / "cgroup.kill").write_text("1")

    def reap(self, deadline):
        self.process.wait(max(0.0, deadline - time.monotonic()))

    def close(self):
        """Kill whatever is left, reap the stand-in, remove the cgroup (each only if it is there)."""
        if self.cgroup.exists():
            self.kill()
            if wait_cgroup_empty(self.cgroup, time.monotonic() + STEP_DEADLINE) is None:
                raise MeasurementFailed(f"{self.cgroup} is not empty after its kill")
        if self.process is not None:
            self.reap(time.monotonic() + STEP_DEADLINE)
        if self.cgroup.exists():
            self.cgroup.rmdir()


# ---------------------------------------------------------------- start: a slot worker's machines


def measure_slot_starts(site):
    """[s from Place sent to payload running], and {step: [s after Place]} from the machine's files."""
    state_dir = site.state_dir()
    user_data = site.user_data("starts", STARTS)
    driver = site.driver(state_dir, SLOT)
    driver.state("idle")
    latencies, steps = [], {"container made": [], "launcher reported the start": []}
    for _ in range(MACHINES):
        place_msg = site.place(state_dir, SLOT, user_data)
        uuid = place_msg.machine["uuid"]
        paths = MachinePaths.for_machine(state_dir, uuid)
        placed_at, began = time.time(), time.monotonic()
        driver.send(place_msg)
        latencies.append(wait_for_file(paths.joboutputs / RUNNING, began + STEP_DEADLINE) - began)
        finished = driver.finished(uuid, timeout=STEP_DEADLINE)
        driver.state("idle", after=finished, machine=None, timeout=STEP_DEADLINE)
        folder = paths.root / "singularity"
        steps["container made"].append(json.loads((folder / "container.json").read_text())["created_at"] - placed_at)
        steps["launcher reported the start"].append(
            json.loads((folder / "started").read_text())["started_at"] - placed_at)
    driver.stop()
    return latencies, steps


# ---------------------------------------------------------------- start and stop: the runtime beside the peer


def prepared_request(site, state_dir, user_data):
    """A machine prepared as a slot prepares it (directory, MJF, user_data, scratch); its ContainerRequest."""
    settings = Settings(vac_space="space.example.org", total_processors=2, state_dir=str(state_dir),
                        mb_per_processor=256, singularity_user_prefix=site.prefix, singularity_cgroups="vac",
                        singularity_command=str(STANDIN))
    machinetype = Machinetype(name="bench", machine_model="singularity", root_image=str(site.image),
                              user_data=str(user_data), target_share=1.0, fizzle_seconds=1,
                              max_wallclock_seconds=3600, min_wallclock_seconds=3600, files_name="bench",
                              tmp_binds=("/scratch",))
    placement = Placement(machinetype="bench", processors=1, shutdown_at=int(time.time()) + 3600, superslot=SLOT,
                          new_superslot=True)
    spec = machine_spec(uuid=str(uuid_module.uuid4()), slot=SLOT, factory_name=FACTORY,
                        machine_name=f"bench-{SLOT:02d}.vac.example", settings=settings, machinetype=machinetype,
                        placement=placement, placed_at=time.time())
    terms = MachineTerms.from_spec(spec)
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, time.time(), PAYLOAD_PATHS)
    return paths, container_request(terms, paths, list(prepared.tmp_binds), 1)


def runtime_machine(site, runtime, state_dir, user_data):
    """(s from create() to payload running, s in stop() with no grace), and the launcher's steps."""
    paths, request = prepared_request(site, state_dir, user_data)
    runtime.ensure_image(request.image, time.monotonic() + STEP_DEADLINE)
    created_wall, began = time.time(), time.monotonic()
    handle = runtime.create(request)
    made = time.monotonic() - began
    try:
        runtime.start(handle)
        ran = wait_for_file(paths.joboutputs / RUNNING, began + STEP_DEADLINE) - began
        reported = json.loads((paths.root / "singularity" / "started").read_text())["started_at"] - created_wall
        stopping_wall, stopping = time.time(), time.monotonic()
        runtime.stop(handle, STOP_GRACE)
        stopped = time.monotonic() - stopping
        info = runtime.exit_status(handle)
        if info is None or info.finished_at is None:
            raise MeasurementFailed(f"machine {request.machine_uuid}: no exit recorded once stop() returned")
    finally:
        runtime.remove(handle)
    return ran, stopped, {"container made": made, "launcher reported the start": reported,
                          "stop: the launcher reaped the payload": info.finished_at - stopping_wall}


def peer_machine(site, account, user_data_text):
    """(s from Popen to payload running, s from cgroup.kill to the cgroup empty and the stand-in reaped)."""
    launch = HandLaunch(site, account, user_data_text)
    began = time.monotonic()
    launch.start(site.image)
    ran = wait_for_file(launch.running, began + STEP_DEADLINE) - began
    stopping = time.monotonic()
    launch.kill()
    if wait_cgroup_empty(launch.cgroup, stopping + STEP_DEADLINE) is None:
        raise MeasurementFailed(f"{launch.cgroup} is not empty after its kill")
    launch.reap(stopping + STEP_DEADLINE)
    stopped = time.monotonic() - stopping
    launch.close()
    site.launches.remove(launch)
    return ran, stopped


def measure_runtime_and_peer(site):
    """Alternately a runtime machine and a hand-started stand-in: {who: {"start": [...], "stop": [...]}}."""
    state_dir = site.state_dir()
    user_data = site.user_data("stubborn", PAYLOADS["ignores-term"])
    runtime = SingularityRuntime(state_dir, SingularitySettings(command=str(STANDIN), cgroups="vac"),
                                 timeout=STEP_DEADLINE)
    results = {"runtime": {"start": [], "stop": []}, "peer": {"start": [], "stop": []}}
    steps = {"container made": [], "launcher reported the start": [], "stop: the launcher reaped the payload": []}
    for _ in range(MACHINES):
        ran, stopped, machine_steps = runtime_machine(site, runtime, state_dir, user_data)
        results["runtime"]["start"].append(ran)
        results["runtime"]["stop"].append(stopped)
        for step, value in machine_steps.items():
            steps[step].append(value)
        ran, stopped = peer_machine(site, site.accounts[SLOT], PAYLOADS["ignores-term"])
        results["peer"]["start"].append(ran)
        results["peer"]["stop"].append(stopped)
    return results, steps


# ---------------------------------------------------------------- wall limit


def payload_of(slot):
    return list(PAYLOADS)[slot % len(PAYLOADS)]


def watch_payload_end(state_dir, uuid, shutdown_at, gone):
    """Thread: once the payload runs, when its cgroup (vac's, from container.json) empties, minus shutdown_at."""
    paths = MachinePaths.for_machine(state_dir, uuid)
    deadline = time.monotonic() + WALL_SECONDS + STEP_DEADLINE
    try:
        wait_for_file(paths.joboutputs / RUNNING, deadline, interval=0.01)
        meta = json.loads((paths.root / "singularity" / "container.json").read_text())
        if meta["tracking"] != "unified":
            raise MeasurementFailed(f"machine {uuid} is tracked in {meta['tracking']}, not in cgroup2")
        ended = wait_cgroup_empty(cgroup2_mount() / meta["cgroup"].lstrip("/") / "payload", deadline)
        gone[uuid] = None if ended is None else ended - shutdown_at
    except (MeasurementFailed, OSError, ValueError, KeyError) as error:
        gone[uuid] = error


def measure_vac_wall(site):
    """{payload: [(recorded end, payload gone, MachineFinished received) - shutdown_at]} and other messages."""
    state_dir = site.state_dir()
    user_data = {name: site.user_data(f"wall-{name}", text) for name, text in PAYLOADS.items()}
    drivers = {slot: site.driver(state_dir, slot) for slot in range(WALL_SLOTS)}
    for driver in drivers.values():
        driver.state("idle")
    by_channel = {driver.channel.fileno(): (slot, driver) for slot, driver in drivers.items()}
    rounds, current, gone, watchers, ended, other_ends = dict.fromkeys(drivers, 0), {}, {}, [], [], []

    def place_next(slot):
        place_msg = site.place(state_dir, slot, user_data[payload_of(slot)], shutdown_in=WALL_SECONDS)
        current[slot] = place_msg.machine
        rounds[slot] += 1
        drivers[slot].send(place_msg)
        watcher = threading.Thread(target=watch_payload_end, daemon=True,
                                   args=(state_dir, place_msg.machine["uuid"], place_msg.machine["shutdown_at"], gone))
        watcher.start()
        watchers.append(watcher)

    for slot in drivers:
        place_next(slot)
    deadline = time.monotonic() + WALL_ROUNDS * (WALL_SECONDS + STEP_DEADLINE)
    while current or any(slot not in current and rounds[slot] < WALL_ROUNDS for slot in drivers):
        if time.monotonic() > deadline:
            raise MeasurementFailed(f"wall limit: {len(ended)} of {WALL_SLOTS * WALL_ROUNDS} machines ended in time")
        ready, _, _ = select.select(list(by_channel), [], [], 0.5)
        arrived = time.time()
        for fd in ready:
            slot, driver = by_channel[fd]
            new = driver.channel.receive()
            driver.received.extend(new)
            if driver.channel.failure is not None:
                raise MeasurementFailed(f"slot {slot}'s worker closed its channel: {driver.log()}")
            for msg in new:
                machine = current.get(slot)
                if isinstance(msg, messages.MachineFinished) and machine and msg.uuid == machine["uuid"]:
                    (ended if msg.code == EXCEEDED else other_ends).append(
                        (payload_of(slot), msg.uuid, msg.ended_at - machine["shutdown_at"],
                         arrived - machine["shutdown_at"], msg.code, msg.text))
                    del current[slot]
                elif (isinstance(msg, messages.StateReport) and msg.state == "idle" and slot not in current
                      and msg.detail.get("machine") is None and rounds[slot] < WALL_ROUNDS):
                    place_next(slot)
    for watcher in watchers:
        watcher.join(STEP_DEADLINE)
    for driver in drivers.values():
        driver.stop()
    lateness = {name: [] for name in PAYLOADS}
    for payload, uuid, recorded, received, _, _ in ended:
        if not isinstance(gone.get(uuid), float):
            raise MeasurementFailed(f"machine {uuid}: its payload's end was not seen: {gone.get(uuid)}")
        lateness[payload].append((recorded, gone[uuid], received))
    return lateness, [f"{code} {text}" for *_, code, text in other_ends]


def peer_wall_slot(site, account, payload, rounds, out):
    """Thread: `rounds` hand-started stand-ins, each SIGTERMed at its deadline and killed after the grace."""
    try:
        for _ in range(rounds):
            launch = HandLaunch(site, account, PAYLOADS[payload])
            deadline = int(time.time()) + WALL_SECONDS
            launch.start(site.image)
            wait_for_file(launch.running, time.monotonic() + STEP_DEADLINE, interval=0.01)
            time.sleep(max(0.0, deadline - time.time()))
            launch.signal_all(signal.SIGTERM)
            gone = wait_cgroup_empty(launch.cgroup, time.monotonic() + WALLCLOCK_GRACE_SECONDS)
            if gone is None:
                launch.kill()
                gone = wait_cgroup_empty(launch.cgroup, time.monotonic() + STEP_DEADLINE)
            if gone is None:
                raise MeasurementFailed(f"{launch.cgroup} is not empty after its kill")
            out.append((payload, gone - deadline))
            launch.close()
    except (MeasurementFailed, OSError, subprocess.SubprocessError) as error:
        out.append((payload, error))


def measure_peer_wall(site):
    """{payload: [payload gone - deadline]}: one timer thread per slot, the slots' payloads as for vac."""
    out = []
    threads = [threading.Thread(target=peer_wall_slot, daemon=True,
                                args=(site, site.accounts[slot], payload_of(slot), WALL_ROUNDS, out))
               for slot in range(WALL_SLOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WALL_ROUNDS * (WALL_SECONDS + STEP_DEADLINE))
    errors = [value for _, value in out if not isinstance(value, float)]
    if errors or any(thread.is_alive() for thread in threads):
        raise MeasurementFailed(f"peer timers: {errors[0] if errors else 'did not finish in time'}")
    lateness = {name: [] for name in PAYLOADS}
    for payload, value in out:
        lateness[payload].append(value)
    return lateness


# ---------------------------------------------------------------- report


def stat_row(name, values, scale):
    stats = report.summarize(values)
    return [name, stats["n"], *(scale * stats[key] for key in ("min", "p50", "p99", "max"))]


def print_results(results):
    headers = ["measured", "n", "min ms", "p50 ms", "p99 ms", "max ms"]
    if "peer" in results:
        print("start: to the payload's first command (ms)")
        report.print_table(headers, [
            stat_row("vac slot worker: Place sent -> payload running", results["slot_starts"], 1000),
            stat_row("vac runtime: create() -> payload running", results["runtime"]["start"], 1000),
            stat_row("stand-in by hand: Popen -> payload running", results["peer"]["start"], 1000)])
        print()
        print("where the time goes (ms after Place sent, after create(), or after stop() was called):")
        report.print_table(headers, [
            stat_row(f"{who}: {step}", values, 1000) for who, steps in (
                ("slot worker", results["slot_steps"]), ("runtime", results["runtime_steps"]))
            for step, values in steps.items()])
        print()
        print(f"stop: payload ignoring SIGTERM, grace {STOP_GRACE:.0f} s (ms)")
        report.print_table(headers, [
            stat_row("vac runtime: stop() until it returns, exit recorded", results["runtime"]["stop"], 1000),
            stat_row("stand-in by hand: cgroup.kill until empty, reaped", results["peer"]["stop"], 1000)])
        print()
    if "vac_wall" in results:
        print(f"wall limit: {WALL_SLOTS} slots, {WALL_ROUNDS} machines each, shutdown {WALL_SECONDS} s after "
              f"placement (whole seconds), grace {WALLCLOCK_GRACE_SECONDS:.0f} s; seconds after the shutdown time")
        rows = []
        for payload, triples in results["vac_wall"].items():
            for index, what in enumerate(("end recorded", "payload gone", "MachineFinished received")):
                rows.append(stat_row(f"vac, {payload}: {what}", [t[index] for t in triples], 1))
        for payload, values in results.get("peer_wall", {}).items():
            rows.append(stat_row(f"timer by hand, {payload}: payload gone", values, 1))
        report.print_table(["measured", "n", "min s", "p50 s", "p99 s", "max s"], rows)
        if results.get("vac_wall_other_ends"):
            print(f"vac machines not ended by the wall limit: {results['vac_wall_other_ends']}")
        print()


def on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main():
    print(f"Singularity machines (bubblewrap stand-in, busybox directory image): {MACHINES} starts and stops "
          f"each way, wall limit {WALL_SLOTS} slots x {WALL_ROUNDS}")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, vac {host['vac_commit']}")
    results, failure = {}, None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    site, main_pid = None, os.getpid()
    began = time.monotonic()
    try:
        if os.geteuid() != 0:
            raise MeasurementFailed("needs root (accounts, cgroups, dropping to the accounts)")
        site = Site()
        site.set_up()
        results["slot_starts"], results["slot_steps"] = measure_slot_starts(site)
        both, results["runtime_steps"] = measure_runtime_and_peer(site)
        results["runtime"], results["peer"] = both["runtime"], both["peer"]
        results["vac_wall"], results["vac_wall_other_ends"] = measure_vac_wall(site)
        results["peer_wall"] = measure_peer_wall(site)
    except (MeasurementFailed, AssertionError, OSError, subprocess.SubprocessError, ValueError) as error:
        failure = f"{type(error).__name__}: {error}"
        print(f"measurement failed: {failure}", file=sys.stderr)
    except (KeyboardInterrupt, Interrupted) as interruption:
        failure = f"interrupted ({str(interruption) or 'SIGINT'})"
        print(failure, file=sys.stderr)
    finally:
        if os.getpid() != main_pid:
            os._exit(1)   # a slot worker interrupted between its fork and its own handlers: not the one to clean up
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if site is not None:
            site.clean_up()
    print()
    print_results(results)
    path = report.write_results("singularity", {
        "host": host, "settings": {"machines": MACHINES, "wall_slots": WALL_SLOTS, "wall_rounds": WALL_ROUNDS,
                                   "wall_seconds": WALL_SECONDS, "stop_grace_s": STOP_GRACE,
                                   "wall_grace_s": WALLCLOCK_GRACE_SECONDS, "payloads": PAYLOADS},
        "results_s": results, "seconds_taken": time.monotonic() - began, "failure": failure})
    print(f"results: {path} ({time.monotonic() - began:.0f} s)")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
