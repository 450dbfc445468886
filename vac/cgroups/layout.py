"""Which cgroup layout this host has (v2, hybrid or v1) and where each hierarchy is mounted.

Read from /proc/self/mountinfo (the cgroup and cgroup2 mounts, with the
controllers each v1 mount holds in its super options) and /proc/self/cgroup
(this process's place in each hierarchy). Only mounts of a hierarchy's root
are used: a cgroup path from /proc/PID/cgroup is then a path under the mount
point. The tracking hierarchy (docs/singularity.md) is chosen here too,
because it depends on the host only: the unified one where the kernel offers
cgroup.kill (5.14 and later), else the v1 freezer.
"""

from __future__ import annotations

import functools
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from vac.mountinfo import MOUNTINFO, parse_mountinfo, unescape

PROC_SELF_CGROUP = "/proc/self/cgroup"
# Mount tables of hosts running many containers run to megabytes; more is not a mount table.
MAX_MOUNTINFO_BYTES = 16 * 1024 * 1024
MAX_PROC_CGROUP_BYTES = 64 * 1024
MAX_CONTROLLERS_BYTES = 4096

# What a machine's limits need from the unified hierarchy.
LIMIT_CONTROLLERS_V2 = frozenset({"cpu", "memory", "pids"})
# Named v1 hierarchies (name=systemd) hold no controller: they do not make a host hybrid.
NAMED_HIERARCHY_PREFIX = "name="

TRACKING_MODES = ("auto", "unified", "freezer")
# cgroup.kill appeared in Linux 5.14.
KILL_RELEASE = (5, 14)
# Enough children of the unified root to find one with cgroup.kill, if the kernel has it.
KILL_PROBE_ENTRIES = 64


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup hierarchies: kind, mount points, and this process's cgroups."""
    kind: str                           # "v2", "hybrid" or "v1"
    unified: Path | None                # the cgroup2 mount point
    v1: Mapping[str, Path]              # controller (or "name=x") -> its hierarchy's mount point
    own: Mapping[str, str]              # "" (unified) or controller -> this process's cgroup path
    unified_controllers: frozenset[str] = field(default=frozenset())

    def has_controllers_v2(self) -> bool:
        """True when the unified hierarchy offers memory, cpu and pids: limits go there."""
        return self.unified is not None and LIMIT_CONTROLLERS_V2 <= self.unified_controllers


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as {"": unified path, controller: path, "name=x": path}."""
    places = {}
    for line in text.splitlines():
        # "hierarchy-id:controller-list:path"; the path itself may hold colons.
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        _, controllers, path = parts
        if not controllers:
            places[""] = path
        for controller in controllers.split(","):
            if controller:
                places[controller] = path
    return places


def parse_layout(mountinfo_text: str, proc_cgroup_text: str, unified_controllers: str = "") -> CgroupLayout:
    """The layout these texts describe; `unified_controllers` is the cgroup2 root's cgroup.controllers."""
    own = parse_proc_cgroup(proc_cgroup_text)
    unified = None
    v1: dict[str, Path] = {}
    for line in mountinfo_text.splitlines():
        entries = parse_mountinfo(line)
        if not entries or entries[0].fstype not in ("cgroup", "cgroup2"):
            continue
        entry, fields = entries[0], line.split()
        # A bind mount of a subtree (root other than "/") would shift every path: unusable.
        if unescape(fields[3]) != "/":
            continue
        mount_point = Path(entry.mount_point)
        if entry.fstype == "cgroup2":
            unified = unified or mount_point
            continue
        # The super options (last field) name the controllers among flags such as
        # rw, seclabel, xattr and release_agent=...; the hierarchies /proc/self/cgroup
        # lists tell which options are controllers.
        for option in fields[-1].split(","):
            if option and option in own and option not in v1:
                v1[option] = mount_point
    if unified is None and not v1:
        raise ValueError("no cgroup hierarchy is mounted")
    controllers_v1 = [name for name in v1 if not name.startswith(NAMED_HIERARCHY_PREFIX)]
    kind = "v1" if unified is None else ("hybrid" if controllers_v1 else "v2")
    return CgroupLayout(kind=kind, unified=unified, v1=types.MappingProxyType(v1),
                        own=types.MappingProxyType(own),
                        unified_controllers=frozenset(unified_controllers.split()) if unified else frozenset())


def _read_bounded(path: os.PathLike | str, limit: int) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as stream:
        return stream.read(limit)


def detect() -> CgroupLayout:
    """This host's layout; OSError if /proc cannot be read, ValueError if no cgroup is mounted."""
    mountinfo_text = _read_bounded(MOUNTINFO, MAX_MOUNTINFO_BYTES)
    proc_cgroup_text = _read_bounded(PROC_SELF_CGROUP, MAX_PROC_CGROUP_BYTES)
    layout = parse_layout(mountinfo_text, proc_cgroup_text)
    if layout.unified is None:
        return layout
    try:
        controllers = _read_bounded(layout.unified / "cgroup.controllers", MAX_CONTROLLERS_BYTES)
    except FileNotFoundError:
        return layout
    return parse_layout(mountinfo_text, proc_cgroup_text, controllers)


def release_offers_kill(release: str) -> bool:
    """True if a kernel release string ("6.1.0-18-amd64") is 5.14 or later."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= KILL_RELEASE


@functools.lru_cache(maxsize=8)
def unified_kill_offered(unified: Path) -> bool:
    """True if the kernel offers cgroup.kill in the unified hierarchy mounted at `unified`.

    The root cgroup never has the file, so a child is looked at; a hierarchy
    with no child yet is judged by the kernel release. Cached: it cannot change.
    """
    try:
        with os.scandir(unified) as entries:
            for count, entry in enumerate(entries):
                if count >= KILL_PROBE_ENTRIES:
                    break
                if entry.is_dir(follow_symlinks=False):
                    return os.path.exists(os.path.join(entry.path, "cgroup.kill"))
    except OSError:
        pass
    return release_offers_kill(os.uname().release)


def choose_tracking(layout: CgroupLayout, requested: str, kill_offered: bool) -> str:
    """The tracking hierarchy, "unified" or "freezer", for a requested mode (pure).

    "auto": unified where cgroup.kill exists (a race-free kill of a whole
    subtree); else the v1 freezer; else unified all the same (a v2-only host
    before 5.14, killed by freezing with cgroup.freeze).
    """
    if requested not in TRACKING_MODES:
        raise ValueError(f"cgroup tracking must be one of {', '.join(TRACKING_MODES)}, not {requested!r}")
    has_freezer = "freezer" in layout.v1
    if requested == "unified" or (requested == "auto" and layout.unified is not None
                                  and (kill_offered or not has_freezer)):
        if layout.unified is None:
            raise ValueError("cgroup tracking 'unified' asked for, but no cgroup2 hierarchy is mounted")
        return "unified"
    if not has_freezer:
        raise ValueError("cgroup tracking 'freezer' needs the v1 freezer hierarchy, which is not mounted")
    return "freezer"


def tracking_of(layout: CgroupLayout, requested: str = "auto") -> str:
    """choose_tracking() with this kernel's answer to whether cgroup.kill exists."""
    if requested == "freezer" or layout.unified is None:
        return choose_tracking(layout, requested, False)
    return choose_tracking(layout, requested, unified_kill_offered(layout.unified))
