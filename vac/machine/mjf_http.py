"""Machine/Job Features over HTTP: each machine's token and URLs, and what a request path names.

A machinetype with mjf_http gets URLs instead of paths in MACHINEFEATURES and
JOBFEATURES (DIRAC's readers need http; INTERFACES.md §11):

    http://IP:PORT/<machine uuid>/<token>/machinefeatures[/<key>]
    http://IP:PORT/<machine uuid>/<token>/jobfeatures[/<key>]

The token is 128 random bits kept in the machine directory (0600, root's):
another machine, which may know this one's UUID (VacQuery tells it), cannot
guess it. The UUID finds the directory without a scan; the token is compared
in constant time. Parsing is pure; read_feature() reads the files at request
time, relative to directory descriptors and never through a symlink.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from vac.machine.atomicfile import create_atomic
from vac.machine.layout import MACHINES_DIR_NAME, PRIVATE_FILE_MODE, MachinePaths, is_machine_uuid

TOKEN_FILE_NAME = "mjf_token"
TOKEN_BYTES = 16
FEATURES_DIRECTORIES = ("machinefeatures", "jobfeatures")
# Key names vac writes (allocated_CPU and mem_limit_MB have capitals) and the
# site's machinefeatures_option_* names.
KEY_RE = re.compile(r"[A-Za-z0-9_]{1,128}")
TOKEN_RE = re.compile(r"[0-9a-f]{%d}" % (2 * TOKEN_BYTES))
# Every value vac writes is a few bytes; a site's machinefeatures option is one line.
MAX_VALUE_BYTES = 64 * 1024
# A directory listing names at most this many keys (vac writes about 25).
MAX_LISTED_KEYS = 512
MAX_TARGET_BYTES = 1024
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class FeatureTooLarge(ValueError):
    """A key file holds more than MAX_VALUE_BYTES: not served."""


@dataclass(frozen=True, slots=True)
class FeaturesUrls:
    """What MACHINEFEATURES and JOBFEATURES say inside a machine of an mjf_http machinetype."""
    machinefeatures: str
    jobfeatures: str


@dataclass(frozen=True, slots=True)
class FeaturesRequest:
    """What a request path names: one machine's features directory, and one key or its listing (None)."""
    machine_uuid: str
    token: str
    directory: str
    key: str | None


def features_urls(base_url: str, machine_uuid: str, token: str) -> FeaturesUrls:
    """The machine's two URLs under the server's `base_url` (http://IP:PORT), without a trailing slash.

    No trailing slash: readers append "/key" (DIRAC joins paths, others concatenate).
    """
    if not is_machine_uuid(machine_uuid) or not TOKEN_RE.fullmatch(token):
        raise ValueError(f"machine {machine_uuid!r}: not a machine UUID and MJF token")
    base = f"{base_url.rstrip('/')}/{machine_uuid}/{token}"
    return FeaturesUrls(f"{base}/machinefeatures", f"{base}/jobfeatures")


def parse_path(target: str | bytes) -> FeaturesRequest | None:
    """The FeaturesRequest a request target names, or None (answered 404).

    The query is ignored and empty segments are skipped ("…/jobfeatures//key"
    from a reader that adds a slash of its own); nothing is percent-decoded, so
    only the plain names vac writes ever match.
    """
    if isinstance(target, bytes):
        if len(target) > MAX_TARGET_BYTES:
            return None
        try:
            target = target.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(target) > MAX_TARGET_BYTES or not target.startswith("/"):
        return None
    path = target.split("?", 1)[0]
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) not in (3, 4):
        return None
    machine_uuid, token, directory = segments[:3]
    key = segments[3] if len(segments) == 4 else None
    if (not is_machine_uuid(machine_uuid) or not TOKEN_RE.fullmatch(token)
            or directory not in FEATURES_DIRECTORIES or (key is not None and not KEY_RE.fullmatch(key))):
        return None
    return FeaturesRequest(machine_uuid, token, directory, key)


# ---------------------------------------------------------------- the token on disk


def read_token(paths: MachinePaths) -> str | None:
    """The machine's token, or None if it has none (or not a valid one)."""
    try:
        fd = os.open(paths.root / TOKEN_FILE_NAME, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 2 * TOKEN_BYTES + 1).decode("ascii", errors="replace")
    finally:
        os.close(fd)
    return text if TOKEN_RE.fullmatch(text) else None


def ensure_token(paths: MachinePaths) -> str:
    """The machine's token, made (0600) if it has none yet; a repeated preparation keeps the first."""
    token = read_token(paths)
    if token is not None:
        return token
    create_atomic(paths.root / TOKEN_FILE_NAME, secrets.token_hex(TOKEN_BYTES).encode(), PRIVATE_FILE_MODE)
    token = read_token(paths)
    if token is None:
        raise OSError(f"machine {paths.machine_uuid}: {paths.root / TOKEN_FILE_NAME} does not hold a token")
    return token


# ---------------------------------------------------------------- reading at request time


def read_feature(state_dir: Path | str, request: FeaturesRequest) -> bytes | None:
    """The value of the key (or the listing of the directory) `request` names; None for 404.

    None when the machine is unknown, its token differs, it has finished, or
    the key is missing or not a regular file. Every step is relative to the
    directory opened before it, with O_NOFOLLOW: no symlink is followed.
    FeatureTooLarge for a value beyond MAX_VALUE_BYTES.
    """
    try:
        machine_fd = os.open(Path(state_dir) / MACHINES_DIR_NAME / request.machine_uuid, _DIRECTORY_FLAGS)
    except OSError:
        # Missing, not a directory, or a symlink (ELOOP): no such machine here.
        return None
    try:
        if not _token_matches(machine_fd, request.token) or _exists(machine_fd, "finished"):
            return None
        try:
            directory_fd = os.open(request.directory, _DIRECTORY_FLAGS, dir_fd=machine_fd)
        except OSError:
            return None
        try:
            if request.key is None:
                return _listing(directory_fd)
            return _read_regular(directory_fd, request.key, MAX_VALUE_BYTES)
        finally:
            os.close(directory_fd)
    finally:
        os.close(machine_fd)


def _token_matches(machine_fd: int, token: str) -> bool:
    stored = _read_regular(machine_fd, TOKEN_FILE_NAME, 2 * TOKEN_BYTES)
    return stored is not None and hmac.compare_digest(stored, token.encode("ascii"))


def _exists(directory_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read_regular(directory_fd: int, name: str, max_bytes: int) -> bytes | None:
    """At most `max_bytes` of regular file `name`; None if it is missing or not a regular file."""
    try:
        # O_NOFOLLOW refuses a symlink (ELOOP); O_NONBLOCK never waits on a FIFO.
        fd = os.open(name, _READ_FLAGS, dir_fd=directory_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FeatureTooLarge(f"{name} holds more than {max_bytes} bytes")
    return b"".join(chunks)


def _listing(directory_fd: int) -> bytes:
    """The directory's key names, one per line, sorted: regular files with key-like names only."""
    names = []
    with os.scandir(directory_fd) as entries:
        for entry in entries:
            if KEY_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                names.append(entry.name)
                if len(names) >= MAX_LISTED_KEYS:
                    break
    return "".join(f"{name}\n" for name in sorted(names)).encode("ascii")
