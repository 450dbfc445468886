"""The fault barrier: the one kind of catch in the root that lets its loop go on.

Everywhere else in vac an unexpected exception ends the process and its
supervisor restarts it (STYLE.md, "let it crash, once"). The root has no
supervisor but systemd, and while it lives wall-clock limits are enforced
and children restarted. So each service it runs in-process sits behind a
barrier at its boundary, one unit of work at a time: one control client,
one observer call, one configuration-watcher event, one child message, one
pass of a service. An exception there is logged with its traceback, naming
what was being served; that client, event or message is dropped and the
loop goes on. These boundaries are the documented exception to "no broad
catch that continues"; nothing else in the root catches Exception.
"""

import logging

log = logging.getLogger(__name__)


class FaultBarrier:
    """`with FaultBarrier("control server", "client uid %d pid %d", uid, pid) as barrier:`

    An Exception raised inside is logged with its traceback and does not
    propagate; afterwards `barrier.fault` holds it (None when all went well)
    so the caller can drop what it was serving. SystemExit and
    KeyboardInterrupt are not Exceptions and pass through.
    """

    __slots__ = ("service", "subject", "args", "fault")

    def __init__(self, service, subject, *args):
        self.service = service
        self.subject = subject   # a %-format naming the client, child, message or event
        self.args = args
        self.fault = None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None or not issubclass(kind, Exception):
            return False
        self.fault = error
        log.error("%s: fault while serving " + self.subject + ": %s: %s; dropped it, the loop goes on",
                  self.service, *self.args, kind.__name__, error,
                  exc_info=(kind, error, traceback))
        return True
