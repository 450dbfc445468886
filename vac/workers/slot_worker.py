"""The slot worker: one process per slot.

This version does the supervision-facing part only: it reports its slot
idle, heartbeats and stops cleanly. Running machines in the slot is not
implemented yet, and neither the title nor the reports claim otherwise.
"""

import logging
import time

from vac.proctitle import format_elapsed
from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)


def run(channel, spec):
    """Entry point in the forked slot process."""
    slot = int(spec["slot"])
    loop = WorkerLoop(channel, spec, role=f"slot {slot:02d}")
    idle_since = time.monotonic()
    loop.title(f"slot {slot:02d} - idle {format_elapsed(0)}")
    loop.ready()
    loop.report("idle", slot=slot)
    log.info("slot %02d idle (machines are not started by this version)", slot)
    while not loop.stopping:
        loop.wait(loop.heartbeat_interval)
        loop.title(f"slot {slot:02d} - idle {format_elapsed(time.monotonic() - idle_since)}")
    log.info("slot %02d stopping: %s", slot, loop.stop_reason)
