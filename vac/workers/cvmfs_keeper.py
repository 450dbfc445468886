"""The CernVM-FS keeper: one process watching the repositories machines need.

This version does the supervision-facing part only (heartbeats, a clean
stop); it lists the repositories it was given but does not check them yet,
and its title says so.
"""

import logging

from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)


def run(channel, spec):
    """Entry point in the forked keeper process."""
    repositories = list(spec.get("repositories", []))
    loop = WorkerLoop(channel, spec, role="cvmfs-keeper")
    loop.title(f"cvmfs-keeper [{len(repositories)} repos, not checked]")
    loop.ready()
    loop.report("unchecked", repositories=repositories)
    while not loop.stopping:
        loop.wait(loop.heartbeat_interval)
    log.info("cvmfs-keeper stopping: %s", loop.stop_reason)
