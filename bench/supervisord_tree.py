"""The peer: supervisord from the virtualenv managing copies of the heartbeat child.

What its restart latency is made of: supervisord's loop polls with a fixed
one-second timeout and, in each pass, runs its state transitions before it
reaps. A killed child's closed pipes wake the loop, which reaps it (EXITED);
the respawn waits for the next pass, that is the next wake-up, which on an
otherwise quiet supervisord is the one-second timeout. Then the fresh
interpreter has to start and import what a slot worker needs.
"""

import os
import select
import signal
import socket
import subprocess
import sys
import time

import msgpack
import psutil

from vac.supervisor.process import die_with_parent

CHILD_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "children", "heartbeat_child.py")
PROGRAM = "child"
TITLE_PREFIX = "bench-child:"

# autorestart=true restarts after any exit. startsecs=0 counts a child as
# started as soon as it is spawned, so an exit never lands in supervisord's
# BACKOFF state: every kill is followed by an immediate restart, as vac's
# slot policy does for a slot that had run healthily. startretries only
# applies to BACKOFF, so it never stops the restarts here.
CONFIG = """\
[supervisord]
nodaemon=true
logfile={workdir}/supervisord.log
pidfile={workdir}/supervisord.pid
childlogdir={workdir}
loglevel=info

[program:{program}]
command={python} {child}
process_name=%(program_name)s-%(process_num)03d
numprocs={count}
autostart=true
autorestart=true
startsecs=0
startretries=3
stopsignal=TERM
stopwaitsecs=5
stdout_logfile=NONE
stderr_logfile={workdir}/%(program_name)s-%(process_num)03d.err
environment=BENCH_HEARTBEAT_SOCKET="{socket}",BENCH_HEARTBEAT_INTERVAL="{interval}"
"""


def supervisord_config(workdir, count, heartbeat_socket, heartbeat_interval=5.0,
                       python=sys.executable):
    """The supervisord.conf text for `count` heartbeat children."""
    return CONFIG.format(workdir=workdir, program=PROGRAM, python=python,
                         child=CHILD_PROGRAM, count=count, socket=heartbeat_socket,
                         interval=heartbeat_interval)


def child_names(count):
    return [f"{PROGRAM}-{n:03d}" for n in range(count)]


class SupervisordTree:
    """Start supervisord with `count` children; follow their heartbeats; stop it all."""

    label = "supervisord"

    def __init__(self, count, heartbeat_interval=5.0):
        self.workdir = None
        self.count = count
        self.names = child_names(count)
        self.heartbeat_interval = heartbeat_interval
        self.current = {}       # child name -> pid of its latest incarnation
        self.moments = {}       # pid -> {"code_started": t, "ready": t}
        self.process = None
        self.sock = None
        self._seen_pids = set()

    def start(self, workdir):
        """Write the config into `workdir`, bind the heartbeat socket, start supervisord."""
        self.workdir = workdir
        executable = os.path.join(os.path.dirname(sys.executable), "supervisord")
        if not os.access(executable, os.X_OK):
            raise RuntimeError(f"{executable} not found: run scripts/bootstrap --bench")
        address = os.path.join(self.workdir, "heartbeats.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        # 128 children starting at once must not overflow the queue.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        config = os.path.join(self.workdir, "supervisord.conf")
        with open(config, "w", encoding="utf-8") as out:
            out.write(supervisord_config(self.workdir, self.count, address,
                                         self.heartbeat_interval))
        with open(os.path.join(self.workdir, "supervisord.out"), "wb") as log:
            # die_with_parent: a bench killed outright cannot clean up, so
            # supervisord then gets SIGTERM and stops its children itself.
            self.process = subprocess.Popen([executable, "-n", "-c", config],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def pump(self, timeout):
        """Take in the heartbeats that arrive within `timeout` seconds."""
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        while ready:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            message = msgpack.unpackb(data)
            pid = message["pid"]
            self._seen_pids.add(pid)
            if message["kind"] == "ready":
                self.current[message["name"]] = pid
                self.moments[pid] = {"code_started": message["code_started"],
                                     "ready": message["t"]}
        if self.process.poll() is not None:
            raise RuntimeError(f"supervisord exited with {self.process.returncode}; "
                               f"see {self.workdir}/supervisord.log")

    def wait_all_ready(self, deadline):
        """Pump until every child has sent its first heartbeat, or fail at `deadline`."""
        while len(self.current) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"supervisord: only {len(self.current)} of {self.count} "
                                   f"children sent a heartbeat in time")
            self.pump(0.2)

    def pids(self):
        """supervisord's pid and its children's."""
        parent = psutil.Process(self.process.pid)
        return [parent.pid] + [child.pid for child in parent.children(recursive=True)]

    def stop(self, timeout=15.0):
        """SIGTERM supervisord (it stops its children), then SIGKILL what is left."""
        if self.process is None:
            return
        # supervisord puts every child in a process group of its own, so the
        # children are found by pid, not by killing supervisord's group.
        leftovers = set(self._seen_pids)
        try:
            leftovers.update(self.pids())
        except psutil.NoSuchProcess:
            pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)
        for pid in leftovers:
            _kill_if_ours(pid)
        if self.sock is not None:
            self.sock.close()


def _kill_if_ours(pid):
    """SIGKILL `pid` if it still runs the heartbeat child (pids get reused)."""
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        # The child retitles itself, which rewrites its command line.
        if CHILD_PROGRAM in cmdline or " ".join(cmdline).startswith(TITLE_PREFIX):
            process.kill()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
