"""One GET over http(s) with one set of rules: a deadline, a size cap, status 200 only,
and redirects only to the same or a stronger scheme (http to https, never https to http).

Both documents vac fetches from outside, Vacuum Pipes and user_data templates, come
through here; each caller words the failure for its own log.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterable

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


def fetch(url: str, *, timeout_seconds: float, max_bytes: int, user_agent: str,
          ca_paths: Iterable[str] = (GRID_CA_PATH,), accept: str | None = None) -> bytes:
    """The body of a 200 response to GET url, within the time and size bounds, or FetchFailed.

    Each socket operation times out after `timeout_seconds`, and the transfer is abandoned
    once that deadline has passed, so a server that drips bytes cannot hold the caller."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as error:
        raise FetchFailed(f"bad URL: {error}") from None
    if scheme not in _SCHEMES:
        raise FetchFailed("only http:// and https:// URLs are fetched")
    deadline = time.monotonic() + timeout_seconds
    headers = {"User-Agent": user_agent}
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        with _opener(ca_paths).open(request, timeout=timeout_seconds) as response:
            if response.status != 200:
                raise FetchFailed(f"HTTP status {response.status}, not 200")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise FetchFailed(
                    f"document is {length} bytes, more than the limit of {max_bytes} bytes")
            return _read_bounded(response, max_bytes, deadline, timeout_seconds)
    except urllib.error.HTTPError as error:
        error.close()
        raise FetchFailed(f"HTTP status {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise FetchTimedOut(f"no answer within {timeout_seconds:g} seconds") from None
        raise FetchFailed(f"cannot fetch: {error.reason}") from None
    except TimeoutError:
        raise FetchTimedOut(f"no answer within {timeout_seconds:g} seconds") from None
    except (OSError, http.client.HTTPException, ssl.SSLError) as error:
        raise FetchFailed(f"cannot fetch: {error!r}") from None
    except ValueError as error:
        raise FetchFailed(f"bad URL: {error}") from None


def _read_bounded(response, max_bytes, deadline, timeout_seconds) -> bytes:
    # read1 returns after one receive, so the deadline also bounds a slow trickle;
    # each receive is bounded by the socket timeout.
    chunks, size = [], 0
    while True:
        chunk = response.read1(min(_CHUNK_BYTES, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed(f"document is more than the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchTimedOut(f"document not complete within {timeout_seconds:g} seconds")


class _SameOrStrongerRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme
        new_scheme = urllib.parse.urlsplit(newurl).scheme
        if new_scheme not in _SCHEMES or (old_scheme, new_scheme) == ("https", "http"):
            raise urllib.error.URLError(f"redirect to {newurl!r} refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(ca_paths: Iterable[str]) -> urllib.request.OpenerDirector:
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
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(context=context), _SameOrStrongerRedirect(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener
