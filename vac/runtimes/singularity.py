"""The Singularity runtime: the runtime protocol for machines run by Apptainer/Singularity.

A machine's "container" is its launcher, its cgroups and the files under its
machine directory's `singularity/` folder (docs/singularity.md): the handle
is rebuilt from those files, so a worker (or a whole vacd) started again
finds every machine its predecessor started, and one that ended while nobody
watched is seen ended, with the exit status its launcher recorded.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from vac import __version__
from vac.cgroups.layout import CgroupLayout, detect
from vac.cgroups.machine import CgroupError, Limits, MachineCgroup
from vac.machine.atomicfile import write_atomic
from vac.machine.layout import (PRIVATE_FILE_MODE, MachinePaths, indexed_machines, is_machine_uuid,
                                iter_machine_directories)
from vac.runtimes import image_cache
from vac.runtimes.change_wait import ChangeWait
from vac.runtimes.base import (DEFAULT_ENGINE_TIMEOUT_SECONDS, SINGULARITY_ID_PREFIX, ContainerGone, ContainerHandle,
                               ContainerNotStarted, ContainerRequest, ContainerState, ExitInfo,
                               ImageMissing, PayloadPaths, RuntimeUnavailable, StartFailed, Usage, request_labels)
from vac.runtimes.singularity_command import (PAYLOAD_PATHS, Account, apptainer_argv, find_executable,
                                              launcher_argv, launcher_plan, systemd_cgroup_path, systemd_run_argv,
                                              vac_cgroup_path)
from vac.vocabulary.labels import LABEL_FACTORY, LABEL_SLOT

log = logging.getLogger(__name__)

FOLDER_NAME = "singularity"
CONTAINER_FILE = "container.json"
PLAN_FILE = "plan.json"
STARTED_FILE = "started"
LAUNCHER_PID_FILE = "launcher.pid"
EXIT_STATUS_FILE = "exit_status"
REMOVED_FILE = "removed"
MAX_FILE_BYTES = 256 * 1024
LOG_LIMIT_BYTES = 16 * 1024 * 1024
# The code of a machine whose end nobody recorded (its launcher killed too,
# or the host rebooted): as for Docker's lost exits, its end is estimated.
UNRECORDED_EXIT_CODE = 255
# How long after its payload's processes are gone a live launcher may take to record the status.
STATUS_SETTLE_SECONDS = 5.0
# How often a wait looks again at what inotify cannot report (a launcher killed, freezer tracking).
WAIT_POLL_SECONDS = 2.0
CGROUP_MODES = ("systemd", "vac")


@dataclass(frozen=True)
class SingularitySettings:
    """The factory's Singularity settings as the slot worker and the reaper get them (plain data)."""
    command: str | None = None
    cgroups: str = "auto"
    accounts: tuple[str, ...] = ()
    sweep_seconds: float = 2.0

    @classmethod
    def from_plain(cls, plain: dict | None) -> SingularitySettings:
        plain = plain or {}
        return cls(command=plain.get("command"), cgroups=plain.get("cgroups") or "auto",
                   accounts=tuple(plain.get("accounts") or ()), sweep_seconds=float(plain.get("sweep_seconds") or 2.0))


def systemd_runs_this_host(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """True when systemd is the init system (sd_booted()'s test)."""
    return run_dir.is_dir()


def cgroup_mode(setting: str, systemd_booted=systemd_runs_this_host) -> str:
    """'systemd' (a transient scope per machine) or 'vac' (a subtree of vac's own)."""
    if setting in CGROUP_MODES:
        return setting
    return "systemd" if systemd_booted() else "vac"


def _account(name: str | None) -> Account:
    if not name:
        raise StartFailed("no Singularity account is set (singularity_user or singularity_user_prefix)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartFailed(f"the Singularity account {name} does not exist on this host") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _read_json(path: Path) -> dict | None:
    """A small JSON object written by vac or its launcher, or None if absent or damaged."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_FILE_BYTES:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True).encode() + b"\n", PRIVATE_FILE_MODE)


def _process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


class SingularityRuntime:
    """The runtime protocol (vac.runtimes.base.ContainerRuntime) on Apptainer/Singularity and cgroups."""

    payload_paths = PAYLOAD_PATHS

    def __init__(self, state_dir: Path | str, settings: SingularitySettings = SingularitySettings(), *,
                 timeout: float = DEFAULT_ENGINE_TIMEOUT_SECONDS, layout: CgroupLayout | None = None,
                 clock=time.monotonic, tracking: str = "auto") -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.timeout = timeout
        self._layout = layout
        self._clock = clock
        self._tracking = tracking
        self._last_usage: dict[str, Usage] = {}

    # ------------------------------------------------------------ plumbing

    def payload_paths_for(self, model: str) -> PayloadPaths:
        return self.payload_paths

    def layout(self) -> CgroupLayout:
        if self._layout is None:
            try:
                self._layout = detect()
            except OSError as error:
                raise RuntimeUnavailable(f"cannot read this host's cgroup layout: {error}") from error
        return self._layout

    def _folder(self, machine_uuid: str) -> Path:
        return MachinePaths.for_machine(self.state_dir, machine_uuid).root / FOLDER_NAME

    def _uuid_of(self, container_id: str) -> str:
        uuid = container_id[len(SINGULARITY_ID_PREFIX):] if container_id.startswith(SINGULARITY_ID_PREFIX) else ""
        if not is_machine_uuid(uuid):
            raise ContainerGone(f"{container_id!r} is not a Singularity machine's id")
        return uuid

    def _meta(self, container_id: str) -> tuple[Path, dict]:
        folder = self._folder(self._uuid_of(container_id))
        meta = _read_json(folder / CONTAINER_FILE)
        if meta is None or (folder / REMOVED_FILE).exists():
            raise ContainerGone(f"Singularity machine {container_id} does not exist (or was removed)")
        return folder, meta

    def _cgroup(self, meta: dict) -> MachineCgroup:
        return MachineCgroup(self.layout(), meta["cgroup"], tracking=meta.get("tracking", "auto"))

    # ------------------------------------------------------------ images

    def ensure_image(self, image: str, deadline: float) -> None:
        """An http(s) image is downloaded into the cache (or refreshed); a path must exist."""
        if image.startswith(("http://", "https://")):
            try:
                image_cache.ensure_cached(self.state_dir, image, deadline,
                                          user_agent=f"vac/{__version__} (image cache)")
            except image_cache.ImageUnavailable as error:
                raise ImageMissing(str(error)) from error
            return
        self._local_image(image)

    def _local_image(self, image: str) -> str:
        if image.startswith(("http://", "https://")):
            path = image_cache.cached_image_path(self.state_dir, image)
        else:
            path = Path(image)
        if not path.is_absolute():
            raise ImageMissing(f"image {image} is not an absolute path")
        # Under /cvmfs this may mount a repository: it is bounded by the slot's job deadline.
        if not (path.is_dir() or path.is_file()):
            raise ImageMissing(f"image {path} does not exist (or is neither a directory nor a file)")
        return str(path)

    # ------------------------------------------------------------ create and start

    def create(self, request: ContainerRequest) -> ContainerHandle:
        """Record the machine's container and make its cgroups (idempotent per machine)."""
        container_id = SINGULARITY_ID_PREFIX + request.machine_uuid
        folder = self._folder(request.machine_uuid)
        existing = _read_json(folder / CONTAINER_FILE)
        if existing is not None and not (folder / REMOVED_FILE).exists():
            log.info("slot %02d machine %s: Singularity container already made, using it", request.slot,
                     request.machine_uuid)
            return self.inspect(container_id)
        image = self._local_image(request.image)
        account = _account(request.account)
        executable = find_executable(self.settings.command)
        mode = cgroup_mode(self.settings.cgroups)
        path = systemd_cgroup_path(request.machine_uuid) if mode == "systemd" else vac_cgroup_path(
            request.machine_uuid)
        limits = Limits(cpus=request.processors, memory_bytes=request.memory_bytes, pids=request.pids_limit)
        cgroup = MachineCgroup(self.layout(), path, tracking=self._tracking)
        if mode == "vac":
            try:
                cgroup.create(limits)
            except OSError as error:
                raise StartFailed(f"cannot make the cgroup {path}: {error}") from error
        os.makedirs(folder, mode=0o700, exist_ok=True)
        meta = {"id": container_id, "name": request.machine_name, "labels": request_labels(request),
                "created_at": time.time(), "image": image, "cgroup_mode": mode, "cgroup": path,
                "tracking": cgroup.tracking, "account": account.name,
                "limits": {"cpus": limits.cpus, "memory_bytes": limits.memory_bytes, "pids": limits.pids},
                "argv": apptainer_argv(executable, request, image), "cwd": str(request.scratch)}
        _write_json(folder / CONTAINER_FILE, meta)
        log.info("slot %02d machine %s: Singularity container made: %s, cgroup %s (%s), account %s", request.slot,
                 request.machine_uuid, image, path, mode, account.name)
        return self._handle(folder, meta)

    def start(self, handle: ContainerHandle) -> ContainerHandle:
        """Start the launcher (a no-op for a machine whose launcher was started already).

        Returns the handle, with the start time the launcher reported.
        """
        folder, meta = self._meta(handle.id)
        if (folder / LAUNCHER_PID_FILE).exists() or (folder / STARTED_FILE).exists():
            log.info("Singularity machine %s was started already", handle.id)
            return self._handle(folder, meta)
        account = _account(meta["account"])
        cgroup = self._cgroup(meta)
        plan = launcher_plan(argv=meta["argv"], account=account, cwd=Path(meta["cwd"]), mkdirs=cgroup.mkdirs(),
                             launcher_procs=cgroup.launcher_procs(), payload_procs=cgroup.payload_procs(),
                             directory=folder, log_limit_bytes=LOG_LIMIT_BYTES)
        _write_json(folder / PLAN_FILE, plan)
        command = launcher_argv(folder / PLAN_FILE)
        if meta["cgroup_mode"] == "systemd":
            command = systemd_run_argv(self._uuid_of(handle.id), meta["limits"], command, machine_name=meta["name"])
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout,
                                    close_fds=True, check=False)
        except subprocess.TimeoutExpired as error:
            raise StartFailed(f"the launcher of {handle.id} did not report within {self.timeout:.0f} s") from error
        except OSError as error:
            raise StartFailed(f"cannot run the launcher of {handle.id}: {error}") from error
        if result.returncode != 0:
            text = result.stderr.decode("utf-8", "replace").strip()[-500:]
            raise StartFailed(f"the launcher of {handle.id} failed ({result.returncode}): {text}")
        started_at = _reported_start(result.stdout)
        _write_json(folder / STARTED_FILE, {"started_at": started_at})
        log.info("started Singularity machine %s (%s)", handle.name, handle.id)
        return self._handle(folder, meta)

    # ------------------------------------------------------------ what it is now

    def _launcher_alive(self, folder: Path) -> bool:
        record = _read_json(folder / LAUNCHER_PID_FILE)
        if record is None or not isinstance(record.get("pid"), int):
            return False
        return _process_start_ticks(record["pid"]) == record.get("start_time")

    def _started_at(self, folder: Path) -> float | None:
        started = _read_json(folder / STARTED_FILE)
        if started is not None and isinstance(started.get("started_at"), (int, float)):
            return float(started["started_at"])
        try:
            # Its worker died before writing `started`: the launcher's pid file dates the start.
            return os.stat(folder / LAUNCHER_PID_FILE).st_mtime
        except FileNotFoundError:
            return None

    def _handle(self, folder: Path, meta: dict) -> ContainerHandle:
        started_at = self._started_at(folder)
        status = _read_json(folder / EXIT_STATUS_FILE)
        finished_at = None
        if started_at is None:
            state = ContainerState.CREATED
        elif status is not None:
            state = ContainerState.EXITED
            finished_at = status.get("finished_at")
        elif self._launcher_alive(folder) or self._payload_populated(meta):
            state = ContainerState.RUNNING
        else:
            state = ContainerState.EXITED
        return ContainerHandle(id=meta["id"], name=meta["name"], labels=dict(meta["labels"]), state=state,
                               created_at=meta.get("created_at"), started_at=started_at, finished_at=finished_at,
                               runtime="singularity")

    def _payload_populated(self, meta: dict) -> bool:
        try:
            return self._cgroup(meta).populated()
        except OSError:
            return False

    def inspect(self, container_id: str) -> ContainerHandle:
        folder, meta = self._meta(container_id)
        return self._handle(folder, meta)

    def find(self, factory: str, slot: int | None = None, models: Iterable[str] | None = None,
             machine_uuid: str | None = None, brief: bool = False) -> list[ContainerHandle]:
        """Every Singularity machine of `factory` (and `slot`, and `machine_uuid`) not removed, oldest first.

        For a slot with a complete index (layout.py) the machines it names are
        looked at: a machine is named before its record, so before its
        container is made, and leaves the index only once its record says done,
        after its container was removed. Otherwise, without `machine_uuid`,
        every machine directory is, the finished ones kept for history too.
        """
        if machine_uuid is None and slot is not None:
            indexed = indexed_machines(self.state_dir, slot)
            if indexed is not None:
                return sorted((handle for uuid in indexed
                               for handle in self.find(factory, slot, machine_uuid=uuid, brief=brief)),
                              key=lambda handle: (handle.created_at or 0.0, handle.id))
        handles = []
        for paths in iter_machine_directories(self.state_dir, machine_uuid):
            folder = paths.root / FOLDER_NAME
            meta = _read_json(folder / CONTAINER_FILE)
            if meta is None or (folder / REMOVED_FILE).exists():
                continue
            labels = meta.get("labels") or {}
            if labels.get(LABEL_FACTORY) != factory or (slot is not None and labels.get(LABEL_SLOT) != str(slot)):
                continue
            handles.append(self._handle(folder, meta))
        return sorted(handles, key=lambda handle: (handle.created_at or 0.0, handle.id))

    def exit_status(self, handle: ContainerHandle) -> ExitInfo | None:
        """The launcher's record of the exit; an unrecorded end once nothing of the machine lives."""
        folder, meta = self._meta(handle.id)
        recorded = self._recorded_exit(folder, meta)
        if recorded is not None:
            return recorded
        if self._handle(folder, meta).state is not ContainerState.EXITED:
            return None
        # The launcher writes its record before it exits: one that ended since the
        # first look has recorded its end by now, and that record wins.
        return self._recorded_exit(folder, meta) or ExitInfo(UNRECORDED_EXIT_CODE, None, self._oom_killed(meta))

    def _recorded_exit(self, folder: Path, meta: dict) -> ExitInfo | None:
        status = _read_json(folder / EXIT_STATUS_FILE)
        if status is not None and isinstance(status.get("exit_code"), int):
            return ExitInfo(status["exit_code"], status.get("finished_at"), self._oom_killed(meta))
        return None

    def _oom_killed(self, meta: dict) -> bool:
        try:
            return self._cgroup(meta).oom_killed()
        except OSError:
            return False

    # ------------------------------------------------------------ waiting

    def wait(self, handle: ContainerHandle, deadline: float) -> ExitInfo | None:
        """The machine's ExitInfo once it ends, or None once `deadline` (monotonic) passes."""
        folder, meta = self._meta(handle.id)
        if self._started_at(folder) is None:
            raise ContainerNotStarted(f"Singularity machine {handle.id} was made but never started")
        with ChangeWait((folder, self._events_path(meta))) as watch:
            while True:
                info = self.exit_status(handle)
                if info is not None:
                    return info
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                watch.wait(min(remaining, WAIT_POLL_SECONDS))

    def _events_path(self, meta: dict) -> Path | None:
        try:
            return self._cgroup(meta).events_path()
        except OSError:
            return None

    def _wait_ended(self, folder: Path, meta: dict, deadline: float) -> bool:
        """Until the payload's processes are gone and its end is recorded (or its launcher is gone too)."""
        with ChangeWait((folder, self._events_path(meta))) as watch:
            while True:
                ended = not self._payload_populated(meta) and (
                    (folder / EXIT_STATUS_FILE).exists() or not self._launcher_alive(folder))
                remaining = deadline - self._clock()
                if ended or remaining <= 0:
                    return ended
                watch.wait(min(remaining, WAIT_POLL_SECONDS / 4))

    def _record_kill(self, folder: Path) -> None:
        """A machine killed with its launcher: the kill is the end we saw."""
        if not (folder / EXIT_STATUS_FILE).exists() and not self._launcher_alive(folder):
            _write_json(folder / EXIT_STATUS_FILE, {"exit_code": 128 + signal.SIGKILL, "signal": signal.SIGKILL,
                                                    "finished_at": time.time(), "recorded_by": "vac"})

    # ------------------------------------------------------------ ending

    def stop(self, handle: ContainerHandle, grace_seconds: float) -> None:
        """SIGTERM to every process of the payload, the cgroup kill after `grace_seconds`; returns once it ended.

        Every process gets the SIGTERM, not only Apptainer's: a payload's
        daemons and grandchildren get their chance to end cleanly too.
        """
        folder, meta = self._meta(handle.id)
        log.info("stopping Singularity machine %s, %.0f s grace", handle.name, grace_seconds)
        try:
            self._cgroup(meta).signal_payload(signal.SIGTERM)
        except OSError as error:
            raise RuntimeUnavailable(f"cannot signal the processes of {handle.id}: {error}") from error
        if not self._wait_ended(folder, meta, self._clock() + max(0.0, grace_seconds)):
            self.kill(handle)

    def kill(self, handle: ContainerHandle) -> None:
        """Kill every process of the payload (the cgroup kill); its launcher records the exit."""
        folder, meta = self._meta(handle.id)
        if not self._payload_populated(meta) and (folder / EXIT_STATUS_FILE).exists():
            return
        log.info("killing Singularity machine %s", handle.name)
        try:
            self._cgroup(meta).kill_payload()
        except OSError as error:
            raise RuntimeUnavailable(f"cannot kill the processes of {handle.id}: {error}") from error
        self._wait_ended(folder, meta, self._clock() + STATUS_SETTLE_SECONDS)
        self._record_kill(folder)

    def remove(self, handle: ContainerHandle) -> None:
        """Kill whatever is left (launcher included), remove the cgroups; a machine gone already is fine."""
        try:
            folder, meta = self._meta(handle.id)
        except ContainerGone:
            return
        cgroup = self._cgroup(meta)
        try:
            if self._payload_populated(meta):
                self.kill(handle)
            cgroup.kill_all()
            self._record_kill(folder)
            cgroup.remove()
        except CgroupError as error:
            raise RuntimeUnavailable(f"cannot remove the cgroups of {handle.id}: {error}") from error
        except OSError as error:
            raise RuntimeUnavailable(f"cannot remove {handle.id}: {error}") from error
        _write_json(folder / REMOVED_FILE, {"removed_at": time.time()})
        self._last_usage.pop(handle.id, None)
        log.info("removed Singularity machine %s (%s)", handle.name, handle.id)

    def stats(self, handle: ContainerHandle) -> Usage:
        """CPU seconds and peak memory of the machine's cgroup; after it is gone, the last sample."""
        previous = self._last_usage.get(handle.id, Usage(0.0, 0))
        try:
            folder, meta = self._meta(handle.id)
            cpu_seconds, memory_bytes = self._cgroup(meta).usage()
        except (ContainerGone, OSError):
            return previous
        running = self._handle(folder, meta).state is ContainerState.RUNNING
        usage = Usage(max(cpu_seconds, previous.cpu_seconds), max(memory_bytes, previous.memory_bytes),
                      time.time() if running else previous.sampled_at)
        self._last_usage[handle.id] = usage
        return usage

    def close(self) -> None:
        """Nothing is held between calls."""


def _reported_start(stdout: bytes) -> float:
    """The start time the launcher printed ("PAYLOADPID STARTED_AT"), else now."""
    words = stdout.decode("ascii", "replace").split()
    try:
        return float(words[1])
    except (IndexError, ValueError):
        return time.time()
