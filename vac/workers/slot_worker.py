"""The slot worker: one process per slot, running one machine at a time.

run() builds its runtimes (Docker, Singularity) after the fork, adopts what a predecessor
left in the slot, then runs machines the root places. Its loop selects on the
root's channel, a signal wake-up pipe, the results of blocking jobs and the
machine's joboutputs watch, with a timeout no later than the next deadline,
so heartbeats and the wall-clock limit never wait for Docker. Each heartbeat
carries the slot's state and the deadline by which that state must change:
a loop that turns without getting anywhere is seen, and restarted, by the root.

On SIGTERM or Stop it exits at once and leaves its container running:
stopping the daemon is not stopping the payloads; the next worker adopts it.
"""

import logging
import socket
import time

from vac.runtimes.by_model import runtimes_from_spec
from vac.runtimes.docker import DEFAULT_TIMEOUT_SECONDS
from vac.workers.harness import WorkerLoop
from vac.workers.job_runner import JobRunner
from vac.workers.machine_run import SlotMachine

log = logging.getLogger(__name__)

def run(channel, spec):
    """Entry point in the forked slot process."""
    slot = int(spec["slot"])
    loop = WorkerLoop(channel, spec, role=f"slot {slot:02d}")
    engine_timeout = float(spec.get("docker_timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
    runtime = runtimes_from_spec(spec, engine_timeout)
    machine = SlotMachine(slot=slot, factory_name=spec.get("factory_name") or socket.getfqdn(),
                          state_dir=spec["state_dir"], runtime=runtime, jobs=JobRunner(), report=loop.report,
                          send=channel.send, engine_timeout=engine_timeout)
    loop.progress = lambda: heartbeat_progress(machine)
    loop.title(machine.title(time.time()))
    loop.ready()
    machine.start()
    try:
        serve(loop, machine)
    finally:
        log.info("slot %02d stopping (%s); a running container is left to the next worker",
                 slot, loop.stop_reason)
        runtime.close()


def heartbeat_progress(machine):
    """(state, deadline) for a heartbeat: the machine's deadline moved onto time.monotonic().

    The root compares it with its own monotonic clock, which a wall-clock step
    (NTP, an operator's date) does not move.
    """
    state, deadline = machine.progress()
    if deadline is None:
        return state, None
    return state, time.monotonic() + (deadline - machine.clock())


def serve(loop, machine):
    """The loop: events in, heartbeats out (WorkerLoop.wait), until told to stop."""
    while not loop.stopping:
        next_wake = machine.tick()
        now = time.time()
        loop.title(machine.title(now))
        # A heartbeat due now goes now: the wait then lasts until the next one,
        # and an idle slot wakes once per heartbeat (title, heartbeat, wait),
        # not twice (a wait woken at once to send it). The title's elapsed
        # time is refreshed at each heartbeat; deadlines are kept by
        # machine.tick()'s next wake-up, not by this.
        loop.heartbeat_if_due()
        timeout = loop.heartbeat_due_in
        if next_wake is not None:
            timeout = min(timeout, max(0.0, next_wake - now))
        fds = machine.fds()
        for msg in loop.wait(timeout, fds=fds):
            machine.on_message(msg)
        # Every pass takes what finished, whatever woke it: a result must never
        # wait on a timer (taking nothing costs one non-blocking read).
        done = machine.jobs.take_done()
        if done:
            machine.on_jobs(done)
        watch = machine.machine.watch if machine.machine is not None else None
        if watch is not None and watch in loop.ready_fds:
            machine.on_watch()
