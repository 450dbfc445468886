"""Scratch backends on the real system: a loop-mounted ext4 image with a real quota."""

import errno
import os
import shutil
import subprocess
import uuid

import pytest

from vac.machine.layout import create_machine_directory
from vac.machine.scratch import (
    LoopScratch,
    ScratchError,
    loop_backing_files,
    make_tmp_binds,
    run_command,
)
from vac.mountinfo import mount_at

SIZE = 64 * 1000 * 1000
MIB = 1024 * 1024

needs_root_and_loop = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or not os.path.exists("/dev/loop-control"),
    reason="loop-mounting needs root, mkfs.ext4 and /dev/loop-control")


def _devices_for(image):
    return [device for device, backing in loop_backing_files().items()
            if backing == os.path.realpath(image)]


@pytest.fixture
def machine(tmp_state_dir):
    paths = create_machine_directory(tmp_state_dir, str(uuid.uuid4()))
    yield paths
    # Whatever the test did, leave nothing mounted or attached behind.
    if mount_at(paths.scratch) is not None:
        subprocess.run(["umount", "-l", str(paths.scratch)], check=False, timeout=30)
    for device in _devices_for(paths.scratch_image):
        subprocess.run(["losetup", "--detach", device], check=False, timeout=30)


@needs_root_and_loop
def test_loop_scratch_is_a_mounted_ext4_filesystem_of_the_right_size(machine):
    path = LoopScratch().create(machine, SIZE)

    entry = mount_at(path)
    usage = os.statvfs(path)
    assert path == machine.scratch
    assert entry.fstype == "ext4"
    assert _devices_for(machine.scratch_image) == [entry.source]
    assert os.stat(machine.scratch_image).st_size == SIZE
    # ext4 keeps some of the image for its journal and tables; never more than the image.
    assert 0.8 * SIZE <= usage.f_blocks * usage.f_frsize <= SIZE
    assert usage.f_flag & os.ST_NODEV and usage.f_flag & os.ST_NOSUID
    assert oct(os.stat(path).st_mode & 0o7777) == oct(0o700)


@needs_root_and_loop
def test_loop_scratch_refuses_writes_beyond_its_size(machine):
    path = LoopScratch().create(machine, SIZE)
    bind = make_tmp_binds(path, ["/tmp"])[0][0]

    written = 0
    with pytest.raises(OSError) as caught:
        with open(bind / "filler", "wb") as filler:
            chunk = b"\xa5" * MIB
            while written < 2 * SIZE:
                filler.write(chunk)
                filler.flush()
                written += len(chunk)
            os.fsync(filler.fileno())

    assert caught.value.errno == errno.ENOSPC
    assert written <= SIZE


@needs_root_and_loop
def test_create_again_after_a_restart_reuses_the_mounted_image(machine):
    backend = LoopScratch()
    backend.create(machine, SIZE)
    (machine.scratch / "payload").write_text("still here")
    device = mount_at(machine.scratch).source

    LoopScratch().create(machine, SIZE)

    assert mount_at(machine.scratch).source == device
    assert _devices_for(machine.scratch_image) == [device]
    assert (machine.scratch / "payload").read_text() == "still here"


@needs_root_and_loop
def test_create_after_a_reboot_mounts_the_existing_image_again(machine):
    backend = LoopScratch()
    backend.create(machine, SIZE)
    (machine.scratch / "payload").write_text("survived")
    run_command(["umount", str(machine.scratch)], 30)

    backend.create(machine, SIZE)

    assert mount_at(machine.scratch) is not None
    assert (machine.scratch / "payload").read_text() == "survived"


@needs_root_and_loop
def test_destroy_leaves_nothing_mounted_attached_or_on_disk(machine):
    backend = LoopScratch()
    backend.create(machine, SIZE)
    make_tmp_binds(machine.scratch, ["/tmp", "/var/tmp"])

    backend.destroy(machine)
    backend.destroy(machine)

    assert mount_at(machine.scratch) is None
    assert _devices_for(machine.scratch_image) == []
    assert not machine.scratch_image.exists()
    assert not machine.scratch.exists()
    assert not backend.exists(machine)
    assert machine.joboutputs.is_dir()  # the machine directory itself stays


@needs_root_and_loop
def test_interrupted_image_creation_is_cleaned_up_and_redone(machine):
    half_made = machine.root / ".scratch.img.new"
    half_made.write_bytes(b"\0" * 4096)
    backend = LoopScratch()
    assert backend.exists(machine)

    backend.create(machine, SIZE)
    assert mount_at(machine.scratch) is not None
    assert not half_made.exists()
    backend.destroy(machine)
    assert not backend.exists(machine)


@needs_root_and_loop
def test_something_else_mounted_on_scratch_is_refused(machine):
    machine.scratch.mkdir()
    run_command(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(machine.scratch)], 30)

    with pytest.raises(ScratchError, match="not .*scratch.img"):
        LoopScratch().create(machine, SIZE)
    with pytest.raises(ScratchError):
        LoopScratch().destroy(machine)
    assert mount_at(machine.scratch).fstype == "tmpfs"
    run_command(["umount", str(machine.scratch)], 30)


def test_run_command_reports_exit_status_output_and_timeout():
    run_command(["true"], 5)
    with pytest.raises(ScratchError, match="exited with 3: boom"):
        run_command(["sh", "-c", "echo boom >&2; exit 3"], 5)
    with pytest.raises(ScratchError, match="did not finish within 0.2 s"):
        run_command(["sleep", "5"], 0.2)
    with pytest.raises(ScratchError, match="cannot run"):
        run_command(["/nonexistent/command"], 5)
