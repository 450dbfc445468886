"""Watching a machine's joboutputs directory with inotify (shutdown_message, heartbeat file).

Only the names of changed entries are reported; what they hold is read
through JoboutputsDirectory, which never follows the container's symlinks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyinotify

log = logging.getLogger(__name__)

MASK = (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_ATTRIB
        | pyinotify.IN_MODIFY | pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM)
# The directory itself must be the one we made, not a link the container put in its place.
WATCH_FLAGS = pyinotify.IN_DONT_FOLLOW | pyinotify.IN_ONLYDIR
ANY_NAME = "*"


class JoboutputsWatch:
    """inotify on one joboutputs directory; select on fileno(), then call changed()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._names: set[str] = set()
        self._manager = pyinotify.WatchManager()
        self._notifier = pyinotify.Notifier(self._manager, default_proc_fun=self._event, timeout=0)
        try:
            self._manager.add_watch(str(self.path), MASK | WATCH_FLAGS, quiet=False)
        except pyinotify.WatchManagerError as error:
            self.close()
            raise OSError(f"cannot watch {self.path}: {error}") from error

    def fileno(self) -> int:
        return self._manager.get_fd()

    def _event(self, event) -> None:
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            # Events were lost: every name may have changed.
            self._names.add(ANY_NAME)
        elif event.name:
            self._names.add(event.name)

    def changed(self) -> set[str]:
        """Names changed since the last call ('*' if events were lost); reads only what is pending."""
        if self._notifier.check_events(timeout=0):
            self._notifier.read_events()
            self._notifier.process_events()
        names, self._names = self._names, set()
        return names

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._notifier is not None:
            try:
                self._notifier.stop()
            except OSError as error:
                log.debug("closing the inotify watch of %s: %s", self.path, error)
            self._notifier = None

