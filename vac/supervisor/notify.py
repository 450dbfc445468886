"""sd_notify written by hand: READY, STATUS, WATCHDOG, STOPPING, RELOADING.

A no-op without NOTIFY_SOCKET. Only the root notifies: children forget the
socket right after the fork (see forget_in_child).
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends datagrams to systemd's notification socket, never blocking."""

    def __init__(self, environ=None, status_interval=1.0):
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET") or None
        self.sock = None
        if self.address:
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        self.watchdog_interval = _watchdog_interval(environ)
        self.status_interval = status_interval
        self._last_status = None
        self._last_status_at = None
        self._last_watchdog_at = None

    @property
    def enabled(self):
        return self.sock is not None

    def send(self, *assignments):
        """Send one notification of KEY=VALUE lines; failures are logged, never raised."""
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as error:
            # systemd gone or its queue full: the daemon keeps working regardless.
            log.warning("sd_notify %s failed: %s", assignments[0].split("=")[0], error)

    def ready(self, status):
        self.send("READY=1", f"STATUS={status}")
        self._remember_status(status, None)

    def status(self, text, now):
        """STATUS=, only when it changed and at most once per status_interval."""
        if text == self._last_status:
            return
        if self._last_status_at is not None and now - self._last_status_at < self.status_interval:
            return
        self.send(f"STATUS={text}")
        self._remember_status(text, now)

    def _remember_status(self, text, now):
        self._last_status = text
        self._last_status_at = now

    def watchdog(self, now):
        """WATCHDOG=1 at half the configured interval; call after a healthy loop pass."""
        if self.watchdog_interval is None:
            return
        if self._last_watchdog_at is not None and now - self._last_watchdog_at < self.watchdog_interval / 2:
            return
        self.send("WATCHDOG=1")
        self._last_watchdog_at = now

    def next_watchdog(self):
        """When the next WATCHDOG=1 falls due, or None."""
        if self.watchdog_interval is None or self._last_watchdog_at is None:
            return None
        return self._last_watchdog_at + self.watchdog_interval / 2

    def stopping(self):
        self.send("STOPPING=1")

    def reloading(self):
        self.send("RELOADING=1")

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _watchdog_interval(environ):
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        return int(usec) / 1e6
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None


ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def unset_environment():
    """Take systemd's variables out of this process's environment once the Notifier has read
    them (sd_notify's unset_environment): no child forked or started later sees them."""
    for name in ENVIRONMENT:
        os.environ.pop(name, None)


def forget_in_child(notifier):
    """In a freshly forked child: never talk to systemd (the root unset its variables before forking)."""
    notifier.close()
