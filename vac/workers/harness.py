"""What every child does to be supervised: signals, title, ready, heartbeats.

A worker's run(channel, spec) builds a WorkerLoop and calls wait() in its
main loop; wait() sends heartbeats when due, returns messages from the root
and turns SIGTERM or a Stop message into `stopping`.
"""

import logging
import math
import os
import select
import signal
import time

from vac import logs, proctitle
from vac.ipc import messages
from vac.ipc.framing import ChannelClosed
from vac.signals import set_signal_handler

log = logging.getLogger(__name__)


class WorkerLoop:
    """The supervision-facing side of a child process."""

    def __init__(self, channel, spec, role):
        self.channel = channel
        self.child_id = spec["child_id"]
        self.heartbeat_interval = float(spec["heartbeat_interval"])
        self.root_pid = spec.get("root_pid")
        self.role = role
        self.stopping = False
        self.stop_reason = None
        self.ready_fds = set()
        # progress() -> (state, deadline): what each heartbeat says the child
        # is doing and by when (time.monotonic()) that must change; None: nothing is due.
        self.progress = None
        self._seq = 0
        self._next_heartbeat = 0.0
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        set_signal_handler(signal.SIGTERM, self._on_term)
        logs.set_role(self.child_id)

    def _on_term(self, signum, frame):
        self.stopping = True
        self.stop_reason = "SIGTERM"

    def title(self, text):
        proctitle.set_title(text)

    def ready(self):
        """Tell the root we are initialised (the first heartbeat)."""
        self.channel.send(messages.Ready(child_id=self.child_id, pid=os.getpid()))
        self._next_heartbeat = self._next_beat(time.monotonic())

    def _next_beat(self, now):
        """The next multiple of the interval on the host's monotonic clock, which every child shares.

        The children's heartbeats then fall together: the root takes a pool's
        worth in one wake-up instead of one wake-up each (a wake-up costs far
        more than the message), and no two heartbeats are ever more than one
        interval apart.
        """
        return (math.floor(now / self.heartbeat_interval) + 1) * self.heartbeat_interval

    def report(self, state, **detail):
        """Tell the root what this child now does."""
        self.channel.send(messages.StateReport(child_id=self.child_id, state=state, detail=detail))

    @property
    def heartbeat_due_in(self):
        """Seconds until the next heartbeat is due (0 if it is due now)."""
        return max(self._next_heartbeat - time.monotonic(), 0.0)

    def heartbeat_if_due(self):
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._seq += 1
            state, deadline = self.progress() if self.progress is not None else (None, None)
            self.channel.send(messages.Heartbeat(child_id=self.child_id, seq=self._seq, state=state,
                                                 deadline=deadline))
            self._next_heartbeat = self._next_beat(now)

    def wait(self, timeout, fds=()):
        """Wait up to `timeout` s for the root or one of `fds`; heartbeat meanwhile.

        Returns the root's messages; `ready_fds` tells which of `fds` woke it.
        Even with a timeout of 0 it looks once at the channel and at `fds`: a
        loop whose timers say "now" still takes what has arrived.
        """
        deadline = time.monotonic() + timeout
        received = []
        self.ready_fds = set()
        while not self.stopping:
            self.heartbeat_if_due()
            if self.root_pid is not None and os.getppid() != self.root_pid:
                self._stop("the root process is gone")
                break
            wait_for = min(deadline, self._next_heartbeat) - time.monotonic()
            ready, _, _ = select.select([self.channel, self._wake_r, *fds], [], [],
                                        max(wait_for, 0))
            if self._wake_r in ready:
                _drain(self._wake_r)
            self.ready_fds = {fd for fd in fds if fd in ready}
            if self.channel in ready:
                try:
                    msg = self.channel.receive(0)
                except ChannelClosed:
                    # The root died or closed us off: a new root starts new workers.
                    self._stop("the root closed the channel")
                    break
                # One read may carry several messages: take them all now, as
                # the socket will not show them as readable again.
                while msg is not None:
                    if isinstance(msg, messages.Stop):
                        self._stop(msg.reason)
                    else:
                        received.append(msg)
                    msg = self.channel.receive(0) if self.channel.has_pending else None
            if received or self.ready_fds or time.monotonic() >= deadline:
                break
        return received

    def _stop(self, reason):
        self.stopping = True
        self.stop_reason = reason


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
