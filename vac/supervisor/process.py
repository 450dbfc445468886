"""Every OS call the root makes on processes, behind one object.

Tests of the loop's decisions can replace Processes with a recording fake;
integration tests use it as it is, with real forks, signals and waitpid.
"""

import ctypes
import errno
import logging
import os
import signal

from vac.ipc.channel import RootChannel, channel_pair

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option, value):
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Spawned:
    """What the root holds of one forked child."""

    def __init__(self, pid, channel, pidfd):
        self.pid = pid
        self.channel = channel
        self.pidfd = pidfd


class Processes:
    """fork, signal, reap: the root's only ways to touch processes."""

    def become_subreaper(self):
        """Orphaned descendants are reparented to us, so we reap them."""
        prctl(PR_SET_CHILD_SUBREAPER, 1)

    def spawn(self, child_main):
        """Fork; the child runs child_main(worker_socket) and never returns here."""
        root_sock, worker_sock = channel_pair()
        pid = os.fork()
        if pid == 0:
            root_sock.close()
            child_main(worker_sock)
            os._exit(0)  # child_main exits itself; this is a last guard
        worker_sock.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as error:
            # The process exists until we reap it, so this means no pidfd
            # support; SIGCHLD still wakes the loop.
            log.warning("pidfd_open(%d) failed: %s; relying on SIGCHLD", pid, error)
            pidfd = None
        return Spawned(pid, RootChannel(root_sock), pidfd)

    def signal(self, pid, signum):
        """Send a signal; False if the process is already gone."""
        try:
            os.kill(pid, signum)
            return True
        except ProcessLookupError:
            return False

    def reap(self):
        """Reap every ended child: yields (pid, wait status) until none is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            yield pid, status


def die_with_parent():
    """In a child: get SIGTERM when the root dies, however it dies."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
