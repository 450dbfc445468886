"""Logging set-up: one line per event naming the process role and pid.

Under systemd, stderr is a stream to the journal: each line then starts
with its syslog priority (`<3>` for an error, sd-daemon(3)), so that
`journalctl -p err -u vacd` finds vacd's errors, and no timestamp, which
journald adds itself.
"""

import logging
import os
import sys

_ROLE = {"role": "vacd"}

# Python's levels as syslog priorities (sd-daemon(3)'s SD_ERR, SD_WARNING …).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


class _RoleFilter(logging.Filter):
    def filter(self, record):
        record.role = _ROLE["role"]
        return True


def syslog_priority(levelno):
    """The syslog priority of a Python logging level (pure)."""
    for level, priority in PRIORITIES:
        if levelno >= level:
            return priority
    return DEBUG_PRIORITY


def prefixed(text, priority):
    """Every line of `text` with the journal's priority prefix: a traceback stays an error throughout."""
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


class _JournalFormatter(logging.Formatter):
    def format(self, record):
        return prefixed(super().format(record), syslog_priority(record.levelno))


def stream_is_journal(stream=None, environ=None):
    """True when `stream` (stderr) is the journal stream systemd connected (JOURNAL_STREAM is its device:inode).

    Comparing with the stream itself, as sd-daemon(3) asks: a process started
    from the unit with stderr sent elsewhere inherits JOURNAL_STREAM too.
    """
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


def configure(level="INFO", log_file=None):
    """Log to stderr (to the journal, with priorities, under systemd) or to `log_file`."""
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if not log_file and stream_is_journal():
        handler.setFormatter(_JournalFormatter("%(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RoleFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def set_role(role):
    """Name this process's role (e.g. 'slot-03') in every later log line."""
    _ROLE["role"] = role
