"""What the root knows of the mjf child: the base URL it serves Machine/Job Features at (no I/O).

The child reports "serving" with its URL or "failing" with why. The URL goes
into the terms of every machine of an mjf_http machinetype; while there is
none, those machinetypes wait (the scheduler's MJF_HTTP_UNAVAILABLE).
"""

import ipaddress
import logging
import re

# Logged under the factory's name, like the other helpers' exchanges.
log = logging.getLogger("vac.supervisor.factory")

MJF = "mjf"
_URL_RE = re.compile(r"http://([0-9.]{7,15}):([0-9]{1,5})")
MAX_ERROR_CHARS = 300
NO_CHILD = ("no mjf child runs: vacd started with no mjf_http machinetype, vacuum pipe or "
            "mjf_http_listen; restart vacd")


def checked_url(url):
    """`url` if it is http://IPv4:PORT (what the child sends), else None."""
    if not isinstance(url, str):
        return None
    match = _URL_RE.fullmatch(url)
    if match is None or not 0 < int(match.group(2)) < 65536:
        return None
    try:
        ipaddress.IPv4Address(match.group(1))
    except ValueError:
        return None
    return url


class MjfHandshake:
    """The mjf child's base URL while it serves, and why it does not otherwise."""

    def __init__(self, child_runs):
        self.url = None
        self.why_not = "the mjf child has not reported yet" if child_runs else NO_CHILD

    def on_report(self, msg):
        url = checked_url(msg.detail.get("url")) if msg.state == "serving" else None
        if msg.state == "serving" and url is None:
            log.warning("mjf: reported serving at %r, which is not http://IPv4:PORT; ignored",
                        str(msg.detail.get("url"))[:MAX_ERROR_CHARS])
        if url != self.url:
            log.info("mjf: Machine/Job Features over HTTP %s", f"at {url}" if url else "not served")
        self.url = url
        error = msg.detail.get("error")
        self.why_not = None if url else (str(error)[:MAX_ERROR_CHARS] if error else f"mjf is {msg.state}")

    def on_exit(self):
        self.url = None
        self.why_not = "the mjf child is restarting"
