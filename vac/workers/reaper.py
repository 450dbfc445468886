"""The reaper: removes what no live slot owns.

This version does the supervision-facing part only; the removal of orphaned
containers and old machine directories is not implemented yet. (Orphaned
processes are reaped by the root itself, which is the tree's subreaper.)
"""

import logging

from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)


def run(channel, spec):
    """Entry point in the forked reaper process."""
    loop = WorkerLoop(channel, spec, role="reaper")
    loop.title("reaper")
    loop.ready()
    loop.report("waiting")
    while not loop.stopping:
        loop.wait(loop.heartbeat_interval)
    log.info("reaper stopping: %s", loop.stop_reason)
