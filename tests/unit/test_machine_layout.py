"""Machine names, the machine directory, the lifecycle record and atomic writes."""

import os
import stat
import uuid

import pytest

from vac.machine.atomicfile import create_atomic, write_atomic
from vac.machine.layout import (
    MachinePaths,
    create_machine_directory,
    ensure_directory,
    iter_machine_directories,
    machine_name,
)
from vac.machine.record import MachineRecord, is_finished, mark_finished, read_record, write_record

MACHINE_UUID = "6f1c9a52-3d4e-4b7a-9c1d-2e3f4a5b6c7d"


@pytest.mark.parametrize("factory, slot, expected", [
    ("f1.example.com", 3, "f1-03.example.com"),
    ("f1.example.com", 0, "f1-00.example.com"),
    ("f1.example.com", 42, "f1-42.example.com"),
    ("f1.example.com", 123, "f1-123.example.com"),
    ("worker7.grid.site.ac.uk", 9, "worker7-09.grid.site.ac.uk"),
    ("localhost", 3, "localhost-03"),
])
def test_machine_names_follow_vac(factory, slot, expected):
    assert machine_name(factory, slot) == expected


@pytest.mark.parametrize("factory, slot", [("f1.example.com", -1), (".example.com", 1), ("", 0)])
def test_machine_name_rejects_nonsense(factory, slot):
    with pytest.raises(ValueError):
        machine_name(factory, slot)


@pytest.mark.parametrize("bad", ["..", "../etc", "6F1C9A52-3D4E-4B7A-9C1D-2E3F4A5B6C7D", "a/b", ""])
def test_machine_paths_accept_only_canonical_uuids(tmp_path, bad):
    with pytest.raises(ValueError):
        MachinePaths.for_machine(tmp_path, bad)


def test_machine_directory_layout_and_modes(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)

    assert paths.root == tmp_path / "machines" / MACHINE_UUID
    modes = {path.name: stat.S_IMODE(os.lstat(path).st_mode)
             for path in (paths.root.parent, paths.root, paths.machinefeatures, paths.jobfeatures,
                          paths.joboutputs)}
    assert modes == {"machines": 0o711, MACHINE_UUID: 0o700, "machinefeatures": 0o755,
                     "jobfeatures": 0o755, "joboutputs": 0o755}


def test_machine_directory_for_singularity_lets_its_group_in(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID, container_gid=4321, container_owner=(1234, 4321))

    root = os.lstat(paths.root)
    joboutputs = os.lstat(paths.joboutputs)
    assert (stat.S_IMODE(root.st_mode), root.st_gid) == (0o710, 4321)
    assert (joboutputs.st_uid, joboutputs.st_gid) == (1234, 4321)


def test_machine_directory_creation_is_repeatable(tmp_path):
    first = create_machine_directory(tmp_path, MACHINE_UUID)
    (first.joboutputs / "kept").write_text("x")
    second = create_machine_directory(tmp_path, MACHINE_UUID)

    assert second == first
    assert (second.joboutputs / "kept").read_text() == "x"


def test_ensure_directory_refuses_a_symlink(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    os.chmod(tmp_path / "elsewhere", 0o755)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(NotADirectoryError):
        ensure_directory(tmp_path / "link", 0o700, owner=(1234, 1234))
    target = os.stat(tmp_path / "elsewhere")
    assert (stat.S_IMODE(target.st_mode), target.st_uid) == (0o755, os.getuid())


def test_iter_machine_directories_lists_only_machines(tmp_path):
    uuids = sorted(str(uuid.uuid4()) for _ in range(3))
    for machine_uuid in uuids:
        create_machine_directory(tmp_path, machine_uuid)
    (tmp_path / "machines" / "not-a-machine").mkdir()
    (tmp_path / "machines" / "somefile").write_text("")

    assert [paths.machine_uuid for paths in iter_machine_directories(tmp_path)] == uuids
    assert list(iter_machine_directories(tmp_path / "missing")) == []
    # One machine's alone: nothing else is looked at, and a name that is not a UUID finds nothing.
    [one] = iter_machine_directories(tmp_path, uuids[1])
    assert (one.machine_uuid, one.root) == (uuids[1], tmp_path / "machines" / uuids[1])
    assert list(iter_machine_directories(tmp_path, str(uuid.uuid4()))) == []
    assert list(iter_machine_directories(tmp_path, "not-a-machine")) == []
    assert list(iter_machine_directories(tmp_path, "../machines/" + uuids[0])) == []


def _record(**changes):
    values = dict(machine_uuid=MACHINE_UUID, slot=3, machine_name="f1-03.example.com",
                  machinetype="lhcb-prod", machine_model="docker", processors=2,
                  created=1700000000.5, shutdown_time=1700086400)
    values.update(changes)
    return MachineRecord(**values)


def test_record_round_trip_and_mode(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    record = _record(state="running", container_id="abc123", started=1700000001.0)

    write_record(paths, record)

    assert read_record(paths) == record
    assert stat.S_IMODE(os.lstat(paths.record).st_mode) == 0o600
    assert [entry.name for entry in paths.root.iterdir() if entry.name.startswith(".")] == []


def test_record_rewrite_replaces_the_old_state(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    write_record(paths, _record(state="preparing"))
    write_record(paths, _record(state="finishing", exit_code=0))

    assert read_record(paths).state == "finishing"
    assert read_record(paths).exit_code == 0


@pytest.mark.parametrize("content", [
    b"",
    b'{"machine_uuid": "6f1c9a52-3d4e-4b7a-9c1d-2e3f4a5b6c7d", "slot": 3, "mach',
    b"\x00\x01garbage",
    b"[1, 2, 3]",
    b'{"machine_uuid": "6f1c9a52-3d4e-4b7a-9c1d-2e3f4a5b6c7d"}',
])
def test_damaged_record_reads_as_none(tmp_path, content):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    paths.record.write_bytes(content)

    assert read_record(paths) is None


def test_missing_record_reads_as_none(tmp_path):
    assert read_record(create_machine_directory(tmp_path, MACHINE_UUID)) is None


def test_record_of_another_machine_is_ignored(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    paths.record.write_bytes(_record(machine_uuid=str(uuid.uuid4())).to_json())

    assert read_record(paths) is None


def test_record_from_a_newer_version_keeps_known_fields(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    paths.record.write_bytes(_record().to_json().replace(b'"slot"', b'"future_field": 1, "slot"'))

    assert read_record(paths) == _record()


def test_finished_marker_is_created_once(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)

    assert not is_finished(paths)
    assert mark_finished(paths, 1700000500.0) is True
    assert mark_finished(paths, 1700000999.0) is False
    assert is_finished(paths)
    assert paths.finished_marker.read_text() == "1700000500\n"


def test_write_atomic_sets_mode_despite_umask(tmp_path):
    old_umask = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f", b"data", 0o644)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.lstat(tmp_path / "f").st_mode) == 0o644
    assert (tmp_path / "f").read_bytes() == b"data"


def test_write_atomic_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "target"
    target.write_text("original")
    (tmp_path / "f").symlink_to(target)

    write_atomic(tmp_path / "f", b"new")

    assert target.read_text() == "original"
    assert not (tmp_path / "f").is_symlink()


def test_create_atomic_never_replaces_and_leaves_no_temp_files(tmp_path):
    assert create_atomic(tmp_path / "f", b"first") is True
    assert create_atomic(tmp_path / "f", b"second") is False

    assert (tmp_path / "f").read_bytes() == b"first"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["f"]
