"""Machine/Job Features: every key of INTERFACES.md §4, computed purely, one file per key."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from vac.machine.atomicfile import write_atomic
from vac.machine.layout import FEATURES_FILE_MODE, MachinePaths

log = logging.getLogger(__name__)

MIB = 1048576
# The notice a running machine gets when its shutdown time is lowered, announced
# as grace_secs (machinefeatures) and grace_secs_job (jobfeatures), as
# HSF-TN-2016-02 requires where shutdown times can change. 10 minutes lets a
# pilot that re-reads MJF between payloads stop taking work and its payload
# upload its outputs, while a site's global shutdown_time still holds within
# minutes (vac drain --deadline or vac stop-machine end machines sooner).
SHUTDOWN_NOTICE_SECONDS = 600
_OPTION_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class MjfInputs:
    """What the MJF values are computed from: the placement and the factory settings."""
    machine_uuid: str
    processors: int
    start_time: int
    shutdown_time: int
    mb_per_processor: int
    hs06_per_processor: float | None = None
    scratch_bytes: int | None = None
    max_swap_bytes: int | None = None
    notice_seconds: int | None = None    # grace_secs and grace_secs_job
    machinefeatures_options: Mapping[str, str] = field(default_factory=dict)


def _number(value: float) -> str:
    # Vac wrote floats with str(): "40.0", never "40" or "4e+01".
    return str(float(value))


def machinefeatures(inputs: MjfInputs) -> dict[str, str]:
    """Every machinefeatures key and its value."""
    # Site options first, so the computed keys below always win: a container must
    # be able to trust total_cpu and shutdowntime whatever vac.conf says.
    values: dict[str, str] = {}
    for name, value in inputs.machinefeatures_options.items():
        if not _OPTION_NAME.fullmatch(name):
            raise ValueError(f"machinefeatures_option_{name}: the key name may only contain a-z 0-9 _")
        values[name] = value
    processors = str(inputs.processors)
    values.update({
        "total_cpu": processors,
        "shutdowntime": str(int(inputs.shutdown_time)),
        # Deprecated MJF keys some old images still read.
        "phys_cores": processors,
        "log_cores": processors,
        "jobslots": "1",
    })
    if inputs.hs06_per_processor is not None:
        values["hs06"] = _number(inputs.hs06_per_processor * inputs.processors)
    if inputs.notice_seconds is not None:
        values["grace_secs"] = str(int(inputs.notice_seconds))
    return values


def jobfeatures(inputs: MjfInputs) -> dict[str, str]:
    """Every jobfeatures key and its value."""
    processors = inputs.processors
    # A machine placed in a superslot whose time has run out gets 0, not a negative limit.
    wall_limit = max(0, int(inputs.shutdown_time) - int(inputs.start_time))
    cpu_limit = wall_limit * processors
    rss_bytes = inputs.mb_per_processor * processors * MIB
    values = {
        "allocated_cpu": str(processors),
        "wall_limit_secs": str(wall_limit),
        "cpu_limit_secs": str(cpu_limit),
        "jobstart_secs": str(int(inputs.start_time)),
        "shutdowntime_job": str(int(inputs.shutdown_time)),
        "max_rss_bytes": str(rss_bytes),
        "job_id": inputs.machine_uuid,
        # Deprecated keys for old images.
        "allocated_CPU": str(processors),
        "cpufactor_lrms": "1.0",
        "cpu_limit_secs_lrms": str(cpu_limit),
        "wall_limit_secs_lrms": str(wall_limit),
        # The old jobfeatures wanted 10^6-byte megabytes, not MiB.
        "mem_limit_MB": str(rss_bytes // 1000000),
    }
    if inputs.hs06_per_processor is not None:
        values["hs06_job"] = _number(inputs.hs06_per_processor * processors)
    if inputs.max_swap_bytes is not None:
        values["max_swap_bytes"] = str(inputs.max_swap_bytes)
    if inputs.scratch_bytes is not None:
        values["scratch_limit_bytes"] = str(inputs.scratch_bytes)
    if inputs.notice_seconds is not None:
        values["grace_secs_job"] = str(int(inputs.notice_seconds))
    return values


_OPEN_KEY = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_keys(directory: Path, values: Mapping[str, str]) -> None:
    # Written in place, neither through a temporary file nor synced: nothing
    # reads them before the machine starts (its container does not exist yet,
    # and only it knows its URL), and they are written afresh for each
    # machine, which does not outlive a crash of the host. A temporary file,
    # a rename and an fsync for each of some twenty keys was a good part of
    # a start's CPU.
    for key, value in sorted(values.items()):
        fd = os.open(directory / key, _OPEN_KEY, FEATURES_FILE_MODE)
        try:
            os.fchmod(fd, FEATURES_FILE_MODE)  # the umask must not decide what containers may read
            view = memoryview(value.encode())
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def write_mjf(paths: MachinePaths, inputs: MjfInputs) -> None:
    """Write every machinefeatures and jobfeatures key file (value as text, no newline), before the machine starts.

    Later changes, read by a running machine, go through rewrite_shutdown_time's atomic writes.
    """
    _write_keys(paths.machinefeatures, machinefeatures(inputs))
    _write_keys(paths.jobfeatures, jobfeatures(inputs))


def lowered_shutdown_time(current: int, global_shutdown_time: int | None, now: float,
                          notice_seconds: int = SHUTDOWN_NOTICE_SECONDS) -> int | None:
    """The new shutdown time of a running machine if a global `shutdown_time` lowers it, else None.

    Never earlier than `now` + the announced notice (grace_secs): a payload was
    promised that much warning of a changed shutdown time.
    """
    if global_shutdown_time is None:
        return None
    new_time = max(int(global_shutdown_time), math.ceil(now) + int(notice_seconds))
    return new_time if new_time < current else None


def read_shutdown_time(paths: MachinePaths) -> int | None:
    """The machine's current shutdown time from jobfeatures/shutdowntime_job, None if unreadable."""
    try:
        return int((paths.jobfeatures / "shutdowntime_job").read_text().strip())
    except (OSError, ValueError):
        return None


def rewrite_shutdown_time(paths: MachinePaths, new_time: int) -> int | None:
    """Lower `shutdowntime` and `shutdowntime_job` in place to `new_time` if it is earlier.

    `new_time` was decided by lowered_shutdown_time (with its notice) when the
    lowering came; a retry after a failed write writes the same time.

    Returns the new shutdown time, or None if nothing changed. Only these two keys
    change (INTERFACES.md §4): the MJF note defines them as the moving deadline that
    payloads re-read, while wall_limit_secs/cpu_limit_secs (and their _lrms copies)
    describe the allocation made at jobstart_secs, which payloads read once and which
    must stay consistent with each other and with the accounting of that allocation.
    """
    current = read_shutdown_time(paths)
    if current is None:
        log.warning("machine %s: no readable shutdowntime_job in %s; not rewriting it",
                    paths.machine_uuid, paths.jobfeatures)
        return None
    if new_time >= current:
        return None
    value = str(int(new_time)).encode()
    # Job deadline first, so that even between the two writes shutdowntime_job
    # never lies after shutdowntime.
    write_atomic(paths.jobfeatures / "shutdowntime_job", value, FEATURES_FILE_MODE, temp_dir=paths.root)
    write_atomic(paths.machinefeatures / "shutdowntime", value, FEATURES_FILE_MODE, temp_dir=paths.root)
    log.info("machine %s: shutdown time lowered from %d to %d by the global shutdown_time",
             paths.machine_uuid, current, new_time)
    return new_time
