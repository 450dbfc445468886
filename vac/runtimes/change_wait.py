"""Waiting until one of a few paths changes: a bare inotify descriptor, no event parsing.

A Singularity machine's end shows as its launcher's exit_status appearing
and as its payload cgroup's cgroup.events changing; a waiter only needs to
wake up and look again. libc's inotify calls are loaded once per process:
pyinotify's WatchManager looks for libc (running ldconfig) each time one is
made, which would cost every wait of every machine.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
CHANGES = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_READ_BYTES = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)


class ChangeWait:
    """inotify on `paths` (those that exist); wait() returns on the first change or after its timeout."""

    def __init__(self, paths: Iterable[Path | None], mask: int = CHANGES) -> None:
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        for path in paths:
            if path is None:
                continue
            if _libc.inotify_add_watch(self._fd, os.fsencode(path), mask) < 0:
                error = ctypes.get_errno()
                # A cgroup already removed has nothing more to say; the caller polls anyway.
                if error not in (errno.ENOENT, errno.ENOTDIR):
                    self.close()
                    raise OSError(error, f"inotify_add_watch {path}: {os.strerror(error)}")

    def wait(self, seconds: float) -> bool:
        """True if something changed within `seconds` (the events are consumed), else False."""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, seconds))
        if not ready:
            return False
        try:
            while os.read(self._fd, _READ_BYTES):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ChangeWait:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
