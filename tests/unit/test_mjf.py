"""Machine/Job Features: every key and value of INTERFACES.md §4, the files, the shutdown rewrite."""

import os
import stat

import pytest

from vac.machine.layout import create_machine_directory
from vac.machine.mjf import (
    SHUTDOWN_NOTICE_SECONDS,
    MjfInputs,
    jobfeatures,
    lowered_shutdown_time,
    machinefeatures,
    read_shutdown_time,
    rewrite_shutdown_time,
    write_mjf,
)

MACHINE_UUID = "0b8f7c1e-5a2d-4c3b-8e9f-1a2b3c4d5e6f"
START = 1700000000
SHUTDOWN = START + 86400

FULL = MjfInputs(
    machine_uuid=MACHINE_UUID,
    processors=4,
    start_time=START,
    shutdown_time=SHUTDOWN,
    mb_per_processor=2048,
    hs06_per_processor=10.5,
    scratch_bytes=160_000_000_000,
    max_swap_bytes=0,
    notice_seconds=600,
    machinefeatures_options={"site_contact": "admin@example.com"},
)

EXPECTED_MACHINEFEATURES = {
    "total_cpu": "4",
    "hs06": "42.0",
    "shutdowntime": str(SHUTDOWN),
    "phys_cores": "4",
    "log_cores": "4",
    "jobslots": "1",
    "grace_secs": "600",
    "site_contact": "admin@example.com",
}

EXPECTED_JOBFEATURES = {
    "allocated_cpu": "4",
    "wall_limit_secs": "86400",
    "cpu_limit_secs": "345600",
    "jobstart_secs": str(START),
    "shutdowntime_job": str(SHUTDOWN),
    "max_rss_bytes": str(2048 * 4 * 1048576),
    "hs06_job": "42.0",
    "job_id": MACHINE_UUID,
    "max_swap_bytes": "0",
    "scratch_limit_bytes": "160000000000",
    "grace_secs_job": "600",
    "allocated_CPU": "4",
    "cpufactor_lrms": "1.0",
    "cpu_limit_secs_lrms": "345600",
    "wall_limit_secs_lrms": "86400",
    "mem_limit_MB": "8589",
}


def test_every_machinefeatures_key_and_value():
    assert machinefeatures(FULL) == EXPECTED_MACHINEFEATURES


def test_every_jobfeatures_key_and_value():
    assert jobfeatures(FULL) == EXPECTED_JOBFEATURES


def test_without_hs06_and_unknown_extras_those_keys_are_absent():
    minimal = MjfInputs(machine_uuid=MACHINE_UUID, processors=1, start_time=START,
                        shutdown_time=START + 3600, mb_per_processor=2000)

    assert machinefeatures(minimal) == {"total_cpu": "1", "shutdowntime": str(START + 3600),
                                        "phys_cores": "1", "log_cores": "1", "jobslots": "1"}
    assert jobfeatures(minimal) == {
        "allocated_cpu": "1", "wall_limit_secs": "3600", "cpu_limit_secs": "3600",
        "jobstart_secs": str(START), "shutdowntime_job": str(START + 3600),
        "max_rss_bytes": "2097152000", "job_id": MACHINE_UUID, "allocated_CPU": "1",
        "cpufactor_lrms": "1.0", "cpu_limit_secs_lrms": "3600", "wall_limit_secs_lrms": "3600",
        "mem_limit_MB": "2097",
    }


def test_fractional_times_are_whole_seconds_and_late_starts_get_no_negative_limit():
    late = MjfInputs(machine_uuid=MACHINE_UUID, processors=2, start_time=START + 100.7,
                     shutdown_time=START + 50.2, mb_per_processor=1024)

    assert jobfeatures(late)["wall_limit_secs"] == "0"
    assert jobfeatures(late)["cpu_limit_secs"] == "0"
    assert jobfeatures(late)["jobstart_secs"] == str(START + 100)
    assert machinefeatures(late)["shutdowntime"] == str(START + 50)


def test_site_options_cannot_override_computed_keys():
    inputs = MjfInputs(machine_uuid=MACHINE_UUID, processors=2, start_time=START, shutdown_time=SHUTDOWN,
                       mb_per_processor=1024, machinefeatures_options={"total_cpu": "64", "extra": "y"})

    assert machinefeatures(inputs)["total_cpu"] == "2"
    assert machinefeatures(inputs)["extra"] == "y"


@pytest.mark.parametrize("name", ["../evil", "a/b", "Upper", ""])
def test_bad_option_names_are_refused(name):
    inputs = MjfInputs(machine_uuid=MACHINE_UUID, processors=1, start_time=START, shutdown_time=SHUTDOWN,
                       mb_per_processor=1024, machinefeatures_options={name: "x"})
    with pytest.raises(ValueError):
        machinefeatures(inputs)


def test_write_mjf_writes_one_file_per_key_without_newline(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)

    write_mjf(paths, FULL)

    machine_files = {path.name: path.read_text() for path in paths.machinefeatures.iterdir()}
    job_files = {path.name: path.read_text() for path in paths.jobfeatures.iterdir()}
    assert machine_files == EXPECTED_MACHINEFEATURES
    assert job_files == EXPECTED_JOBFEATURES
    modes = {stat.S_IMODE(os.lstat(path).st_mode)
             for directory in (paths.machinefeatures, paths.jobfeatures) for path in directory.iterdir()}
    assert modes == {0o644}
    assert [entry.name for entry in paths.root.iterdir() if entry.name.startswith(".")] == []


def test_write_mjf_again_replaces_every_value_and_follows_no_symlink(tmp_path):
    # A preparation repeated after a crash finds the keys of its first attempt.
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    (paths.jobfeatures / "allocated_cpu").write_text("a much longer earlier value")
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    (paths.machinefeatures / "hs06").symlink_to(outside)
    old_umask = os.umask(0o077)
    try:
        with pytest.raises(OSError):
            write_mjf(paths, FULL)
        (paths.machinefeatures / "hs06").unlink()
        write_mjf(paths, FULL)
    finally:
        os.umask(old_umask)

    assert outside.read_text() == "untouched"
    assert {path.name: path.read_text() for path in paths.jobfeatures.iterdir()} == EXPECTED_JOBFEATURES
    assert {path.name: path.read_text() for path in paths.machinefeatures.iterdir()} == EXPECTED_MACHINEFEATURES
    assert {stat.S_IMODE(os.lstat(path).st_mode) for path in paths.jobfeatures.iterdir()} == {0o644}


def test_global_shutdown_time_lowers_only_the_two_shutdown_keys(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    write_mjf(paths, FULL)
    before_jobfeatures = {path.name: path.read_text() for path in paths.jobfeatures.iterdir()}

    assert rewrite_shutdown_time(paths, SHUTDOWN - 7200) == SHUTDOWN - 7200

    assert (paths.machinefeatures / "shutdowntime").read_text() == str(SHUTDOWN - 7200)
    assert (paths.jobfeatures / "shutdowntime_job").read_text() == str(SHUTDOWN - 7200)
    after_jobfeatures = {path.name: path.read_text() for path in paths.jobfeatures.iterdir()}
    changed = {key for key in after_jobfeatures if after_jobfeatures[key] != before_jobfeatures[key]}
    assert changed == {"shutdowntime_job"}
    assert read_shutdown_time(paths) == SHUTDOWN - 7200


@pytest.mark.parametrize("global_time", [SHUTDOWN, SHUTDOWN + 1])
def test_global_shutdown_time_never_raises_the_deadline(tmp_path, global_time):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    write_mjf(paths, FULL)

    assert rewrite_shutdown_time(paths, global_time) is None
    assert (paths.machinefeatures / "shutdowntime").read_text() == str(SHUTDOWN)
    assert (paths.jobfeatures / "shutdowntime_job").read_text() == str(SHUTDOWN)


def test_rewrite_is_repeatable_and_keeps_the_lowest(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    write_mjf(paths, FULL)

    rewrite_shutdown_time(paths, SHUTDOWN - 100)
    assert rewrite_shutdown_time(paths, SHUTDOWN - 100) is None
    assert rewrite_shutdown_time(paths, SHUTDOWN - 50) is None
    assert read_shutdown_time(paths) == SHUTDOWN - 100


def test_rewrite_without_mjf_changes_nothing(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)

    assert rewrite_shutdown_time(paths, START) is None
    assert list(paths.jobfeatures.iterdir()) == []


def test_lowered_shutdown_time_is_pure():
    assert lowered_shutdown_time(10000, 9000, now=100, notice_seconds=600) == 9000
    assert lowered_shutdown_time(10000, 10000, now=100, notice_seconds=600) is None
    assert lowered_shutdown_time(10000, None, now=100, notice_seconds=600) is None


@pytest.mark.parametrize("current, global_time, now, expected", [
    (10000, 0, 5000, 5600),          # a global shutdown_time in the past: now + the notice
    (10000, 5100, 5000, 5600),       # one sooner than the notice: now + the notice
    (10000, 5600, 5000.5, 5601),     # a fraction of a second never shortens the notice
    (10000, 7000, 5000, 7000),       # one later than the notice is kept
    (5500, 0, 5000, None),           # already due within the notice: left alone, never raised
    (5600, 0, 5000, None),
])
def test_a_lowering_never_goes_below_now_plus_the_notice(current, global_time, now, expected):
    new_time = lowered_shutdown_time(current, global_time, now, notice_seconds=600)
    assert new_time == expected
    if new_time is not None:
        assert new_time >= now + 600 and new_time < current


def test_the_announced_notice_is_the_default_floor():
    assert MjfInputs.__dataclass_fields__["notice_seconds"].default is None
    now = 1_700_000_000
    assert lowered_shutdown_time(now + 86400, now, now) == now + SHUTDOWN_NOTICE_SECONDS
