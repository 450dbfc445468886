"""Which propagation a bind mount of a host path may ask for, from the mount table.

Docker refuses an `rslave` bind whose source lies on a private mount ("is
not a shared or slave mount"). Under systemd every mount is shared, but a
host booted otherwise may keep /cvmfs private: binding its repositories
with `rslave` there would make every machine that needs one fail to start.
"""

from __future__ import annotations

import os

from vac.mountinfo import MountEntry, parse_mountinfo, read_mountinfo


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point + "/")


def propagation_of(path: str, mountinfo: str) -> str | None:
    """'shared', 'slave' or 'private' for the mount holding absolute `path`; None if no line parses."""
    return propagation_among(path, parse_mountinfo(mountinfo))


def propagation_among(path: str, entries: list[MountEntry]) -> str | None:
    """propagation_of over parsed entries.

    The mount that holds a path is the one with the longest mount point above
    it; of mounts stacked on one mount point the last listed is on top.
    """
    best_point, best = None, None
    for entry in entries:
        if not _contains(entry.mount_point, path):
            continue
        if best_point is not None and len(entry.mount_point) < len(best_point):
            continue
        if any(tag.startswith("shared:") for tag in entry.optional_fields):
            best = "shared"
        elif any(tag.startswith("master:") for tag in entry.optional_fields):
            best = "slave"
        else:
            best = "private"
        best_point = entry.mount_point
    return best


def host_propagation(path: os.PathLike | str) -> str | None:
    """propagation_of(path) on this host's mount table (None if it cannot be read).

    Only the mount table is read: `path` itself is never touched, so a hung
    automounted file system beneath it cannot block the caller.
    """
    try:
        entries = read_mountinfo()
    except OSError:
        return None
    return propagation_among(os.path.normpath(os.fspath(path)), entries)
