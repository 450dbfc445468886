"""Scratch space for a machine behind one interface: a directory, a loop-mounted ext4 image, or an LVM volume.

Every backend's create() is idempotent, so a slot worker restarted while its
container runs finds the scratch area it made before and reuses it; destroy()
leaves nothing mounted or allocated and may be repeated.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from vac.machine.atomicfile import fsync_directory
from vac.machine.layout import PRIVATE_FILE_MODE, SCRATCH_DIR_MODE, MachinePaths, ensure_directory
from vac.mountinfo import mount_at

log = logging.getLogger(__name__)

BYTES_PER_GB = 1000 ** 3  # disk_gb_per_processor counts 10^9 bytes, as in Vac
TMP_BIND_MODE = 0o1777    # what a container expects of /tmp-like directories
BINDS_DIR_NAME = "binds"

MOUNT_TIMEOUT_SECONDS = 60.0
MKFS_TIMEOUT_SECONDS = 300.0
LVM_TIMEOUT_SECONDS = 120.0

# Scratch is for data: no device nodes or set-id programs from a container.
MOUNT_OPTIONS = "nodev,nosuid"
# -m 0: no blocks reserved for root, the container (root or not) gets the full size;
# nodiscard: discarding a fresh sparse image or volume is wasted time.
MKFS_COMMAND = ("mkfs.ext4", "-F", "-q", "-m", "0", "-E", "nodiscard")


class ScratchError(Exception):
    """A scratch area could not be made or removed; the message names the command or path."""


Runner = Callable[[Sequence[str], float, Mapping[str, str] | None], None]


def run_command(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> None:
    """Run `argv` (no shell) within `timeout` seconds; ScratchError unless it exits 0."""
    full_env = None if env is None else {**os.environ, **env}
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                env=full_env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as error:
        raise ScratchError(f"{' '.join(argv)} did not finish within {timeout:g} s; killed") from error
    except OSError as error:
        raise ScratchError(f"cannot run {argv[0]}: {error.strerror or error}") from error
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ScratchError(f"{' '.join(argv)} exited with {result.returncode}: "
                           f"{detail[-1] if detail else 'no output'}")


def scratch_size_bytes(disk_gb_per_processor: float | None, processors: int) -> int | None:
    """Scratch size for a machine: disk_gb_per_processor x processors x 10^9 bytes, None if unset."""
    if disk_gb_per_processor is None:
        return None
    return int(disk_gb_per_processor * processors * BYTES_PER_GB)


# ---------------------------------------------------------------- mounts


def loop_backing_files(sys_block: Path = Path("/sys/block")) -> dict[str, str]:
    """Every attached loop device and the file behind it ({'/dev/loop3': '/path/img'})."""
    devices = {}
    for backing in sys_block.glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue  # detached between the glob and the read
        devices[f"/dev/{backing.parent.parent.name}"] = name.removesuffix(" (deleted)")
    return devices


# ---------------------------------------------------------------- tmp_binds


_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def check_container_path(container_path: str) -> None:
    """Refuse anything but a clean absolute path other than '/' (tmp_binds entries)."""
    # normpath keeps a leading '//' (POSIX allows it a meaning), so test for it too.
    if (not container_path.startswith("/") or container_path == "/" or "//" in container_path
            or os.path.normpath(container_path) != container_path or "\0" in container_path):
        raise ValueError(f"tmp_binds entry {container_path!r} is not a clean absolute path")


def bind_directory_name(index: int, container_path: str) -> str:
    """Host directory name for the index-th tmp_binds path: '/var/tmp' -> '01-var_tmp'."""
    check_container_path(container_path)
    readable = _UNSAFE_NAME_CHARACTERS.sub("_", container_path.strip("/").replace("/", "_"))[:60]
    # The index keeps names unique ('/a_b' and '/a/b') and stable across restarts.
    return f"{index:02d}-{readable}"


def make_tmp_binds(scratch: Path, container_paths: Sequence[str],
                   owner: tuple[int, int] | None = None) -> list[tuple[Path, str]]:
    """Create one empty read-write directory per tmp_binds path; [(host_dir, container_path)].

    Existing directories are kept with their contents, for a container being adopted.
    """
    binds_dir = Path(scratch) / BINDS_DIR_NAME
    ensure_directory(binds_dir, SCRATCH_DIR_MODE, owner)
    binds = []
    for index, container_path in enumerate(container_paths):
        host_dir = binds_dir / bind_directory_name(index, container_path)
        ensure_directory(host_dir, TMP_BIND_MODE, owner)
        binds.append((host_dir, container_path))
    return binds


# ---------------------------------------------------------------- backends


class ScratchBackend(Protocol):
    """Where a machine's scratch space comes from."""

    def create(self, machine: MachinePaths, size_bytes: int | None,
               owner: tuple[int, int] | None = None) -> Path:
        """Make (or find again) the machine's scratch area and return its path."""
        ...

    def destroy(self, machine: MachinePaths) -> None:
        """Remove the scratch area and everything it holds; nothing if it is gone."""
        ...

    def exists(self, machine: MachinePaths) -> bool:
        """True if any part of the machine's scratch area is still there."""
        ...


def _remove_mount_point(machine: MachinePaths) -> None:
    if mount_at(machine.scratch) is not None:
        raise ScratchError(f"{machine.scratch} is still mounted; not deleting what is below it")
    if os.path.lexists(machine.scratch):
        shutil.rmtree(machine.scratch)


class DirectoryScratch:
    """A plain directory in the machine directory: no size limit (the default)."""

    def create(self, machine: MachinePaths, size_bytes: int | None,
               owner: tuple[int, int] | None = None) -> Path:
        ensure_directory(machine.scratch, SCRATCH_DIR_MODE, owner)
        return machine.scratch

    def destroy(self, machine: MachinePaths) -> None:
        # rmtree works on directory descriptors and never follows the container's symlinks.
        _remove_mount_point(machine)

    def exists(self, machine: MachinePaths) -> bool:
        return os.path.lexists(machine.scratch)


class LoopScratch:
    """A sparse ext4 image of exactly the machine's size, loop-mounted: a real quota."""

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner

    def _new_image_path(self, machine: MachinePaths) -> Path:
        return machine.scratch_image.with_name(f".{machine.scratch_image.name}.new")

    def _mounted_image(self, machine: MachinePaths) -> bool:
        entry = mount_at(machine.scratch)
        if entry is None:
            return False
        backing = loop_backing_files().get(entry.source)
        if backing != os.path.realpath(machine.scratch_image):
            raise ScratchError(f"{machine.scratch} has {entry.source} ({backing}) mounted, "
                               f"not {machine.scratch_image}")
        return True

    def create(self, machine: MachinePaths, size_bytes: int | None,
               owner: tuple[int, int] | None = None) -> Path:
        if size_bytes is None or size_bytes <= 0:
            raise ScratchError("a loop-mounted scratch image needs a size (disk_gb_per_processor)")
        ensure_directory(machine.scratch, SCRATCH_DIR_MODE)
        if self._mounted_image(machine):
            log.info("machine %s: reusing mounted scratch image %s", machine.machine_uuid, machine.scratch_image)
        else:
            if not machine.scratch_image.exists():
                self._make_image(machine, size_bytes)
            self._run(["mount", "-t", "ext4", "-o", f"loop,{MOUNT_OPTIONS}",
                       str(machine.scratch_image), str(machine.scratch)], MOUNT_TIMEOUT_SECONDS, None)
            log.info("machine %s: mounted %d-byte scratch image at %s",
                     machine.machine_uuid, size_bytes, machine.scratch)
        # The filesystem's root replaces the mount point's mode and owner.
        ensure_directory(machine.scratch, SCRATCH_DIR_MODE, owner)
        return machine.scratch

    def _make_image(self, machine: MachinePaths, size_bytes: int) -> None:
        # Built under a temporary name: an image with the final name always holds
        # a complete filesystem, so a restart may simply mount it.
        new_image = self._new_image_path(machine)
        fd = os.open(new_image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
        try:
            os.ftruncate(fd, size_bytes)  # sparse: blocks are used only when written
        finally:
            os.close(fd)
        try:
            self._run([*MKFS_COMMAND, str(new_image)], MKFS_TIMEOUT_SECONDS, None)
            os.rename(new_image, machine.scratch_image)
            fsync_directory(machine.root)
        except BaseException:
            new_image.unlink(missing_ok=True)
            raise

    def destroy(self, machine: MachinePaths) -> None:
        if self._mounted_image(machine):
            self._run(["umount", str(machine.scratch)], MOUNT_TIMEOUT_SECONDS, None)
        # mount -o loop detaches its device at umount; a crash between losetup
        # and mount can leave one attached, which would pin the image.
        image = os.path.realpath(machine.scratch_image)
        for device, backing in loop_backing_files().items():
            if backing in (image, os.path.realpath(self._new_image_path(machine))):
                self._run(["losetup", "--detach", device], MOUNT_TIMEOUT_SECONDS, None)
        machine.scratch_image.unlink(missing_ok=True)
        self._new_image_path(machine).unlink(missing_ok=True)
        _remove_mount_point(machine)

    def exists(self, machine: MachinePaths) -> bool:
        return (machine.scratch_image.exists() or self._new_image_path(machine).exists()
                or mount_at(machine.scratch) is not None or os.path.lexists(machine.scratch))


# ---------------------------------------------------------------- LVM

_LVM_ENVIRONMENT = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def logical_volume_name(machine: MachinePaths) -> str:
    """The logical volume of a machine: vac-<uuid> (unique, and found again after a restart)."""
    return f"vac-{machine.machine_uuid}"


def lvm_create_commands(volume_group: str, volume: str, size_bytes: int, mount_point: Path) -> list[list[str]]:
    """The commands that make, format and mount a scratch logical volume."""
    device = f"/dev/{volume_group}/{volume}"
    return [
        # Bytes, as in Vac; LVM rounds up to whole extents.
        ["lvcreate", "--yes", "--name", volume, "--size", f"{size_bytes}b", volume_group],
        [*MKFS_COMMAND, device],
        ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, device, str(mount_point)],
    ]


def lvm_destroy_commands(volume_group: str, volume: str, mount_point: Path | None) -> list[list[str]]:
    """The commands that unmount (if `mount_point` is mounted) and remove a scratch logical volume."""
    commands = [["umount", str(mount_point)]] if mount_point is not None else []
    commands.append(["lvremove", "--yes", "--force", f"{volume_group}/{volume}"])
    return commands


class LvmScratch:
    """An ext4 logical volume in `volume_group`, mounted on the machine's scratch directory.

    Only its command construction is tested here: device-mapper does not work on
    the machines the test suite runs on, so lvcreate cannot succeed there.
    """

    def __init__(self, volume_group: str, runner: Runner = run_command,
                 device_exists: Callable[[str], bool] = os.path.exists) -> None:
        self.volume_group = volume_group
        self._run = runner
        self._device_exists = device_exists

    def _device(self, machine: MachinePaths) -> str:
        return f"/dev/{self.volume_group}/{logical_volume_name(machine)}"

    def _run_all(self, commands: list[list[str]]) -> None:
        for argv in commands:
            timeout = MKFS_TIMEOUT_SECONDS if argv[0].startswith("mkfs") else LVM_TIMEOUT_SECONDS
            self._run(argv, timeout, _LVM_ENVIRONMENT)

    def create(self, machine: MachinePaths, size_bytes: int | None,
               owner: tuple[int, int] | None = None) -> Path:
        if size_bytes is None or size_bytes <= 0:
            raise ScratchError("an LVM scratch volume needs a size (disk_gb_per_processor)")
        ensure_directory(machine.scratch, SCRATCH_DIR_MODE)
        entry = mount_at(machine.scratch)
        if entry is not None and os.path.realpath(entry.source) == os.path.realpath(self._device(machine)):
            log.info("machine %s: reusing mounted scratch volume %s", machine.machine_uuid, entry.source)
        else:
            if entry is not None:
                raise ScratchError(f"{machine.scratch} has {entry.source} mounted, not {self._device(machine)}")
            volume = logical_volume_name(machine)
            if self._device_exists(self._device(machine)):
                # Unmounted means we cannot tell whether mkfs finished: start afresh,
                # as Vac did with leftover volumes.
                self._run_all(lvm_destroy_commands(self.volume_group, volume, None))
            self._run_all(lvm_create_commands(self.volume_group, volume, size_bytes, machine.scratch))
        ensure_directory(machine.scratch, SCRATCH_DIR_MODE, owner)
        return machine.scratch

    def destroy(self, machine: MachinePaths) -> None:
        mounted = mount_at(machine.scratch) is not None
        if mounted or self._device_exists(self._device(machine)):
            self._run_all(lvm_destroy_commands(self.volume_group, logical_volume_name(machine),
                                               machine.scratch if mounted else None))
        _remove_mount_point(machine)

    def exists(self, machine: MachinePaths) -> bool:
        return (self._device_exists(self._device(machine)) or mount_at(machine.scratch) is not None
                or os.path.lexists(machine.scratch))
