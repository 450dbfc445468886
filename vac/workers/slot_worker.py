"""The slot worker: one process per slot, running one machine at a time.

run() builds the Docker runtime after the fork, adopts what a predecessor
left in the slot, then runs machines the root places. Its loop selects on the
root's channel, a signal wake-up pipe, the results of blocking jobs and the
machine's joboutputs watch, with a timeout no later than the next deadline,
so heartbeats and the wall-clock limit never wait for Docker.

On SIGTERM or Stop it exits at once and leaves its container running:
stopping the daemon is not stopping the payloads; the next worker adopts it.
"""

import logging
import os
import select
import signal
import socket
import time

from vac.ipc import messages
from vac.ipc.framing import ChannelClosed
from vac.runtimes.docker import DEFAULT_BASE_URL, DEFAULT_TIMEOUT_SECONDS, DockerRuntime
from vac.workers.harness import WorkerLoop
from vac.workers.jobs import Jobs
from vac.workers.machine_run import SlotMachine

log = logging.getLogger(__name__)

# The title shows elapsed seconds: the loop passes at least this often.
MAX_LOOP_SECONDS = 1.0


def run(channel, spec):
    """Entry point in the forked slot process."""
    slot = int(spec["slot"])
    loop = WorkerLoop(channel, spec, role=f"slot {slot:02d}")
    wake = _signal_wakeup()
    runtime = DockerRuntime(base_url=spec.get("docker_url") or DEFAULT_BASE_URL,
                            timeout=float(spec.get("docker_timeout_seconds") or DEFAULT_TIMEOUT_SECONDS))
    machine = SlotMachine(slot=slot, factory_name=spec.get("factory_name") or socket.getfqdn(),
                          state_dir=spec["state_dir"], runtime=runtime, jobs=Jobs(), report=loop.report,
                          send=channel.send)
    loop.title(machine.title(time.time()))
    loop.ready()
    machine.start()
    try:
        serve(loop, machine, wake)
    finally:
        log.info("slot %02d stopping (%s); a running container is left to the next worker",
                 slot, loop.stop_reason)
        runtime.close()


def serve(loop, machine, wake):
    """The loop: events in, heartbeats out, until told to stop."""
    root_pid = loop.root_pid
    while not loop.stopping:
        loop.heartbeat_if_due()
        if root_pid is not None and os.getppid() != root_pid:
            _stop(loop, "the root process is gone")
            break
        next_wake = machine.tick()
        now = time.time()
        loop.title(machine.title(now))
        timeout = min(MAX_LOOP_SECONDS, loop.heartbeat_interval / 2)
        if next_wake is not None:
            timeout = min(timeout, max(0.0, next_wake - now))
        ready, _, _ = select.select([loop.channel, wake, *machine.fds()], [], [], timeout)
        if wake in ready:
            _drain(wake)
        if loop.channel in ready:
            _receive(loop, machine)
        if machine.jobs in ready:
            machine.on_jobs(machine.jobs.take_done())
        watch = machine.machine.watch if machine.machine is not None else None
        if watch is not None and watch in ready:
            machine.on_watch()


def _receive(loop, machine):
    """Every message that has arrived from the root."""
    while not loop.stopping:
        try:
            msg = loop.channel.receive(0)
        except ChannelClosed:
            # The root died or closed us off: a new root starts new workers.
            _stop(loop, "the root closed the channel")
            return
        if msg is None:
            return
        if isinstance(msg, messages.Stop):
            _stop(loop, msg.reason)
        else:
            machine.on_message(msg)


def _stop(loop, reason):
    loop.stopping = True
    loop.stop_reason = reason


def _signal_wakeup():
    """A pipe a signal writes to, so SIGTERM wakes our select at once (the handler only sets a flag)."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_fd)
    return read_fd


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
