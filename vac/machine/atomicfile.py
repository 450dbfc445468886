"""Crash-safe file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_directory(directory: Path) -> None:
    """Make renames and new entries in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temporary(temp_dir: Path, name: str, data: bytes, mode: int) -> Path:
    # A leading dot and a random suffix: never a name anyone reads (MJF key, APEL
    # queue element) and never an existing file, even after a crash left one behind.
    temp_path = temp_dir / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp_path, _OPEN_NEW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not decide what containers may read
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp_path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp_path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, temp_dir: Path | None = None,
                 sync_directories: bool = True) -> None:
    """Replace `path` with `data` (temp file, fsync, rename, fsync of the directory).

    `temp_dir` must be on the same filesystem; it defaults to the file's own directory.
    A caller writing many files may pass sync_directories=False and fsync each
    directory once when it is done.
    """
    path = Path(path)
    temp_dir = Path(temp_dir) if temp_dir is not None else path.parent
    temp_path = _write_temporary(temp_dir, path.name, data, mode)
    try:
        os.rename(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if not sync_directories:
        return
    fsync_directory(path.parent)
    if temp_dir != path.parent:
        fsync_directory(temp_dir)


def create_atomic(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Create `path` with `data` complete or not at all; False (nothing written) if it exists.

    The complete temp file is hard-linked to its name, and link() refuses an existing
    name, so two writers, or a writer repeating itself after a crash, cannot both win.
    """
    path = Path(path)
    temp_path = _write_temporary(path.parent, path.name, data, mode)
    try:
        os.link(temp_path, path, follow_symlinks=False)
    except FileExistsError:
        return False
    finally:
        temp_path.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True
