"""GETs over http(s) with one set of rules: a deadline, a size cap, status 200 only,
and redirects only to the same or a stronger scheme (http to https, never https to http).

`fetch` returns a small document in memory (Vacuum Pipes, user_data templates);
`download` streams a large one into a file (Singularity images), optionally
conditional on If-Modified-Since. Each caller words the failure for its own log.

Every socket operation (connect, TLS handshake, each receive, on every redirect
hop) may wait only for the time left before the deadline, and the body is
abandoned once the deadline has passed, so a server that drips bytes cannot
hold the caller.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import io
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

# Grid sites publish the CAs their servers use here, as Vac relied on.
GRID_CA_PATH = "/etc/grid-security/certificates"
DEFAULT_TIMEOUT_SECONDS = 30.0
_CHUNK_BYTES = 65536
_SCHEMES = ("http", "https")


class FetchFailed(Exception):
    """The GET did not give a usable body; the message says why."""


class FetchTimedOut(FetchFailed):
    """No answer, or no complete body, within the deadline."""


@dataclass(frozen=True)
class DownloadResult:
    """What `download` did: `modified` is False for 304 Not Modified (nothing written);
    `last_modified` is the Unix time of a 200's Last-Modified header, None without a valid one."""

    modified: bool
    last_modified: float | None = None


def fetch(url: str, *, timeout_seconds: float, max_bytes: int, user_agent: str,
          ca_paths: Iterable[str] = (GRID_CA_PATH,), accept: str | None = None) -> bytes:
    """The body of a 200 response to GET url, within `timeout_seconds` and `max_bytes`, or FetchFailed."""
    deadline = time.monotonic() + timeout_seconds
    within = f"within {timeout_seconds:g} seconds"
    headers = {} if accept is None else {"Accept": accept}
    with _open(url, headers, user_agent=user_agent, deadline=deadline, ca_paths=ca_paths,
               within=within) as response:
        _require_200(response, max_bytes)
        return b"".join(_body_chunks(response, max_bytes, deadline, within))


def download(url: str, destination: Path, *, deadline: float, max_bytes: int, user_agent: str,
             if_modified_since: float | None = None,
             ca_paths: Iterable[str] = (GRID_CA_PATH,)) -> DownloadResult:
    """Stream the body of a 200 response to GET url into `destination`, chunk by chunk.

    `deadline` is a time.monotonic() value. With `if_modified_since` (a Unix time) the GET
    is conditional and a 304 writes nothing. Any other outcome is FetchFailed (FetchTimedOut
    at the deadline), which may leave a partial `destination` for the caller to remove;
    OSError if `destination` cannot be written."""
    headers = {}
    if if_modified_since is not None:
        headers["If-Modified-Since"] = email.utils.formatdate(if_modified_since, usegmt=True)
    within = f"within the {max(0.0, deadline - time.monotonic()):.1f} seconds allowed"
    with _open(url, headers, user_agent=user_agent, deadline=deadline, ca_paths=ca_paths,
               within=within) as response:
        if response.status == 304 and if_modified_since is not None:
            return DownloadResult(modified=False)
        _require_200(response, max_bytes)
        last_modified = _unix_time(response.headers.get("Last-Modified"))
        with open(destination, "wb") as stream:
            for chunk in _body_chunks(response, max_bytes, deadline, within):
                stream.write(chunk)
        return DownloadResult(modified=True, last_modified=last_modified)


def _open(url: str, headers: dict, *, user_agent: str, deadline: float, ca_paths: Iterable[str],
          within: str):
    """The final response to GET url after redirects, whatever its status, or FetchFailed if none came."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as error:
        raise FetchFailed(f"bad URL: {error}") from None
    if scheme not in _SCHEMES:
        raise FetchFailed("only http:// and https:// URLs are fetched")
    request = urllib.request.Request(url, headers={"User-Agent": user_agent, **headers})
    try:
        return _opener(ca_paths, deadline).open(request, timeout=_time_left(deadline))
    except urllib.error.HTTPError as error:
        # A status other than 2xx is still an answer: the caller decides what it means.
        return error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise FetchTimedOut(f"no answer {within}") from None
        raise FetchFailed(f"cannot fetch: {error.reason}") from None
    except TimeoutError:
        raise FetchTimedOut(f"no answer {within}") from None
    except (OSError, http.client.HTTPException, ssl.SSLError) as error:
        raise FetchFailed(f"cannot fetch: {error!r}") from None
    except ValueError as error:
        raise FetchFailed(f"bad URL: {error}") from None


def _require_200(response, max_bytes: int) -> None:
    """FetchFailed unless the response is a 200 whose declared length (if any) is within the cap."""
    if response.status != 200:
        raise FetchFailed(f"HTTP status {response.status} {response.reason}")
    declared = _declared_length(response)
    if declared is not None and declared > max_bytes:
        raise FetchFailed(f"document is {declared} bytes, more than the limit of {max_bytes} bytes")


def _body_chunks(response, max_bytes: int, deadline: float, within: str) -> Iterator[bytes]:
    """The body as it arrives, never more than `max_bytes` of it, abandoned at the deadline."""
    declared = _declared_length(response)
    size = 0
    try:
        while True:
            # read1 returns after one receive, so the deadline check below also bounds a
            # trickle; each receive itself waits at most for the time left.
            chunk = response.read1(min(_CHUNK_BYTES, max_bytes + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(f"document is more than the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchTimedOut(f"document not complete {within}")
            yield chunk
    except TimeoutError:
        raise FetchTimedOut(f"document not complete {within}") from None
    except (OSError, http.client.HTTPException) as error:
        raise FetchFailed(f"connection broken after {size} bytes: {error!r}") from None
    # http.client ends a body of declared length quietly when the server closes early.
    if declared is not None and size < declared:
        raise FetchFailed(f"document ended after {size} of its {declared} bytes")


def _declared_length(response) -> int | None:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _unix_time(http_date: str | None) -> float | None:
    parsed = email.utils.parsedate_tz(http_date) if http_date else None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _time_left(deadline: float) -> float:
    # Never 0: a socket timeout of 0 would mean non-blocking, not "no time".
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline has passed")
    return left


class _DeadlineSocketReader(io.RawIOBase):
    """The raw stream under a response: each receive waits at most for the time left."""

    def __init__(self, sock, socket_file, deadline: float):
        super().__init__()
        self._sock, self._socket_file, self._deadline = sock, socket_file, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._socket_file.raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._socket_file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        # Headers, body and chunk framing are all read through this, so none can outlast the deadline.
        self.fp = io.BufferedReader(_DeadlineSocketReader(sock, self.fp, deadline))


class _DeadlineConnection:
    """Mixed into http.client's connections: connect within the time left, read through the deadline."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._vac_deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)

    def connect(self) -> None:
        self.timeout = _time_left(self._vac_deadline)
        super().connect()


class _HTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._vac_deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._vac_deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, deadline: float):
        super().__init__(context=context)
        self._vac_context, self._vac_deadline = context, deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._vac_deadline), req,
                            context=self._vac_context)


class _SameOrStrongerRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme
        new_scheme = urllib.parse.urlsplit(newurl).scheme
        if new_scheme not in _SCHEMES or (old_scheme, new_scheme) == ("https", "http"):
            raise urllib.error.URLError(f"redirect to {newurl!r} refused")
        new_request = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new_request is not None:
            # urllib would read the redirect's body into memory, whatever its size: drop it unread.
            fp.close()
        return new_request


def _opener(ca_paths: Iterable[str], deadline: float) -> urllib.request.OpenerDirector:
    # Built by hand so file:, ftp: and data: URLs have no handler at all.
    context = ssl.create_default_context()
    for path in ca_paths:
        try:
            if os.path.isdir(path):
                context.load_verify_locations(capath=path)
            elif os.path.isfile(path):
                context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as error:
            log.warning("cannot use CA certificates from %s: %s", path, error)
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _DeadlineHTTPHandler(deadline),
                    _DeadlineHTTPSHandler(context, deadline), _SameOrStrongerRedirect(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener
