"""Fetching Vacuum Pipe documents over http(s), with an on-disk last good copy."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass

import vac
from vac.config.pipes import MAX_DOCUMENT_BYTES, PipeError, cache_seconds_of, parse_pipe_document
from vac.http_fetch import DEFAULT_TIMEOUT_SECONDS, GRID_CA_PATH, FetchFailed, fetch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    """The document to use for a pipe, where it came from, and any refresh error."""

    url: str
    # The raw document in use: freshly fetched or the cached copy; None if neither.
    document: bytes | None
    fetched_at: float | None
    # Whether a request went out this time (False while the cached copy is fresh).
    requested: bool
    # True when a refresh failed and the last good copy is in use.
    stale: bool = False
    error: str | None = None


def default_user_agent() -> str:
    """The User-Agent naming vac and its version."""
    return f"vac/{vac.__version__} (Vacuum Pipe fetcher)"


def cache_path(url: str, cache_dir: str) -> str:
    """Where the last good copy of the pipe at `url` is kept."""
    return os.path.join(cache_dir, hashlib.sha256(url.encode()).hexdigest()[:32] + ".pipe")


def read_cached(url: str, cache_dir: str) -> tuple[bytes, float] | None:
    """The last good copy and its fetch time, or None if there is none usable."""
    try:
        with open(cache_path(url, cache_dir), "rb") as stream:
            header, _, document = stream.read().partition(b"\n")
        meta = json.loads(header)
        if meta.get("url") != url:
            return None
        return document, float(meta["fetched_at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("ignoring unreadable cached copy of pipe %s in %s: %s", url, cache_dir, error)
        return None


def fetch_pipe(url: str, cache_dir: str, now: float, *,
               timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
               max_bytes: int = MAX_DOCUMENT_BYTES, user_agent: str | None = None,
               ca_paths=(GRID_CA_PATH,)) -> FetchResult:
    """The pipe document: the cached copy while fresh, else a new one, else the last good copy.

    Never raises for network or document errors; they are returned in the result."""
    cached = read_cached(url, cache_dir)
    if cached is not None:
        document, fetched_at = cached
        try:
            lifetime = cache_seconds_of(parse_pipe_document(document))
        except PipeError:
            cached = None
        else:
            # A clock that went backwards makes the copy look fresh for ever; refetch then.
            if fetched_at <= now < fetched_at + lifetime:
                return FetchResult(url, document, fetched_at, requested=False)
    try:
        document = fetch(url, timeout_seconds=timeout_seconds, max_bytes=max_bytes,
                         user_agent=user_agent or default_user_agent(), ca_paths=ca_paths,
                         accept="application/json")
        parse_pipe_document(document)
    except (FetchFailed, PipeError) as error:
        if cached is None:
            log.warning("fetching pipe %s failed and there is no earlier copy: %s", url, error)
            return FetchResult(url, None, None, requested=True, error=str(error))
        log.warning("fetching pipe %s failed, keeping the copy fetched at %d: %s",
                    url, cached[1], error)
        return FetchResult(url, cached[0], cached[1], requested=True, stale=True, error=str(error))
    _save(url, cache_dir, document, now)
    log.info("fetched pipe %s (%d bytes)", url, len(document))
    return FetchResult(url, document, now, requested=True)


def _save(url: str, cache_dir: str, document: bytes, now: float) -> None:
    """Keep the document as the last good copy: temp file, fsync, rename."""
    header = json.dumps({"url": url, "fetched_at": now}).encode() + b"\n"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".pipe")
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(header + document)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, cache_path(url, cache_dir))
        finally:
            # Gone already after a successful rename; left over only after a failure.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        directory = os.open(cache_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        # The fresh document is still used now; only the fallback copy is older.
        log.warning("cannot keep a copy of pipe %s in %s: %s", url, cache_dir, error)
