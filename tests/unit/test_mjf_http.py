"""Machine/Job Features over HTTP: the URLs, what a request path names, and the files it reads."""

import os
import stat

import pytest

from vac.machine.layout import create_machine_directory
from vac.machine.mjf import MjfInputs, rewrite_shutdown_time, write_mjf
from vac.machine.mjf_http import (MAX_VALUE_BYTES, TOKEN_FILE_NAME, FeaturesRequest, FeatureTooLarge,
                                  ensure_token, features_urls, parse_path, read_feature, read_token)

MACHINE = "0b8f7c1e-5a2d-4c3b-8e9f-1a2b3c4d5e6f"
OTHER_MACHINE = "7d1c2b3a-0000-4c3b-8e9f-1a2b3c4d5e6f"
TOKEN = "0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "fedcba9876543210fedcba9876543210"
START = 1700000000
SHUTDOWN = START + 86400


def test_the_urls_name_the_machine_and_its_token_without_a_trailing_slash():
    urls = features_urls("http://172.17.0.1:9713", MACHINE, TOKEN)
    assert urls.machinefeatures == f"http://172.17.0.1:9713/{MACHINE}/{TOKEN}/machinefeatures"
    assert urls.jobfeatures == f"http://172.17.0.1:9713/{MACHINE}/{TOKEN}/jobfeatures"
    assert features_urls("http://127.0.0.1:1/", MACHINE, TOKEN).jobfeatures.startswith("http://127.0.0.1:1/0b8f")


@pytest.mark.parametrize("machine, token", [("not-a-uuid", TOKEN), (MACHINE, "short"), (MACHINE, TOKEN.upper())])
def test_no_url_is_made_for_a_bad_uuid_or_token(machine, token):
    with pytest.raises(ValueError):
        features_urls("http://127.0.0.1:1", machine, token)


@pytest.mark.parametrize("target, expected", [
    (f"/{MACHINE}/{TOKEN}/machinefeatures/total_cpu", FeaturesRequest(MACHINE, TOKEN, "machinefeatures", "total_cpu")),
    (f"/{MACHINE}/{TOKEN}/jobfeatures/allocated_CPU", FeaturesRequest(MACHINE, TOKEN, "jobfeatures", "allocated_CPU")),
    (f"/{MACHINE}/{TOKEN}/jobfeatures", FeaturesRequest(MACHINE, TOKEN, "jobfeatures", None)),
    (f"/{MACHINE}/{TOKEN}/jobfeatures/", FeaturesRequest(MACHINE, TOKEN, "jobfeatures", None)),
    # A reader that adds a slash of its own to the URL.
    (f"/{MACHINE}/{TOKEN}/jobfeatures//wall_limit_secs",
     FeaturesRequest(MACHINE, TOKEN, "jobfeatures", "wall_limit_secs")),
    (f"/{MACHINE}/{TOKEN}/jobfeatures/job_id?x=1", FeaturesRequest(MACHINE, TOKEN, "jobfeatures", "job_id")),
    (f"/{MACHINE}/{TOKEN}/jobfeatures/job_id".encode(), FeaturesRequest(MACHINE, TOKEN, "jobfeatures", "job_id")),
])
def test_a_path_names_a_machines_key_or_its_listing(target, expected):
    assert parse_path(target) == expected


@pytest.mark.parametrize("target", [
    "/", "", "/metrics", f"/{MACHINE}", f"/{MACHINE}/{TOKEN}",
    f"{MACHINE}/{TOKEN}/jobfeatures/job_id",                         # not absolute
    f"/{MACHINE.upper()}/{TOKEN}/jobfeatures/job_id",                # not the canonical UUID
    f"/{MACHINE}/{TOKEN[:-1]}/jobfeatures/job_id",                   # a short token
    f"/{MACHINE}/{TOKEN.upper()}/jobfeatures/job_id",
    f"/{MACHINE}/{TOKEN}/joboutputs/shutdown_message",               # only the two features directories
    f"/{MACHINE}/{TOKEN}/../{OTHER_MACHINE}/jobfeatures/job_id",
    f"/{MACHINE}/{TOKEN}/jobfeatures/..",
    f"/{MACHINE}/{TOKEN}/jobfeatures/.job_id.tmp-1-ab",              # a temp file of write_atomic
    f"/{MACHINE}/{TOKEN}/jobfeatures/%2e%2e",
    f"/{MACHINE}/{TOKEN}/jobfeatures/job_id/more",
    f"/{MACHINE}/{TOKEN}/jobfeatures/" + "k" * 129,
    f"/{MACHINE}/{TOKEN}/jobfeatures/job_id".encode() + b"\xff",
    "/" + "a/" * 600,
    b"/" + b"a" * 2000,
])
def test_anything_else_names_nothing(target):
    assert parse_path(target) is None


def machine(tmp_path, uuid=MACHINE, token=TOKEN):
    paths = create_machine_directory(tmp_path, uuid)
    write_mjf(paths, MjfInputs(machine_uuid=uuid, processors=4, start_time=START, shutdown_time=SHUTDOWN,
                               mb_per_processor=2048, notice_seconds=600))
    (paths.root / TOKEN_FILE_NAME).write_text(token)
    return paths


def request(key, directory="jobfeatures", uuid=MACHINE, token=TOKEN):
    return FeaturesRequest(uuid, token, directory, key)


def test_a_key_is_read_from_the_machines_directory(tmp_path):
    machine(tmp_path)
    assert read_feature(tmp_path, request("allocated_cpu")) == b"4"
    assert read_feature(tmp_path, request("shutdowntime", "machinefeatures")) == str(SHUTDOWN).encode()
    assert read_feature(tmp_path, request("job_id")) == MACHINE.encode()


def test_values_are_read_when_asked_so_a_lowered_shutdown_time_shows_at_once(tmp_path):
    paths = machine(tmp_path)
    assert read_feature(tmp_path, request("shutdowntime_job")) == str(SHUTDOWN).encode()
    rewrite_shutdown_time(paths, SHUTDOWN - 3600)
    assert read_feature(tmp_path, request("shutdowntime_job")) == str(SHUTDOWN - 3600).encode()
    assert read_feature(tmp_path, request("shutdowntime", "machinefeatures")) == str(SHUTDOWN - 3600).encode()


def test_a_listing_names_the_keys_only(tmp_path):
    paths = machine(tmp_path)
    (paths.jobfeatures / ".half-written.tmp").write_text("x")
    os.mkdir(paths.jobfeatures / "subdirectory")
    os.symlink("/etc/shadow", paths.jobfeatures / "linked")
    listing = read_feature(tmp_path, request(None)).decode().splitlines()
    assert listing == sorted(listing)
    assert {"allocated_cpu", "job_id", "wall_limit_secs", "shutdowntime_job"} <= set(listing)
    assert not {".half-written.tmp", "subdirectory", "linked"} & set(listing)


@pytest.mark.parametrize("asked", [
    request("allocated_cpu", token=OTHER_TOKEN),          # a guessed token
    request("allocated_cpu", uuid=OTHER_MACHINE),         # another machine's UUID with this one's token
    request("no_such_key"),
])
def test_a_wrong_token_another_machine_or_a_missing_key_is_not_found(tmp_path, asked):
    machine(tmp_path)
    machine(tmp_path, OTHER_MACHINE, OTHER_TOKEN)
    assert read_feature(tmp_path, asked) is None


def test_nothing_is_found_without_a_machines_directory_or_a_token(tmp_path):
    assert read_feature(tmp_path, request("allocated_cpu")) is None
    paths = machine(tmp_path)
    (paths.root / TOKEN_FILE_NAME).unlink()
    assert read_feature(tmp_path, request("allocated_cpu")) is None


def test_a_finished_machine_is_no_longer_served(tmp_path):
    paths = machine(tmp_path)
    paths.finished_marker.write_text("")
    assert read_feature(tmp_path, request("allocated_cpu")) is None


def test_no_symlink_is_followed_anywhere_on_the_way(tmp_path):
    paths = machine(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    os.symlink(secret, paths.jobfeatures / "linked_key")
    assert read_feature(tmp_path, request("linked_key")) is None
    # A features directory replaced by a link to another directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "allocated_cpu").write_text("64")
    os.rename(paths.jobfeatures, tmp_path / "moved")
    os.symlink(elsewhere, paths.jobfeatures)
    assert read_feature(tmp_path, request("allocated_cpu")) is None
    # A token file that is a link to a file holding the right token.
    (tmp_path / "token-copy").write_text(TOKEN)
    (paths.root / TOKEN_FILE_NAME).unlink()
    os.symlink(tmp_path / "token-copy", paths.root / TOKEN_FILE_NAME)
    assert read_feature(tmp_path, request("shutdowntime", "machinefeatures")) is None


def test_a_machine_directory_that_is_a_symlink_is_not_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    machine(real)
    (tmp_path / "machines").mkdir()
    os.symlink(real / "machines" / MACHINE, tmp_path / "machines" / MACHINE)
    assert read_feature(real, request("allocated_cpu")) == b"4"
    assert read_feature(tmp_path, request("allocated_cpu")) is None


def test_a_fifo_or_a_directory_as_a_key_is_not_read(tmp_path):
    paths = machine(tmp_path)
    os.mkfifo(paths.jobfeatures / "fifo")
    os.mkdir(paths.jobfeatures / "directory")
    assert read_feature(tmp_path, request("fifo")) is None
    assert read_feature(tmp_path, request("directory")) is None


def test_a_value_larger_than_the_bound_is_refused(tmp_path):
    paths = machine(tmp_path)
    (paths.machinefeatures / "huge").write_bytes(b"x" * (MAX_VALUE_BYTES + 1))
    (paths.machinefeatures / "largest").write_bytes(b"x" * MAX_VALUE_BYTES)
    assert len(read_feature(tmp_path, request("largest", "machinefeatures"))) == MAX_VALUE_BYTES
    with pytest.raises(FeatureTooLarge):
        read_feature(tmp_path, request("huge", "machinefeatures"))


def test_a_machine_gets_one_private_token_that_preparing_again_keeps(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE)
    assert read_token(paths) is None
    token = ensure_token(paths)
    assert len(token) == 32 and int(token, 16) >= 0
    assert stat.S_IMODE(os.stat(paths.root / TOKEN_FILE_NAME).st_mode) == 0o600
    assert ensure_token(paths) == token
    other = ensure_token(create_machine_directory(tmp_path, OTHER_MACHINE))
    assert other != token


def test_a_damaged_token_file_is_no_token(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE)
    (paths.root / TOKEN_FILE_NAME).write_text("not hex")
    assert read_token(paths) is None
    with pytest.raises(OSError):
        ensure_token(paths)
