"""The runtime protocol slot workers drive, and the plain data it speaks.

A runtime creates, starts, finds, waits for, stops and removes the one
container of a machine. Every call that can hang is bounded: by the runtime's
own timeout or by a deadline passed in (a `time.monotonic()` value). Times that
describe the container itself (started, finished) are Unix times, because they
end up in accounting records and must survive a restart of the worker.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Protocol, runtime_checkable

from vac.vocabulary.labels import (LABEL_FACTORY, LABEL_GENERATION, LABEL_MACHINE, LABEL_MACHINE_NAME,  # noqa: F401
                                   LABEL_MACHINETYPE, LABEL_SLOT, SINGULARITY_ID_PREFIX)


# Seconds an engine call may take before it counts as unanswered, unless the
# site sets docker_timeout_seconds.
DEFAULT_ENGINE_TIMEOUT_SECONDS = 30.0

class ContainerRuntimeError(Exception):
    """Base of every error a runtime raises on purpose."""


class RuntimeUnavailable(ContainerRuntimeError):
    """The engine is down, refused the connection or did not answer in time; retry later."""


class StartFailed(ContainerRuntimeError):
    """The engine refused to create or start this machine's container; the machine ends as 700 Failed to start."""


class ImageMissing(StartFailed):
    """The image is not present and could not be pulled before the deadline."""


class ContainerGone(ContainerRuntimeError):
    """The container no longer exists (removed behind the runtime's back)."""


class ContainerNotStarted(ContainerRuntimeError):
    """Waiting for a container that was created but never started: it would never exit."""


class ContainerState(enum.StrEnum):
    """The engine's view of a container (Docker's State.Status words)."""
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"

    @property
    def has_ended(self) -> bool:
        """True once the container's main process has exited (it will not run again)."""
        return self in (ContainerState.EXITED, ContainerState.DEAD)


@dataclass(frozen=True, slots=True)
class Mount:
    """One bind mount: a host path seen at a container path."""
    host_path: Path
    container_path: str
    read_only: bool
    # "rslave" lets mounts made later under host_path (CernVM-FS automounts)
    # appear inside the container; None keeps the engine's default (rprivate).
    propagation: str | None = None


@dataclass(frozen=True, slots=True)
class PayloadPaths:
    """Where the payload of a runtime's containers finds the machine's files (INTERFACES.md §3).

    Each runtime has its own; user_data templates are filled with them.
    """
    machinefeatures: str
    jobfeatures: str
    joboutputs: str


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """Everything a runtime needs to create one machine's container.

    Host paths are given by role; each runtime maps them to the container paths
    of INTERFACES.md §3, which differ between Docker and Singularity.
    """
    factory: str
    slot: int
    machine_uuid: str
    machinetype: str
    generation: int
    machine_name: str
    image: str
    command: str
    processors: int
    memory_bytes: int
    pids_limit: int
    user_data: Path
    machinefeatures: Path
    jobfeatures: Path
    joboutputs: Path
    cvmfs_repositories: tuple[str, ...] = ()
    cvmfs_root: Path = Path("/cvmfs")
    # How repositories are bound: "rslave" shows a repository that autofs
    # mounts (again) after the start inside the container; None binds what is
    # mounted at the start only, where the host's /cvmfs is a private mount.
    cvmfs_propagation: str | None = "rslave"
    # (host directory, container path) for each tmp_binds entry.
    tmp_binds: tuple[tuple[Path, str], ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    swap_bytes: int = 0
    # The machine_model: which runtime runs it ("docker" or "singularity").
    model: str = "docker"
    # The account a Singularity machine runs as (Docker: None, the image's user).
    account: str | None = None
    # The machine's scratch area: Singularity's --workdir (Docker binds only tmp_binds from it).
    scratch: Path | None = None
    # What MACHINEFEATURES and JOBFEATURES say when they are http URLs (mjf_http);
    # None: the paths the directories are mounted at, which they are either way.
    machinefeatures_url: str | None = None
    jobfeatures_url: str | None = None

    def __post_init__(self):
        if self.slot < 0:
            raise ValueError(f"slot must not be negative, got {self.slot}")
        if self.processors < 1:
            raise ValueError(f"processors must be at least 1, got {self.processors}")
        if self.memory_bytes <= 0 or self.pids_limit <= 0 or self.swap_bytes < 0:
            raise ValueError(f"memory {self.memory_bytes}, pids limit {self.pids_limit} and swap "
                             f"{self.swap_bytes} must be positive (swap may be 0)")
        if not _is_clean_absolute(self.command):
            raise ValueError(f"command {self.command!r} must be a single clean absolute path")
        for repository in self.cvmfs_repositories:
            # The name becomes a path component on the host and in the container.
            if not repository or "/" in repository or repository in (".", ".."):
                raise ValueError(f"CernVM-FS repository name {repository!r} is not a plain name")
        for _, container_path in self.tmp_binds:
            if not _is_clean_absolute(container_path) or container_path == "/":
                raise ValueError(f"tmp_binds path {container_path!r} must be a clean absolute path")


def _is_clean_absolute(path: str) -> bool:
    return path.startswith("/") and posixpath.normpath(path) == path and "\x00" not in path


@dataclass(frozen=True, slots=True)
class ContainerHandle:
    """A container as last seen by the runtime: its id, our labels and its state."""
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    state: ContainerState = ContainerState.CREATED
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # Which runtime made it: the machine_model of its machine.
    runtime: str = "docker"

    @property
    def machine_uuid(self) -> str | None:
        return self.labels.get(LABEL_MACHINE)

    @property
    def slot(self) -> int | None:
        value = self.labels.get(LABEL_SLOT)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def generation(self) -> int | None:
        value = self.labels.get(LABEL_GENERATION)
        return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a container ended; `started_at`, the engine's start time, where it tells it with the end."""
    exit_code: int
    finished_at: float | None
    oom_killed: bool = False
    started_at: float | None = None


class Usage(NamedTuple):
    """CPU time and peak memory of a container, and when the engine last sampled it running.

    `sampled_at` (Unix time, None if never) is evidence that the container
    was alive then: accounting falls back on it when the end is not seen.
    """
    cpu_seconds: float
    memory_bytes: int
    sampled_at: float | None = None


def request_labels(request: ContainerRequest) -> dict[str, str]:
    """Our labels for the container of `request`."""
    return {
        LABEL_FACTORY: request.factory,
        LABEL_SLOT: str(request.slot),
        LABEL_MACHINE: request.machine_uuid,
        LABEL_MACHINETYPE: request.machinetype,
        LABEL_GENERATION: str(request.generation),
        LABEL_MACHINE_NAME: request.machine_name,
    }


@runtime_checkable
class ContainerRuntime(Protocol):
    """What a slot worker needs from a container engine."""

    def payload_paths_for(self, model: str) -> PayloadPaths:
        """The paths containers of `model` see their machine's MJF and joboutputs at."""

    def ensure_image(self, image: str, deadline: float) -> None:
        """Make `image` present locally (pulling it by `deadline`) or raise ImageMissing."""

    def create(self, request: ContainerRequest) -> ContainerHandle:
        """Create (not start) the machine's container; creating the same machine again returns the existing one."""

    def start(self, handle: ContainerHandle) -> ContainerHandle:
        """Start a created container and return its handle; StartFailed if the engine refuses.

        The handle's `started_at` is the engine's start time if the start gives
        it, else the time the start returned; the engine's own time then comes
        with the exit (ExitInfo.started_at), and accounting takes that one.
        """

    def inspect(self, container_id: str) -> ContainerHandle:
        """The container's current handle; ContainerGone if it does not exist."""

    def find(self, factory: str, slot: int | None = None,
             models: Iterable[str] | None = None, machine_uuid: str | None = None,
             brief: bool = False) -> list[ContainerHandle]:
        """Every container (any state) labelled with `factory` (and `slot`, and `machine_uuid`), oldest first.

        `models`: the machine models whose containers must be listed (None: all);
        a runtime serving none of them may skip itself when it cannot answer.
        `machine_uuid` asks for one machine's containers: the engine filters
        them, and a runtime keeping its containers in machine directories
        looks in that one alone, not in every machine's.
        `brief`: enough to remove them (id, name, labels, state); the times may
        be missing or coarse, and an engine is asked once instead of once more
        per container.
        """

    def wait(self, handle: ContainerHandle, deadline: float) -> ExitInfo | None:
        """Block until the container exits (its ExitInfo) or `deadline` passes (None)."""

    def exit_status(self, handle: ContainerHandle) -> ExitInfo | None:
        """How the container ended, or None while it has not."""

    def stop(self, handle: ContainerHandle, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after `grace_seconds`; returns once the container has exited."""

    def kill(self, handle: ContainerHandle) -> None:
        """SIGKILL at once; a container that already exited is left as it is."""

    def remove(self, handle: ContainerHandle) -> None:
        """Remove the container, killing it if needed; a container already gone is fine."""

    def stats(self, handle: ContainerHandle) -> Usage:
        """CPU seconds and peak memory so far (after exit: the last sample taken)."""

    def close(self) -> None:
        """Release connections to the engine."""
