"""Which propagation a bind mount of a host path may ask for, from the mount table.

Docker refuses an `rslave` bind whose source lies on a private mount ("is
not a shared or slave mount"). Under systemd every mount is shared, but a
host booted otherwise may keep /cvmfs private: binding its repositories
with `rslave` there would make every machine that needs one fail to start.
"""

from __future__ import annotations

import os

MOUNTINFO = "/proc/self/mountinfo"


def unescape(field: str) -> str:
    r"""Mount points in mountinfo escape space, tab, newline and backslash as \ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1:i + 4]
        if field[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point + "/")


def propagation_of(path: str, mountinfo: str) -> str | None:
    """'shared', 'slave' or 'private' for the mount holding absolute `path`; None if no line parses.

    The mount that holds a path is the one with the longest mount point above
    it; of mounts stacked on one mount point the last listed is on top.
    """
    best_point, best = None, None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        mount_point = unescape(fields[4])
        if not _contains(mount_point, path):
            continue
        if best_point is not None and len(mount_point) < len(best_point):
            continue
        optional = fields[6:fields.index("-", 6)]
        if any(tag.startswith("shared:") for tag in optional):
            best = "shared"
        elif any(tag.startswith("master:") for tag in optional):
            best = "slave"
        else:
            best = "private"
        best_point = mount_point
    return best


def host_propagation(path: os.PathLike | str) -> str | None:
    """propagation_of(path) on this host's mount table (None if it cannot be read).

    Only the mount table is read: `path` itself is never touched, so a hung
    automounted file system beneath it cannot block the caller.
    """
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as table:
            text = table.read()
    except OSError:
        return None
    return propagation_of(os.path.normpath(os.fspath(path)), text)
