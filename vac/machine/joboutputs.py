"""The machine's joboutputs directory: shutdown_message and heartbeat, read and written safely.

The container owns joboutputs and may put anything there: a symlink to a
root-only file, a FIFO, a device node, a hard link, gigabytes. Every access
goes through a file descriptor of the directory itself (opened without following
a symlink) and names one plain entry in it, never following a symlink, opening
only regular files, reading a bounded amount, and creating our own message only
where no entry of that name exists.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

SHUTDOWN_MESSAGE_NAME = "shutdown_message"
MAX_MESSAGE_BYTES = 4096
MESSAGE_FILE_MODE = 0o644
# How many joboutputs entries are looked at for the payload's last sign of life.
MAX_ENTRIES_LOOKED_AT = 1000

_MESSAGE_LINE = re.compile(r"([1-9][0-9]{2})(?:[ \t]+(.*))?")
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# /proc/self/fd/N is itself a (magic) symlink: reopening through it must follow it.
_REOPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_NOCTTY | os.O_CLOEXEC)


@dataclass(frozen=True, slots=True)
class ShutdownMessage:
    """A shutdown_message: three-digit code and text (what counts as an abort: supervisor/aborts.py)."""
    code: int
    text: str

    def line(self) -> str:
        """The message as the single line stored in the file."""
        return f"{self.code} {self.text}"


# The messages the factory writes when it ends a machine itself (INTERFACES.md §6).
EXCEEDED_WALLCLOCK = ShutdownMessage(700, "Exceeded max_wallclock_seconds")
HEARTBEAT_NOT_CREATED = ShutdownMessage(700, "Heartbeat file not created")
HEARTBEAT_NOT_UPDATED = ShutdownMessage(700, "Heartbeat file not updated")
FAILED_TO_START = ShutdownMessage(700, "Failed to start")
SHUTDOWN_BY_FACTORY = ShutdownMessage(100, "Shutdown requested by the factory")


@dataclass(frozen=True, slots=True)
class MessageReading:
    """The result of reading shutdown_message: the message, or None and why there is none."""
    message: ShutdownMessage | None
    reason: str | None = None


def _printable(text: str) -> str:
    # The text ends up in logs, status output and VacQuery replies.
    return "".join(character if character.isprintable() else "?" for character in text)


def parse_shutdown_message(data: bytes) -> MessageReading:
    """Parse the first line of a shutdown_message ('NNN text')."""
    if not data.strip():
        return MessageReading(None, "shutdown_message is empty")
    first_line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    match = _MESSAGE_LINE.fullmatch(first_line)
    if match is None:
        return MessageReading(None, f"shutdown_message is not 'NNN text': {_printable(first_line[:80])!r}")
    return MessageReading(ShutdownMessage(int(match.group(1)), _printable((match.group(2) or "").strip())))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _check_plain_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name inside joboutputs")


class JoboutputsDirectory:
    """An open joboutputs directory; every access is relative to its file descriptor."""

    def __init__(self, path: Path) -> None:
        # O_NOFOLLOW: even joboutputs itself must be the directory we made.
        self.path = Path(path)
        self.fd = os.open(self.path, _DIRECTORY_FLAGS)

    def close(self) -> None:
        """Close the directory descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JoboutputsDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_regular(self, name: str) -> tuple[int | None, str | None]:
        """A read descriptor for entry `name` if it is a plain regular file, else (None, why)."""
        try:
            # An O_PATH descriptor opens nothing (no FIFO wait, no device driver):
            # it pins the inode so we can inspect it, then reopen exactly that inode.
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None, f"no {name}"
        try:
            info = os.fstat(path_fd)
            if not stat.S_ISREG(info.st_mode):
                return None, f"{name} is a {_kind(info.st_mode)}, not a regular file; ignored"
            if info.st_nlink != 1:
                # A hard link could pull in a file from elsewhere on this filesystem.
                return None, f"{name} has {info.st_nlink} hard links; ignored"
            try:
                fd = os.open(f"/proc/self/fd/{path_fd}", _REOPEN_FLAGS)
            except FileNotFoundError:
                # No /proc: open by name and make sure it is still the inode we checked.
                fd = os.open(name, _READ_FLAGS, dir_fd=self.fd)
            reopened = os.fstat(fd)
            if (reopened.st_dev, reopened.st_ino) != (info.st_dev, info.st_ino):
                os.close(fd)
                return None, f"{name} was replaced while being read; ignored"
            return fd, None
        finally:
            os.close(path_fd)

    def read_bounded(self, name: str, max_bytes: int) -> tuple[bytes | None, str | None]:
        """At most `max_bytes` of regular file `name`, or (None, why not)."""
        _check_plain_name(name)
        fd, reason = self._open_regular(name)
        if fd is None:
            return None, reason
        try:
            chunks = []
            remaining = max_bytes
            while remaining > 0:
                chunk = os.read(fd, remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks), None

    def read_shutdown_message(self) -> MessageReading:
        """The container's (or our) shutdown_message, parsed from at most MAX_MESSAGE_BYTES."""
        data, reason = self.read_bounded(SHUTDOWN_MESSAGE_NAME, MAX_MESSAGE_BYTES)
        if data is None:
            return MessageReading(None, reason)
        return parse_shutdown_message(data)

    def write_shutdown_message(self, message: ShutdownMessage) -> bool:
        """Create shutdown_message with `message` unless an entry of that name exists (then False)."""
        try:
            # O_EXCL refuses any existing entry, a symlink (even a dangling one)
            # included, so nothing is ever written through the container's links.
            fd = os.open(SHUTDOWN_MESSAGE_NAME, _CREATE_FLAGS, MESSAGE_FILE_MODE, dir_fd=self.fd)
        except FileExistsError:
            return False
        try:
            os.fchmod(fd, MESSAGE_FILE_MODE)
            view = memoryview(message.line().encode())
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self.fd)
        return True

    def file_mtime(self, name: str) -> float | None:
        """Modification time of regular file `name` (never following a symlink); None if absent."""
        _check_plain_name(name)
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        # A symlink's own time says nothing about whether the payload is alive.
        return info.st_mtime if stat.S_ISREG(info.st_mode) else None

    def latest_payload_change(self, max_entries: int = MAX_ENTRIES_LOOKED_AT) -> float | None:
        """The latest modification time of the regular files the payload left here (None if none).

        Evidence that the machine was alive then. The shutdown_message is left
        out, since the factory writes one itself when it ends a machine; only
        the first `max_entries` entries are looked at, as the container
        decides how many there are.
        """
        latest = None
        with os.scandir(self.fd) as entries:
            for count, entry in enumerate(entries):
                if count >= max_entries:
                    break
                if entry.name == SHUTDOWN_MESSAGE_NAME:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if stat.S_ISREG(info.st_mode) and (latest is None or info.st_mtime > latest):
                    latest = info.st_mtime
        return latest

    def heartbeat_age(self, name: str, now: float) -> float | None:
        """Seconds since heartbeat file `name` was last modified; None if it is missing."""
        mtime = self.file_mtime(name)
        return None if mtime is None else max(0.0, now - mtime)
