"""Logging set-up: one line per event naming the process role and pid."""

import logging
import os
import sys

_ROLE = {"role": "vacd"}


class _RoleFilter(logging.Filter):
    def filter(self, record):
        record.role = _ROLE["role"]
        return True


def configure(level="INFO", log_file=None):
    """Log to stderr (journald-friendly) or to `log_file`."""
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    # journald stamps lines itself; elsewhere a timestamp is needed.
    if os.environ.get("JOURNAL_STREAM") and not log_file:
        fmt = "%(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(_RoleFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def set_role(role):
    """Name this process's role (e.g. 'slot-03') in every later log line."""
    _ROLE["role"] = role
