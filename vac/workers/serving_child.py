"""The loop of a helper child that serves HTTP beside its channel (the metrics exporter, the mjf server).

The service binds when it can, says when it next needs a pass
(next_deadline), does its work in on_pass, and closes its server (close);
the loop waits on the root's channel and the server's socket meanwhile.
"""

import logging
import time

from vac.vocabulary.child_states import EXIT_BAD_SPEC

log = logging.getLogger(__name__)

# The loop wakes at least this often, whatever the service's deadlines.
MAX_WAIT_SECONDS = 60.0


class SpecError(ValueError):
    """The child's spec cannot work; it exits with EXIT_BAD_SPEC (not restarted)."""


def next_wake(now, server, *deadlines):
    """The earliest of `deadlines` (None ignored) and the server's own, else a plain wait's end."""
    times = [deadline for deadline in (*deadlines, server.next_deadline() if server is not None else None)
             if deadline is not None]
    return min(times, default=now + MAX_WAIT_SECONDS)


def options_or_exit(parse, spec, role):
    """parse(spec), or exit with EXIT_BAD_SPEC after saying why."""
    try:
        return parse(spec)
    except SpecError as error:
        log.error("%s: %s; not starting it", role, error)
        raise SystemExit(EXIT_BAD_SPEC) from None


def serve(loop, service, role, on_message):
    """Until told to stop: the root's messages to on_message(msg), a pass of the service after each wake-up."""
    try:
        while not loop.stopping:
            now = time.monotonic()
            wait_for = max(min(service.next_deadline(now), now + MAX_WAIT_SECONDS) - now, 0)
            fds = (service.server.fileno(),) if service.server is not None else ()
            for msg in loop.wait(wait_for, fds=fds):
                on_message(msg)
            service.on_pass(time.monotonic())
    finally:
        service.close()
    log.info("%s stopping: %s", role, loop.stop_reason)
