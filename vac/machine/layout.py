"""Machine names and the per-machine directory under the state directory.

Layout (one directory per machine, named by its UUID, which is known before
anything else is prepared and also names the container's labels and the APEL
record; the original Vac used created-time_machinetype_name, which collides
when the clock steps back and cannot be derived from a container):

    <state_dir>/machines/                    0711  traversable, not listable
    <state_dir>/machines/<uuid>/             0700  (0710 + group for Singularity)
        record.json                          0600  lifecycle record (record.py)
        machine.json                         0600  the machine's terms (prepare.py)
        finished                             0600  marker: finalised exactly once
        mjf_token                            0600  the random part of its MJF URLs (mjf_http.py)
        apel-record                          0644  APEL record as first written
        user_data                            0755  templated script (0700 with a proxy;
                                                   Singularity: the account's, 0500)
        machinefeatures/  jobfeatures/       0755  files 0644, mounted read-only
        joboutputs/                          0755  mounted read-write, the container's
        scratch/                             0700  scratch area or its mount point
        scratch.img                          0600  loop-device image (loop backend)
        singularity/                         0700  a Singularity machine's launcher plan, pid,
                                                   exit status and output (docs/singularity.md)

Each slot's unfinished machines are also named in an index, so that a slot
worker taking over after a restart reads their records instead of every
record kept for history (slot_steps.scan):

    <state_dir>/unfinished/                  0700
    <state_dir>/unfinished/<slot>/           0700
        <uuid>                               0600  empty: made before the machine's record; removed when
                                                   the slot next prepares a machine or restarts, once
                                                   the record says done
        complete                             0600  marker: every unfinished machine of the slot is named
                                                   here (written after a full scan; a state directory from
                                                   before the index has none, and its slots read every record)

What the container needs: Docker bind mounts are made by dockerd as root, so
the host-side 0700 parent is no obstacle, while inside the container the mounted
paths keep their own modes; MJF must be readable and /user_data executable by
whichever account the container's payload runs as (0755/0644, INTERFACES.md §3).
The secrets in user_data are protected by the 0700 machine directory, which no
unprivileged host account can enter; a user_data that holds an X.509 proxy's
key is itself 0700 and root's, so inside the container only root reads it
(such a machinetype's image must run /user_data as root: no USER). Singularity runs as `singularity_user`, so
the machine directory is then 0710 with that account's group (`container_gid`)
and joboutputs, scratch and user_data belong to that account.
"""

from __future__ import annotations

import os
import stat
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from vac.machine.atomicfile import create_atomic, fsync_directory

MACHINES_DIR_NAME = "machines"
UNFINISHED_DIR_NAME = "unfinished"
INDEX_COMPLETE_NAME = "complete"
INDEX_DIR_MODE = 0o700

MACHINES_DIR_MODE = 0o711
MACHINE_DIR_MODE = 0o700
MACHINE_DIR_MODE_SHARED = 0o710
FEATURES_DIR_MODE = 0o755
FEATURES_FILE_MODE = 0o644
JOBOUTPUTS_DIR_MODE = 0o755
USER_DATA_MODE = 0o755
# With an X.509 proxy's key in it: only root, which a container without a USER runs as.
USER_DATA_SECRET_MODE = 0o700
# A Singularity machine's, owned by its account, which runs it.
USER_DATA_ACCOUNT_MODE = 0o500
SCRATCH_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def machine_name(factory_name: str, slot: int) -> str:
    """The machine's hostname as Vac names it: f1.example.com, slot 3 -> f1-03.example.com."""
    if slot < 0:
        raise ValueError(f"slot number must not be negative, got {slot}")
    host, dot, domain = factory_name.partition(".")
    if not host:
        raise ValueError(f"factory name {factory_name!r} has no host part")
    return f"{host}-{slot:02d}{dot}{domain}"


def is_machine_uuid(text: str) -> bool:
    """True for a UUID in canonical lower-case form, the only names machine directories get."""
    try:
        return str(uuid_module.UUID(text)) == text
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class MachinePaths:
    """Where each piece of one machine lives on the host."""
    machine_uuid: str
    root: Path

    @classmethod
    def for_machine(cls, state_dir: Path, machine_uuid: str) -> MachinePaths:
        """The paths of machine `machine_uuid` under `state_dir` (nothing is created)."""
        # The UUID becomes a path component: only the canonical form can never
        # be '..', contain '/', or alias another machine's directory.
        if not is_machine_uuid(machine_uuid):
            raise ValueError(f"machine UUID {machine_uuid!r} is not a canonical lower-case UUID")
        return cls(machine_uuid, Path(state_dir) / MACHINES_DIR_NAME / machine_uuid)

    @property
    def machinefeatures(self) -> Path:
        return self.root / "machinefeatures"

    @property
    def jobfeatures(self) -> Path:
        return self.root / "jobfeatures"

    @property
    def joboutputs(self) -> Path:
        return self.root / "joboutputs"

    @property
    def user_data(self) -> Path:
        return self.root / "user_data"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def scratch_image(self) -> Path:
        return self.root / "scratch.img"

    @property
    def record(self) -> Path:
        return self.root / "record.json"

    @property
    def finished_marker(self) -> Path:
        return self.root / "finished"


def ensure_directory(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Create `path` if missing and set its mode (and owner); refuse a symlink or non-directory."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} exists and is not a directory (symlinks are refused)")
    if owner is not None and (info.st_uid, info.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != mode or owner is not None:
        # chown clears set-id bits and mkdir obeys the umask: set the mode last.
        os.chmod(path, mode)


def create_machine_directory(state_dir: Path, machine_uuid: str, container_gid: int | None = None,
                             container_owner: tuple[int, int] | None = None) -> MachinePaths:
    """Create (or complete, after a restart) the machine directory and its fixed subdirectories.

    `container_gid` lets that group enter the machine directory (Singularity's
    account); `container_owner` (uid, gid) gets joboutputs. Both None for Docker.
    """
    paths = MachinePaths.for_machine(state_dir, machine_uuid)
    ensure_directory(Path(state_dir) / MACHINES_DIR_NAME, MACHINES_DIR_MODE)
    if container_gid is None:
        ensure_directory(paths.root, MACHINE_DIR_MODE)
    else:
        ensure_directory(paths.root, MACHINE_DIR_MODE_SHARED, (0, container_gid))
    ensure_directory(paths.machinefeatures, FEATURES_DIR_MODE)
    ensure_directory(paths.jobfeatures, FEATURES_DIR_MODE)
    ensure_directory(paths.joboutputs, JOBOUTPUTS_DIR_MODE, container_owner)
    return paths


def iter_machine_directories(state_dir: Path, machine_uuid: str | None = None) -> Iterator[MachinePaths]:
    """Every machine directory under `state_dir`, skipping anything not named by a UUID;
    with `machine_uuid`, that machine's alone (if it has one)."""
    machines_dir = Path(state_dir) / MACHINES_DIR_NAME
    if machine_uuid is not None:
        if is_machine_uuid(machine_uuid) and (machines_dir / machine_uuid).is_dir():
            yield MachinePaths(machine_uuid, machines_dir / machine_uuid)
        return
    try:
        entries = sorted(os.scandir(machines_dir), key=lambda entry: entry.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if is_machine_uuid(entry.name) and entry.is_dir(follow_symlinks=False):
            yield MachinePaths(entry.name, machines_dir / entry.name)


def slot_index_directory(state_dir: Path, slot: int) -> Path:
    """Where slot `slot`'s unfinished machines are named."""
    if slot < 0:
        raise ValueError(f"slot number must not be negative, got {slot}")
    return Path(state_dir) / UNFINISHED_DIR_NAME / str(slot)


def indexed_machines(state_dir: Path, slot: int) -> list[str] | None:
    """The UUIDs slot `slot`'s index names, or None unless the index is complete (then every record must be read)."""
    if slot < 0:
        raise ValueError(f"slot number must not be negative, got {slot}")
    # Plain strings, and asked before it is listed: an idle slot worker of a new factory
    # runs this just after its fork, and pathlib or a caught exception there copies
    # some of the root's pages into the worker's own.
    directory = os.path.join(state_dir, UNFINISHED_DIR_NAME, str(slot))
    if not os.access(directory, os.F_OK):
        return None
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if INDEX_COMPLETE_NAME not in names:
        return None
    return sorted(name for name in names if is_machine_uuid(name))


def index_machine(state_dir: Path, slot: int, machine_uuid: str) -> None:
    """Name `machine_uuid` in its slot's index, durably (before its record is first written)."""
    directory = _index_directory(state_dir, slot)
    if _name(directory, machine_uuid):
        # Its record's fsync need not carry this name with it on every filesystem.
        fsync_directory(directory)


def unindex_machine(state_dir: Path, slot: int, machine_uuid: str) -> None:
    """Remove `machine_uuid` from its slot's index (its record says done; missing is fine)."""
    if not is_machine_uuid(machine_uuid):
        raise ValueError(f"machine UUID {machine_uuid!r} is not a canonical lower-case UUID")
    try:
        os.unlink(slot_index_directory(state_dir, slot) / machine_uuid)
    except FileNotFoundError:
        pass


def complete_index(state_dir: Path, slot: int, machine_uuids: Iterable[str]) -> None:
    """After every record was read: name each unfinished machine of the slot, then mark the index complete."""
    directory = _index_directory(state_dir, slot)
    for machine_uuid in machine_uuids:
        _name(directory, machine_uuid)
    # The names must be on disk before the marker that says they are all there.
    fsync_directory(directory)
    create_atomic(directory / INDEX_COMPLETE_NAME, b"", PRIVATE_FILE_MODE)


def _index_directory(state_dir: Path, slot: int) -> Path:
    """The slot's index directory, made (and made durable) if missing."""
    directory = slot_index_directory(state_dir, slot)
    for path in (directory.parent, directory):
        try:
            os.mkdir(path, INDEX_DIR_MODE)
        except FileExistsError:
            continue
        fsync_directory(path.parent)
    if not stat.S_ISDIR(os.lstat(directory).st_mode):
        raise NotADirectoryError(f"{directory} exists and is not a directory (symlinks are refused)")
    return directory


def _name(directory: Path, machine_uuid: str) -> bool:
    """Create the empty entry `machine_uuid` in an index directory; False if it was there."""
    if not is_machine_uuid(machine_uuid):
        raise ValueError(f"machine UUID {machine_uuid!r} is not a canonical lower-case UUID")
    try:
        fd = os.open(directory / machine_uuid, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True
