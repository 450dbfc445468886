"""The host's figures a factory_status carries: disks, memory, load, kernel, boot time.

Read by the vacquery child (never the root) with small capped reads; a
figure that cannot be read is None, and is answered as Vac answers it (0).
The parsing is pure and tested on its own.
"""

from __future__ import annotations

import os
import time

# More than any /proc/meminfo or first line of /etc/issue holds.
MAX_READ_BYTES = 64 * 1024
# The figures are read again after this long; answers in between reuse them.
CACHE_SECONDS = 10.0
ISSUE_FILES = ("/etc/issue.vac", "/etc/issue")


def parse_meminfo(text: str) -> dict[str, int | None]:
    """swap_used_kb, swap_free_kb, mem_used_kb, mem_total_kb from /proc/meminfo's text (kB, as Vac sends them)."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name.strip()] = int(fields[0])

    def difference(total, free):
        return values[total] - values[free] if total in values and free in values else None

    return {"swap_used_kb": difference("SwapTotal", "SwapFree"), "swap_free_kb": values.get("SwapFree"),
            "mem_used_kb": difference("MemTotal", "MemFree"), "mem_total_kb": values.get("MemTotal")}


def parse_boot_time(uptime_text: str, now: float) -> int | None:
    """The boot time from /proc/uptime's text and the wall clock `now`."""
    try:
        return int(now - float(uptime_text.split()[0]))
    except (ValueError, IndexError):
        return None


def first_line(text: str) -> str | None:
    line = text.splitlines()[0].strip() if text.strip() else ""
    return line or None


def disk_figures(prefix: str, path: str) -> dict[str, int | None]:
    """{prefix}_disk_avail_kb and {prefix}_disk_avail_inodes of the filesystem holding `path`."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return {f"{prefix}_disk_avail_kb": None, f"{prefix}_disk_avail_inodes": None}
    return {f"{prefix}_disk_avail_kb": stats.f_bavail * stats.f_frsize // 1024,
            f"{prefix}_disk_avail_inodes": stats.f_favail}


def read_host_figures(state_dir: str, now: float) -> dict:
    """Every host figure of a factory_status, as FactoryStatus fields (None where unreadable)."""
    figures = {**disk_figures("root", "/"), **disk_figures("daemon", state_dir)}
    try:
        # Vac sends the 15-minute average.
        figures["load_average"] = os.getloadavg()[2]
    except OSError:
        figures["load_average"] = None
    figures["kernel_version"] = os.uname().release
    figures["os_issue"] = next((line for line in (first_line(_read(path) or "") for path in ISSUE_FILES) if line),
                               figures["kernel_version"])
    uptime = _read("/proc/uptime")
    figures["boot_time"] = parse_boot_time(uptime, now) if uptime is not None else None
    meminfo = _read("/proc/meminfo")
    figures.update(parse_meminfo(meminfo or ""))
    return figures


class HostFigures:
    """The host's figures, read at most once every CACHE_SECONDS."""

    def __init__(self, state_dir: str, clock=time.time, monotonic=time.monotonic):
        self.state_dir = state_dir
        self.clock = clock
        self.monotonic = monotonic
        self._figures = None
        self._read_at = None

    def get(self) -> dict:
        now = self.monotonic()
        if self._read_at is None or now - self._read_at >= CACHE_SECONDS:
            self._figures = read_host_figures(self.state_dir, self.clock())
            self._read_at = now
        return self._figures


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_READ_BYTES).decode(errors="replace")
    except OSError:
        return None
