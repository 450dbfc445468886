"""One machine's cgroups: create with limits, list, kill, watch, usage, remove.

A machine's cgroup is `path` (/vac/machine-<uuid>; under systemd
/vac.slice/vac-machine-<uuid>.scope) in every hierarchy used, with two
children, `launcher` and `payload`. The tracking hierarchy
(layout.tracking_of) lists, kills and watches the processes; the limits
hierarchies (the unified one where it has the controllers, else the v1 cpu,
cpuacct, memory and pids ones) hold the limits, set on `path` so that they
cover both children, and the usage. Every read is of a small file with a
size cap and every wait has a deadline: cgroupfs never blocks, but a process
can take its time to freeze or to die.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from vac.cgroups.layout import (
    LIMIT_CONTROLLERS_V2, MAX_PROC_CGROUP_BYTES, CgroupLayout, parse_proc_cgroup, tracking_of,
    unified_kill_offered)
from vac.machine.layout import is_machine_uuid
from vac.runtimes.change_wait import ChangeWait

CPU_PERIOD_US = 100_000
LAUNCHER = "launcher"
PAYLOAD = "payload"
MACHINE_PREFIX = "machine-"
# The name systemd-run --scope gives a machine's cgroup (docs/singularity.md).
SCOPE_PREFIX = "vac-machine-"
SCOPE_SUFFIX = ".scope"
V1_LIMIT_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")

# Settings and counters are a few lines; a pid list 8 bytes a process.
MAX_SMALL_FILE_BYTES = 64 * 1024
MAX_PROCS_BYTES = 4 * 1024 * 1024
# A wait on cgroup.events looks again this often at what it waits for: a change
# made just before the watch was set gives no event.
RECHECK_SECONDS = 1.0
# The share of a kill's time the freeze may take: tasks are then killed frozen
# or not, and a round that a fork outran is followed by another.
FREEZE_SHARE = 0.5
KILL_ROUND_SECONDS = 0.5
# Processes a v1 kill round holds a pidfd for (and waits on); any more are
# signalled by pid and waited for in the next round.
MAX_PIDFDS_PER_ROUND = 512


class CgroupError(OSError):
    """A cgroup could not be made, written, read, emptied or removed."""


@dataclass(frozen=True)
class Limits:
    """A machine's limits: processors (CFS quota), memory (no swap), processes."""
    cpus: int
    memory_bytes: int
    pids: int

    def __post_init__(self):
        if self.cpus < 1 or self.memory_bytes < 1 or self.pids < 1:
            raise ValueError(f"cgroup limits must be positive, got {self}")


def machine_cgroup_name(machine_uuid: str) -> str:
    """The name of a machine's cgroup under vac's base, without systemd."""
    return MACHINE_PREFIX + machine_uuid


def machine_uuid_of(name: str) -> str | None:
    """The machine UUID a cgroup name (machine-<uuid> or vac-machine-<uuid>.scope) stands for, else None."""
    if name.startswith(SCOPE_PREFIX) and name.endswith(SCOPE_SUFFIX):
        candidate = name[len(SCOPE_PREFIX):-len(SCOPE_SUFFIX)]
    elif name.startswith(MACHINE_PREFIX):
        candidate = name[len(MACHINE_PREFIX):]
    else:
        return None
    return candidate if is_machine_uuid(candidate) else None


def _checked_path(path: str) -> str:
    # The path is joined under each mount point: no way out of it, no aliases.
    if not path.startswith("/") or any(part in ("", ".", "..") for part in path[1:].split("/")):
        raise ValueError(f"cgroup path {path!r} is not a normalised absolute path below the root")
    return path


def _read(path: Path, limit: int = MAX_SMALL_FILE_BYTES) -> str:
    with open(path, encoding="ascii", errors="replace") as stream:
        return stream.read(limit)


def _write(path: Path, text: str, missing_ok: bool = False) -> None:
    """Write one value to a cgroup file (one write call: cgroupfs takes a value per write)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise CgroupError(errno.ENOENT, f"cannot write {text!r} to {path}: it does not exist") from None
    except OSError as error:
        raise CgroupError(error.errno, f"cannot open {path} to write {text!r}: {error.strerror}") from None
    try:
        os.write(descriptor, text.encode())
    except OSError as error:
        raise CgroupError(error.errno, f"cannot write {text!r} to {path}: {error.strerror}") from None
    finally:
        os.close(descriptor)


def _make_cgroup(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CgroupError(error.errno, f"cannot make cgroup {directory}: {error.strerror}") from None


def _keyed(text: str) -> dict[str, str]:
    """Lines of "key value" (cgroup.events, cpu.stat, memory.events) as a dict."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value.strip()
    return values


def _keyed_file(path: Path) -> dict[str, str]:
    """_keyed() of a file; empty if the file (or its cgroup) is gone."""
    try:
        return _keyed(_read(path))
    except FileNotFoundError:
        return {}


def _subtree(directory: Path) -> list[Path]:
    """`directory` and every cgroup below it, parents first; empty if it does not exist."""
    found = []
    # Cgroups come and go meanwhile: a vanished one is simply not listed.
    for current, _, _ in os.walk(directory, onerror=lambda error: None):
        found.append(Path(current))
    return found


def _procs(directory: Path) -> set[int]:
    try:
        return {int(line) for line in _read(directory / "cgroup.procs", MAX_PROCS_BYTES).split()}
    except FileNotFoundError:
        return set()


def _subtree_pids(directory: Path) -> set[int]:
    pids = set()
    for cgroup in _subtree(directory):
        pids |= _procs(cgroup)
    return pids


def _kill_pid(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_until(condition: Callable[[], bool], deadline: float, events: Path) -> bool:
    """Until `condition` holds or the monotonic `deadline` passes; True if it held.

    The wait is on inotify on `events` (a unified cgroup's cgroup.events, which
    the kernel changes when the cgroup empties or freezes).
    """
    with ChangeWait((events,)) as watch:
        while True:
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            watch.wait(min(remaining, RECHECK_SECONDS))


def _open_pidfds(pids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(a pidfd for each process still there, the pids none could be opened for: out of descriptors).

    A signal through a pidfd never reaches a process that reused the pid.
    """
    pidfds, unopened = [], []
    for pid in pids:
        try:
            pidfds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
        except OSError:
            unopened.append(pid)
    return pidfds, unopened


def _ended(pidfds: Iterable[int], timeout: float) -> set[int]:
    """Those of `pidfds` whose process has ended (a pidfd is readable once it has), waiting up to `timeout` s for one."""
    poller = select.poll()
    for pidfd in pidfds:
        poller.register(pidfd, select.POLLIN)
    return {fd for fd, _ in poller.poll(max(timeout, 0) * 1000)}


def _wait_for_ends(pidfds: list[int], deadline: float) -> None:
    """Until every process of `pidfds` has ended or the monotonic `deadline` passes."""
    running = list(pidfds)
    while running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ended = _ended(running, remaining)
        running = [fd for fd in running if fd not in ended]


class MachineCgroup:
    """The cgroups of one machine, at `path` below each hierarchy's root."""

    def __init__(self, layout: CgroupLayout, path: str, tracking: str = "auto"):
        self.layout = layout
        self.path = _checked_path(path)
        self.tracking = tracking_of(layout, tracking)
        tracking_root = layout.unified if self.tracking == "unified" else layout.v1["freezer"]
        self._relative = self.path.lstrip("/")
        self._tracking_dir = tracking_root / self._relative
        self._limits_v2 = layout.has_controllers_v2()
        if self._limits_v2:
            limit_roots = [layout.unified]
        else:
            limit_roots = [layout.v1[name] for name in V1_LIMIT_CONTROLLERS if name in layout.v1]
        # Co-mounted controllers (cpu,cpuacct) share one mount: each root once.
        self._roots = list(dict.fromkeys([tracking_root, *limit_roots]))

    def __repr__(self):
        return f"MachineCgroup({self.path!r}, tracking={self.tracking!r})"

    # Layout.

    def mkdirs(self) -> list[Path]:
        """The directories create() makes, parents first (the launcher makes them under systemd)."""
        return [root / self._relative / child
                for root in self._roots for child in ("", LAUNCHER, PAYLOAD)]

    def launcher_procs(self) -> list[Path]:
        """Every cgroup.procs the launcher writes its own pid to."""
        return [root / self._relative / LAUNCHER / "cgroup.procs" for root in self._roots]

    def payload_procs(self) -> list[Path]:
        """Every cgroup.procs the payload child writes its own pid to before it drops root."""
        return [root / self._relative / PAYLOAD / "cgroup.procs" for root in self._roots]

    def events_path(self) -> Path | None:
        """The payload's cgroup.events to watch with inotify; None for freezer tracking (poll)."""
        return self._tracking_dir / PAYLOAD / "cgroup.events" if self.tracking == "unified" else None

    # Making.

    def create(self, limits: Limits | None) -> None:
        """Make the cgroups (idempotent) and write `limits` on the machine's (None: leave them alone)."""
        if limits is not None:
            self._check_limit_hierarchies()
            if self._limits_v2:
                self._enable_controllers()
        for directory in self.mkdirs():
            _make_cgroup(directory)
        if limits is not None:
            if self._limits_v2:
                self._write_limits_v2(limits)
            else:
                self._write_limits_v1(limits)

    def _check_limit_hierarchies(self) -> None:
        if self._limits_v2:
            return
        missing = [name for name in V1_LIMIT_CONTROLLERS if name not in self.layout.v1]
        if missing:
            raise CgroupError(errno.ENOENT, f"cannot set a machine's limits: the {', '.join(missing)} "
                                            f"controller is in neither the unified nor a v1 hierarchy")

    def _enable_controllers(self) -> None:
        # Limits on the machine's cgroup need its parent to hand the controllers
        # down, and so on up to the root. A non-root cgroup that holds processes
        # refuses (EBUSY): vac's base must be a cgroup of its own.
        directory = self.layout.unified
        for part in [""] + self._relative.split("/")[:-1]:
            directory = directory / part if part else directory
            _make_cgroup(directory)
            try:
                enabled = set(_read(directory / "cgroup.subtree_control").split())
            except OSError as error:
                raise CgroupError(error.errno, f"cannot read {directory}/cgroup.subtree_control: "
                                               f"{error.strerror}") from None
            wanted = sorted(LIMIT_CONTROLLERS_V2 - enabled)
            if wanted:
                _write(directory / "cgroup.subtree_control", " ".join("+" + name for name in wanted))

    def _write_limits_v2(self, limits: Limits) -> None:
        directory = self.layout.unified / self._relative
        _write(directory / "cpu.max", f"{limits.cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")
        _write(directory / "memory.max", str(limits.memory_bytes))
        # Absent without swap accounting: then there is no swap to forbid.
        _write(directory / "memory.swap.max", "0", missing_ok=True)
        _write(directory / "pids.max", str(limits.pids))

    def _write_limits_v1(self, limits: Limits) -> None:
        cpu = self.layout.v1["cpu"] / self._relative
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(limits.cpus * CPU_PERIOD_US))
        memory = self.layout.v1["memory"] / self._relative
        # memory+swap may never be below memory: lift it, set memory, then match it (no swap).
        _write(memory / "memory.memsw.limit_in_bytes", "-1", missing_ok=True)
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes), missing_ok=True)
        _write(self.layout.v1["pids"] / self._relative / "pids.max", str(limits.pids))

    # Looking.

    def exists(self) -> bool:
        """True if the machine's cgroup exists in the tracking hierarchy."""
        return self._tracking_dir.is_dir()

    def pids(self) -> set[int]:
        """Every process of the machine: launcher, payload and any cgroup made below them."""
        return _subtree_pids(self._tracking_dir)

    def payload_pids(self) -> set[int]:
        """Every process of the payload, in its cgroup or below (Apptainer may make its own)."""
        return _subtree_pids(self._tracking_dir / PAYLOAD)

    def populated(self) -> bool:
        """True while the payload has any process."""
        return _is_populated(self._tracking_dir / PAYLOAD, self.tracking)

    # Signalling.

    def signal_payload(self, signum: int) -> int:
        """Send `signum` to every payload process; how many were there to receive it."""
        return sum(_kill_pid(pid, signum) for pid in self.payload_pids())

    def kill_payload(self, timeout: float = 5.0) -> None:
        """Kill every payload process and wait for them to be gone; CgroupError if some outlive `timeout`."""
        self._kill(self._tracking_dir / PAYLOAD, timeout)

    def kill_all(self, timeout: float = 5.0) -> None:
        """kill_payload() for the whole machine: payload and launcher."""
        self._kill(self._tracking_dir, timeout)

    def _kill(self, directory: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not directory.is_dir():
            return

        def empty():
            return not _is_populated(directory, self.tracking)

        # Without cgroup.kill (a v2 kernel before 5.14) the unified hierarchy's freezer is used.
        if self.tracking == "unified" and unified_kill_offered(self.layout.unified):
            # The kernel kills the whole subtree, forks in flight included.
            _write(directory / "cgroup.kill", "1", missing_ok=True)
            if _wait_until(empty, deadline, directory / "cgroup.events"):
                return
        elif self.tracking == "freezer":
            if self._kill_v1(directory, deadline):
                return
        else:
            # Signals race with forks; a frozen cgroup does not fork. Repeat in
            # case a freeze timed out and a fork slipped through.
            while True:
                self._freeze_and_kill(directory, deadline)
                round_end = min(deadline, time.monotonic() + KILL_ROUND_SECONDS)
                if _wait_until(empty, round_end, directory / "cgroup.events"):
                    return
                if time.monotonic() >= deadline:
                    break
        left = sorted(_subtree_pids(directory))
        raise CgroupError(errno.EBUSY, f"cgroup {directory} still holds processes {left[:20]} "
                                       f"{timeout:g} s after they were killed")

    def _kill_v1(self, directory: Path, deadline: float) -> bool:
        """The v1 freezer's kill, in rounds: freeze, SIGKILL every listed process through a pidfd,
        thaw, then wait for those pidfds; True once no listed process is left running.

        v1 files give no event, neither for the end of a freeze nor for an
        empty cgroup; a pidfd is readable once its process has ended. The
        freeze is not waited for: a process that forked before it froze or
        died leaves a child that the next round lists and kills.
        """
        control = directory / "freezer.state"
        while True:
            pids = sorted(_subtree_pids(directory))
            pidfds, unopened = _open_pidfds(pids[:MAX_PIDFDS_PER_ROUND])
            beyond = unopened + pids[MAX_PIDFDS_PER_ROUND:]
            try:
                ended = _ended(pidfds, 0)
                running = [fd for fd in pidfds if fd not in ended]
                if not running and not beyond:
                    # Nothing listed is alive: exited processes are the kernel's to unlist.
                    return True
                if time.monotonic() >= deadline:
                    return False
                _write(control, "FROZEN", missing_ok=True)
                try:
                    for pidfd in running:
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    for pid in beyond:
                        _kill_pid(pid, signal.SIGKILL)
                finally:
                    # A frozen task dies of SIGKILL only once thawed; never leave it frozen.
                    _write(control, "THAWED", missing_ok=True)
                _wait_for_ends(running, deadline)
            finally:
                for pidfd in pidfds:
                    os.close(pidfd)

    def _freeze_and_kill(self, directory: Path, deadline: float) -> None:
        """A v2 kernel before 5.14 (no cgroup.kill): freeze with the cgroup v2 freezer, SIGKILL, thaw."""
        control = directory / "cgroup.freeze"

        def is_frozen():
            return _keyed_file(directory / "cgroup.events").get("frozen", "1") == "1"
        _write(control, "1", missing_ok=True)
        try:
            now = time.monotonic()
            _wait_until(is_frozen, now + max(deadline - now, 0) * FREEZE_SHARE, directory / "cgroup.events")
            for pid in _subtree_pids(directory):
                _kill_pid(pid, signal.SIGKILL)
        finally:
            # A frozen task dies of SIGKILL only once thawed; never leave it frozen.
            _write(control, "0", missing_ok=True)

    # Accounting.

    def usage(self) -> tuple[float, int]:
        """(CPU seconds, peak memory bytes) of the whole machine; CgroupError if unreadable."""
        try:
            if self._limits_v2:
                directory = self.layout.unified / self._relative
                cpu_seconds = int(_keyed(_read(directory / "cpu.stat"))["usage_usec"]) / 1e6
                # memory.peak appeared in 5.19; before, the caller keeps the highest current seen.
                peak = directory / "memory.peak"
                memory = int(_read(peak if peak.exists() else directory / "memory.current"))
            else:
                cpu_seconds = int(_read(self.layout.v1["cpuacct"] / self._relative / "cpuacct.usage")) / 1e9
                memory = int(_read(self.layout.v1["memory"] / self._relative / "memory.max_usage_in_bytes"))
        except (OSError, KeyError, ValueError) as error:
            raise CgroupError(getattr(error, "errno", None) or errno.EIO,
                              f"cannot read the usage of cgroup {self.path}: {error}") from None
        return cpu_seconds, memory

    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of the machine (where the kernel says)."""
        if self._limits_v2:
            top, name = self.layout.unified / self._relative, "memory.events"
        elif "memory" in self.layout.v1:
            # memory.oom_control counts kills from 4.13 on; older kernels say nothing.
            top, name = self.layout.v1["memory"] / self._relative, "memory.oom_control"
        else:
            return False
        # The kill is counted where the limit was hit, or (v1) where the victim was.
        return any(int(_keyed_file(cgroup / name).get("oom_kill", "0") or 0) > 0 for cgroup in _subtree(top))

    # Removing.

    def remove(self) -> None:
        """Remove the machine's cgroups, deepest first, in every hierarchy; absent ones are fine.

        CgroupError if a cgroup still holds processes (EBUSY) or cannot be removed.
        """
        for root in self._roots:
            for cgroup in reversed(_subtree(root / self._relative)):
                try:
                    cgroup.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as error:
                    raise CgroupError(error.errno, f"cannot remove cgroup {cgroup}: {error.strerror}") from None


def _is_populated(directory: Path, tracking: str) -> bool:
    if tracking == "unified":
        return _keyed_file(directory / "cgroup.events").get("populated") == "1"
    return bool(_subtree_pids(directory))


def _tracking_root(layout: CgroupLayout, tracking: str) -> Path:
    return layout.unified if tracking_of(layout, tracking) == "unified" else layout.v1["freezer"]


def machine_cgroup_names(layout: CgroupLayout, base: str, tracking: str = "auto", scopes: bool = False) -> list[str]:
    """Names of the machine-<uuid> cgroups directly under `base` in the tracking hierarchy, sorted.

    scopes: also systemd's vac-machine-<uuid>.scope ones (which systemd removes itself).
    """
    directory = _tracking_root(layout, tracking) / base.strip("/")
    try:
        with os.scandir(directory) as entries:
            return sorted(entry.name for entry in entries
                          if machine_uuid_of(entry.name) is not None
                          and (scopes or entry.name.startswith(MACHINE_PREFIX))
                          and entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def cgroup_of(pid: int, layout: CgroupLayout, tracking: str = "auto") -> str | None:
    """`pid`'s cgroup path in the tracking hierarchy (from /proc/PID/cgroup); None if the process is gone."""
    key = "" if tracking_of(layout, tracking) == "unified" else "freezer"
    try:
        text = _read(Path(f"/proc/{pid}/cgroup"), MAX_PROC_CGROUP_BYTES)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_proc_cgroup(text).get(key)
