"""vac's real factory tree in a subprocess, reporting the root's events on a pipe.

Run as a script it is that subprocess: it loads the heavy modules once, as
vacd does, then runs vac.supervisor.root.Root on build_tree(TreeSettings)
with an observer writing each event as a JSON line to --events-fd. Imported,
VacTree starts it, follows its events and stops it with everything it forked.
"""

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil

# Breaker threshold for the bench: the pool's crash-storm breaker (by default
# 10 crashes in 30 s) would otherwise pause restarts after the tenth kill.
NO_BREAKER_CRASHES = 10**9


class VacTree:
    """Start the runner with `slots` slots; follow started/ready/exited events; stop it."""

    label = "vac"

    def __init__(self, slots, healthy_after=10.0):
        self.workdir = None
        self.slots = slots
        self.healthy_after = healthy_after
        self.names = [f"slot-{n:02d}" for n in range(slots)]
        self.current = {}       # child id -> pid of its latest incarnation
        self.moments = {}       # pid -> {"started": t, "ready": t, "exited": t}
        self.process = None
        self._events = None
        self._partial = b""

    def start(self, workdir):
        """Start the runner; its logs and state go under `workdir`."""
        self.workdir = workdir
        read_end, write_end = os.pipe()
        self._events = read_end
        command = [sys.executable, os.path.abspath(__file__),
                   "--slots", str(self.slots), "--healthy-after", str(self.healthy_after),
                   "--state-dir", os.path.join(self.workdir, "state"),
                   "--log-file", os.path.join(self.workdir, "vacd.log"),
                   "--events-fd", str(write_end)]
        with open(os.path.join(self.workdir, "runner.out"), "wb") as out:
            # Its own session: the root and every child it forks share one
            # process group, which stop() kills as a whole.
            self.process = subprocess.Popen(command, pass_fds=(write_end,), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=out, start_new_session=True)
        os.close(write_end)

    def pump(self, timeout):
        """Take in the root's events that arrive within `timeout` seconds."""
        ready, _, _ = select.select([self._events], [], [], max(timeout, 0))
        if not ready:
            self._check_running()
            return
        data = os.read(self._events, 1 << 20)
        if not data:
            self._check_running()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._on_event(json.loads(line))

    def _on_event(self, event):
        kind, pid = event["event"], event.get("pid")
        if kind == "started":
            self.current[event["child"]] = pid
            self.moments[pid] = {"started": event["t"]}
        elif kind in ("ready", "exited") and pid in self.moments:
            self.moments[pid][kind] = event["t"]

    def _check_running(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"the vac root exited with {self.process.returncode}; "
                               f"see {self.workdir}/runner.out and vacd.log")

    def ready_count(self):
        return sum(1 for pid in self.current.values() if "ready" in self.moments[pid])

    def wait_all_ready(self, deadline):
        """Pump until every slot and helper is ready, or fail at `deadline`."""
        expected = self.slots + 2  # the services: cvmfs-keeper and reaper
        while self.ready_count() < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"vac: only {self.ready_count()} of {expected} "
                                   f"children were ready in time")
            self.pump(0.2)

    def pids(self):
        """The root's pid and its children's."""
        root = psutil.Process(self.process.pid)
        return [root.pid] + [child.pid for child in root.children(recursive=True)]

    def stop(self, timeout=20.0):
        """SIGTERM the root (it stops the tree in order), then SIGKILL the group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            # Keep reading: a root blocked on a full event pipe could not stop.
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    self.pump(0.1)
                except RuntimeError:
                    break
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)
        os.close(self._events)


def _runner(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--healthy-after", type=float, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    args = parser.parse_args(argv)

    from vac.supervisor.process import die_with_parent

    # A bench killed outright cannot clean up: its root then gets SIGTERM and
    # stops the tree itself.
    die_with_parent()
    if os.getppid() == 1:
        return 1

    # The modules a slot worker needs are loaded once, before any fork, as
    # vacd does: forked children then share them instead of importing them.
    import docker  # noqa: F401
    import msgpack  # noqa: F401

    from vac import logs
    from vac.supervisor.build import TreeSettings, build_tree
    from vac.supervisor.policy import BreakerPolicy, SlotRestartPolicy
    from vac.supervisor.root import Root

    os.makedirs(args.state_dir, exist_ok=True)
    logs.configure("INFO", args.log_file)
    events_fd = args.events_fd
    reporting = [True]

    def observer(event):
        if not reporting[0]:
            return
        try:
            os.write(events_fd, json.dumps(event, default=str).encode() + b"\n")
        except BrokenPipeError:
            reporting[0] = False  # the bench is gone; the root carries on

    settings = TreeSettings(
        slots=args.slots, state_dir=args.state_dir,
        slot_restart=SlotRestartPolicy(healthy_after=args.healthy_after),
        breaker=BreakerPolicy(crashes=NO_BREAKER_CRASHES))
    return Root(build_tree(settings), observer=observer).run()


if __name__ == "__main__":
    sys.exit(_runner())
