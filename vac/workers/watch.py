"""Watching a machine's joboutputs directory with inotify (shutdown_message, heartbeat file).

Only the names of changed entries are reported; what they hold is read
through JoboutputsDirectory, which never follows the container's symlinks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyinotify

log = logging.getLogger(__name__)

MASK = (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_ATTRIB
        | pyinotify.IN_MODIFY | pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM)
# The directory itself must be the one we made, not a link the container put in its place.
WATCH_FLAGS = pyinotify.IN_DONT_FOLLOW | pyinotify.IN_ONLYDIR
ANY_NAME = "*"


def _load_binding():
    """pyinotify's binding to libc's inotify calls, or None if it finds none (WatchManager then says why)."""
    return pyinotify.INotifyWrapper.create()


# pyinotify looks for libc anew for every WatchManager, with ctypes.util.find_library,
# which runs `ldconfig -p` in a subprocess. Loaded once here, in the root that
# imports this module before it forks, no slot worker runs ldconfig.
_BINDING = _load_binding()


class _WatchManager(pyinotify.WatchManager):
    """A pyinotify WatchManager on the binding loaded at import."""

    def __init__(self) -> None:
        if _BINDING is None:
            super().__init__()
            return
        # pyinotify's own __init__, with the binding given instead of looked for.
        self._ignore_events = False
        self._exclude_filter = lambda path: False
        self._wmd = {}
        self._inotify_wrapper = _BINDING
        self._fd = _BINDING.inotify_init()
        if self._fd < 0:
            raise OSError(f"cannot initialize a new instance of inotify, {_BINDING.str_errno()}")


class _SlotInotify:
    """One inotify instance per process, shared by its watches and told apart by watch descriptor.

    A slot worker makes one, not one per machine, and on the libc binding
    loaded before the fork.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.manager = _WatchManager()
        self.notifier = pyinotify.Notifier(self.manager, default_proc_fun=self._event, timeout=0)
        self.watches: dict[int, JoboutputsWatch] = {}

    def _event(self, event) -> None:
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            # Events were lost: every name of every watch may have changed.
            for watch in self.watches.values():
                watch.note(ANY_NAME)
            return
        watch = self.watches.get(event.wd)
        if watch is not None and event.name:
            watch.note(event.name)

    def pump(self) -> None:
        """Hand out what is pending, without waiting."""
        if self.notifier.check_events(timeout=0):
            self.notifier.read_events()
            self.notifier.process_events()


_shared: _SlotInotify | None = None


def _slot_inotify() -> _SlotInotify:
    global _shared
    # A forked child (a job of the slot) must not read its parent's events.
    if _shared is None or _shared.pid != os.getpid():
        _shared = _SlotInotify()
    return _shared


class JoboutputsWatch:
    """inotify on one joboutputs directory; select on fileno(), then call changed()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._names: set[str] = set()
        self._inotify = _slot_inotify()
        try:
            added = self._inotify.manager.add_watch(str(self.path), MASK | WATCH_FLAGS, quiet=False)
        except pyinotify.WatchManagerError as error:
            raise OSError(f"cannot watch {self.path}: {error}") from error
        self._wd = added[str(self.path)]
        self._inotify.watches[self._wd] = self

    def fileno(self) -> int:
        return self._inotify.manager.get_fd()

    def note(self, name: str) -> None:
        self._names.add(name)

    def changed(self) -> set[str]:
        """Names changed since the last call ('*' if events were lost); reads only what is pending."""
        self._inotify.pump()
        names, self._names = self._names, set()
        return names

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._wd is None:
            return
        self._inotify.watches.pop(self._wd, None)
        try:
            self._inotify.manager.rm_watch(self._wd, quiet=True)
        except OSError as error:
            log.debug("removing the inotify watch of %s: %s", self.path, error)
        self._wd = None
