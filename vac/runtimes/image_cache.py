"""Singularity images given as http(s) URLs, downloaded into `<state_dir>/image-cache/`.

One file per URL, named by the URL's SHA-256 (plus a plain extension such as
.sif). The slots of a factory share one download through a lock file beside
it; a cached copy is refreshed with If-Modified-Since and replaced only by a
complete new image, renamed into place. As in Vac, an image server that cannot
be reached does not stop machines whose image is already cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Callable

from vac import http_fetch
from vac.runtimes.change_wait import IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_TO, ChangeWait

log = logging.getLogger(__name__)

IMAGE_CACHE_DIR_NAME = "image-cache"
DEFAULT_MAX_IMAGE_BYTES = 16 * 1024**3
# The cache directory and the images are readable by the unprivileged Singularity accounts.
_DIRECTORY_MODE = 0o755
_IMAGE_MODE = 0o644
# How long to wait between attempts at the lock another slot holds.
_LOCK_RECHECK_SECONDS = 1.0
# An extension kept on the cached file: short, plain, and never one of the cache's own.
_PLAIN_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")
_OWN_EXTENSIONS = (".lock", ".part")


class ImageUnavailable(Exception):
    """The image is neither cached nor downloadable now; the message says why."""


def cached_image_path(state_dir: Path, url: str) -> Path:
    """Where the image from `url` is (or will be) cached."""
    return _cache_dir(state_dir) / (_url_digest(url) + _plain_extension(url))


def ensure_cached(state_dir: Path, url: str, deadline: float, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                  user_agent: str, clock: Callable[[], float] = time.monotonic,
                  download=http_fetch.download) -> Path:
    """The path of an up-to-date copy of the image at `url`, downloaded or refreshed before `deadline`.

    `deadline` is a value of `clock`, which must be the clock `download` reads (time.monotonic).
    A cached copy that cannot be refreshed is used as it is; without one, ImageUnavailable."""
    cache_dir = _cache_dir(state_dir)
    cache_dir.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    os.chmod(cache_dir, _DIRECTORY_MODE)  # mkdir's mode is cut by the umask
    image = cached_image_path(state_dir, url)
    with _exclusive_lock(cache_dir / f"{_url_digest(url)}.lock", deadline, clock) as locked:
        if not locked:
            if image.is_file():
                log.info("image %s: another slot is still refreshing it; using the copy cached at %s",
                         url, image)
                return image
            raise ImageUnavailable(f"another slot is still downloading image {url} and the deadline has passed")
        _remove_leftovers(cache_dir, url)
        return _refresh(image, url, deadline, max_bytes, user_agent, download)


def _refresh(image: Path, url: str, deadline: float, max_bytes: int, user_agent: str, download) -> Path:
    """With the lock held: fetch the image if it is new or changed, keep the cached copy otherwise."""
    cached_mtime = image.stat().st_mtime if image.is_file() else None
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{_url_digest(url)}.", suffix=".part",
                                                  dir=image.parent)
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        result = download(url, temporary, deadline=deadline, max_bytes=max_bytes, user_agent=user_agent,
                          if_modified_since=cached_mtime)
        if result.modified:
            _install(temporary, image, result.last_modified)
    except (http_fetch.FetchFailed, OSError) as error:
        if cached_mtime is None:
            raise ImageUnavailable(f"cannot download image {url}: {error}") from None
        log.warning("image %s: cannot refresh it (%s); using the copy cached at %s", url, error, image)
        return image
    finally:
        _remove(temporary)  # gone already when it was installed
    if result.modified:
        log.info("image %s: downloaded into %s", url, image)
    else:
        log.debug("image %s: not modified since it was cached at %s", url, image)
    return image

def _install(temporary: Path, image: Path, last_modified: float | None) -> None:
    """Make the complete download durable and readable, then put it in place in one rename."""
    with open(temporary, "rb") as stream:
        os.fsync(stream.fileno())
    os.chmod(temporary, _IMAGE_MODE)
    # The mtime is what the next If-Modified-Since says: the server's own date where it gave one.
    mtime = time.time() if last_modified is None else last_modified
    os.utime(temporary, (mtime, mtime))
    os.replace(temporary, image)
    directory = os.open(image.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def _exclusive_lock(path: Path, deadline: float, clock: Callable[[], float]):
    """Yield True once the lock on `path` is held, or False if another holder kept it until the deadline.

    Non-blocking attempts, so a download that never ends cannot hold this slot
    past its deadline; between them, the wait is on the cache directory: the
    holder closing the lock file (its release), an image renamed into place or
    a temporary file removed wakes it. The recheck after _LOCK_RECHECK_SECONDS
    covers a holder killed without closing it cleanly.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with ChangeWait((path.parent,), mask=IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE) as released:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - clock()
                    if left <= 0:
                        yield False
                        return
                    released.wait(min(_LOCK_RECHECK_SECONDS, left))
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _remove_leftovers(cache_dir: Path, url: str) -> None:
    # Partial downloads of this URL that a killed slot could not remove; only the lock holder writes them.
    for leftover in cache_dir.glob(f".{_url_digest(url)}.*.part"):
        _remove(leftover)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _cache_dir(state_dir: Path) -> Path:
    return Path(state_dir) / IMAGE_CACHE_DIR_NAME


def _url_digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", errors="surrogateescape")).hexdigest()


def _plain_extension(url: str) -> str:
    try:
        suffix = PurePosixPath(urllib.parse.urlsplit(url).path).suffix
    except ValueError:
        return ""
    if _PLAIN_EXTENSION.fullmatch(suffix) and suffix.lower() not in _OWN_EXTENSIONS:
        return suffix
    return ""
