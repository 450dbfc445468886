"""The kernel's mount table, /proc/self/mountinfo (proc(5)), read into plain entries."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo, the parts vac uses."""
    mount_point: str
    fstype: str
    source: str
    # Propagation tags such as "shared:5" or "master:1"; none for a private mount.
    optional_fields: tuple[str, ...] = ()


def unescape(field: str) -> str:
    r"""Mountinfo escapes space, tab, newline and backslash in paths as \ooo."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def escape(path: str) -> str:
    """A path as mountinfo writes it (unescape's inverse)."""
    return "".join(f"\\{ord(char):03o}" if char in " \t\n\\" else char for char in path)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts listed in mountinfo text, in order (later ones on top); malformed lines skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        # Six fixed fields, optional ones, "-", then file system type and source.
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 3:
            continue
        entries.append(MountEntry(unescape(fields[4]), fields[separator + 1],
                                  unescape(fields[separator + 2]), tuple(fields[6:separator])))
    return entries


def _read_text(path: os.PathLike | str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as table:
        return table.read()


def read_mountinfo(path: os.PathLike | str = MOUNTINFO) -> list[MountEntry]:
    """This process's mount table; OSError if it cannot be read."""
    return parse_mountinfo(_read_text(path))


def mount_at(mount_point: Path, mountinfo_path: os.PathLike | str = MOUNTINFO) -> MountEntry | None:
    """The topmost mount at `mount_point`, or None if nothing is mounted there.

    A table that does not hold the path anywhere is not parsed: on a host
    running many containers it has hundreds of lines, and the answer is
    nearly always none.
    """
    wanted = os.path.realpath(mount_point)
    text = _read_text(mountinfo_path)
    if f" {escape(wanted)} " not in text:
        return None
    found = None
    for entry in parse_mountinfo(text):
        if entry.mount_point == wanted:
            found = entry  # later lines are mounted on top of earlier ones
    return found
