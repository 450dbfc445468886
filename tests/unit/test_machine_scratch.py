"""Scratch space without mounting anything: directory backend, tmp_binds, mountinfo, LVM commands."""

import os
import stat

import pytest

from vac.machine.layout import create_machine_directory
from vac.machine.scratch import (
    DirectoryScratch,
    LvmScratch,
    ScratchError,
    bind_directory_name,
    lvm_create_commands,
    lvm_destroy_commands,
    make_tmp_binds,
    scratch_size_bytes,
)

MACHINE_UUID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


@pytest.fixture
def machine(tmp_path):
    return create_machine_directory(tmp_path, MACHINE_UUID)


def test_size_is_gb_per_processor_times_processors_in_powers_of_ten():
    assert scratch_size_bytes(40, 4) == 160_000_000_000
    assert scratch_size_bytes(2.5, 2) == 5_000_000_000
    assert scratch_size_bytes(None, 4) is None


def test_directory_backend_creates_reuses_and_destroys(machine):
    backend = DirectoryScratch()

    path = backend.create(machine, None)
    (path / "work").write_text("data")
    again = backend.create(machine, None)

    assert path == again == machine.scratch
    assert (again / "work").read_text() == "data"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    assert backend.exists(machine)
    backend.destroy(machine)
    backend.destroy(machine)
    assert not backend.exists(machine)


def test_directory_backend_destroy_does_not_follow_symlinks_out(machine, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    backend = DirectoryScratch()
    scratch = backend.create(machine, None)
    (scratch / "link").symlink_to(outside)

    backend.destroy(machine)

    assert (outside / "precious").read_text() == "keep"


@pytest.mark.parametrize("index, container_path, expected", [
    (0, "/tmp", "00-tmp"),
    (1, "/var/tmp", "01-var_tmp"),
    (2, "/a_b", "02-a_b"),
    (3, "/a/b", "03-a_b"),
    (4, "/scratch dir/x", "04-scratch_dir_x"),
])
def test_bind_directory_names_are_safe_and_unique(index, container_path, expected):
    assert bind_directory_name(index, container_path) == expected


@pytest.mark.parametrize("bad", ["tmp", "/", "/tmp/../etc", "/tmp/", "//tmp", "/tmp/./x", ""])
def test_unclean_container_paths_are_refused(bad):
    with pytest.raises(ValueError):
        bind_directory_name(0, bad)


def test_tmp_binds_are_fresh_writable_directories_kept_across_restarts(machine):
    scratch = DirectoryScratch().create(machine, None)

    binds = make_tmp_binds(scratch, ["/tmp", "/var/tmp"])
    (binds[0][0] / "file").write_text("in use")
    again = make_tmp_binds(scratch, ["/tmp", "/var/tmp"])

    assert again == binds
    assert [container for _, container in binds] == ["/tmp", "/var/tmp"]
    assert all(host.parent == scratch / "binds" for host, _ in binds)
    assert {stat.S_IMODE(os.lstat(host).st_mode) for host, _ in binds} == {0o1777}
    assert (binds[0][0] / "file").read_text() == "in use"


def test_lvm_create_command_lines(tmp_path):
    assert lvm_create_commands("vac_volume_group", "vac-x", 80_000_000_000, tmp_path / "scratch") == [
        ["lvcreate", "--yes", "--name", "vac-x", "--size", "80000000000b", "vac_volume_group"],
        ["mkfs.ext4", "-F", "-q", "-m", "0", "-E", "nodiscard", "/dev/vac_volume_group/vac-x"],
        ["mount", "-t", "ext4", "-o", "nodev,nosuid", "/dev/vac_volume_group/vac-x", str(tmp_path / "scratch")],
    ]


def test_lvm_destroy_command_lines(tmp_path):
    assert lvm_destroy_commands("vg", "vac-x", tmp_path / "scratch") == [
        ["umount", str(tmp_path / "scratch")],
        ["lvremove", "--yes", "--force", "vg/vac-x"],
    ]
    assert lvm_destroy_commands("vg", "vac-x", None) == [["lvremove", "--yes", "--force", "vg/vac-x"]]


class RecordingRunner:
    """Records commands instead of running them (device-mapper is unavailable here)."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, timeout, env):
        assert timeout > 0
        self.calls.append((list(argv), dict(env or {})))


def test_lvm_backend_runs_create_then_destroy(machine):
    runner = RecordingRunner()
    backend = LvmScratch("vg0", runner=runner, device_exists=lambda device: False)

    path = backend.create(machine, 2_000_000_000)

    volume = f"vac-{MACHINE_UUID}"
    assert path == machine.scratch
    assert [argv for argv, _ in runner.calls] == lvm_create_commands("vg0", volume, 2_000_000_000, machine.scratch)
    assert all(env == {"LVM_SUPPRESS_FD_WARNINGS": "1"} for _, env in runner.calls)


def test_lvm_backend_replaces_an_unmounted_leftover_volume(machine):
    runner = RecordingRunner()
    backend = LvmScratch("vg0", runner=runner, device_exists=lambda device: True)

    backend.create(machine, 1_000_000_000)

    volume = f"vac-{MACHINE_UUID}"
    assert [argv for argv, _ in runner.calls] == (
        lvm_destroy_commands("vg0", volume, None) + lvm_create_commands("vg0", volume, 1_000_000_000,
                                                                        machine.scratch))


def test_lvm_backend_destroy_removes_volume_and_mount_point(machine):
    runner = RecordingRunner()
    machine.scratch.mkdir()
    backend = LvmScratch("vg0", runner=runner, device_exists=lambda device: True)

    backend.destroy(machine)

    assert [argv for argv, _ in runner.calls] == [["lvremove", "--yes", "--force", f"vg0/vac-{MACHINE_UUID}"]]
    assert not machine.scratch.exists()


def test_sized_backends_need_a_size(machine):
    with pytest.raises(ScratchError):
        LvmScratch("vg0", runner=RecordingRunner()).create(machine, None)
