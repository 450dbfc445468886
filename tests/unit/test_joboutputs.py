"""Reading and writing joboutputs safely when the container controls what is in it."""

import os
import signal
import stat

import pytest

from vac.machine.joboutputs import (
    EXCEEDED_WALLCLOCK,
    FAILED_TO_START,
    HEARTBEAT_NOT_CREATED,
    HEARTBEAT_NOT_UPDATED,
    MAX_MESSAGE_BYTES,
    SHUTDOWN_BY_FACTORY,
    JoboutputsDirectory,
    MessageReading,
    ShutdownMessage,
    parse_shutdown_message,
)

SECRET = "root-only secret\n"


@pytest.fixture
def joboutputs(tmp_path):
    directory = tmp_path / "joboutputs"
    directory.mkdir()
    with JoboutputsDirectory(directory) as opened:
        yield opened


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "shadow"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def alarm():
    """Fail instead of hanging if a read blocks."""
    def on_alarm(signum, frame):
        raise TimeoutError("a joboutputs read blocked")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("content, expected", [
    (b"200 Success", ShutdownMessage(200, "Success")),
    (b"300 No more work\n", ShutdownMessage(300, "No more work")),
    (b"700 Transient problem\nsecond line ignored\n", ShutdownMessage(700, "Transient problem")),
    (b"  100 Shut down by the host  \r\n", ShutdownMessage(100, "Shut down by the host")),
    (b"500", ShutdownMessage(500, "")),
    (b"400\tbanned", ShutdownMessage(400, "banned")),
    (b"600 bad \x1b[31m escape", ShutdownMessage(600, "bad ?[31m escape")),
    (b"200 caf\xc3\xa9", ShutdownMessage(200, "caf\u00e9")),
])
def test_parse_valid_messages(content, expected):
    assert parse_shutdown_message(content) == MessageReading(expected)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b"OK done", "not 'NNN text'"),
    (b"20 too short", "not 'NNN text'"),
    (b"2000 too long", "not 'NNN text'"),
    (b"099 leading zero", "not 'NNN text'"),
    (b"\nempty first line then 200 ok", "not 'NNN text'"),
    (b"\xff\xfe\xfd", "not 'NNN text'"),
])
def test_malformed_messages_give_none_and_a_reason(content, reason):
    reading = parse_shutdown_message(content)
    assert reading.message is None
    assert reason in reading.reason


def test_factory_messages_are_the_documented_lines():
    assert [message.line() for message in (EXCEEDED_WALLCLOCK, HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED,
                                           FAILED_TO_START, SHUTDOWN_BY_FACTORY)] == [
        "700 Exceeded max_wallclock_seconds", "700 Heartbeat file not created",
        "700 Heartbeat file not updated", "700 Failed to start", "100 Shutdown requested by the factory"]


def test_reads_the_containers_message(joboutputs):
    (joboutputs.path / "shutdown_message").write_text("200 Work completed\n")

    assert joboutputs.read_shutdown_message() == MessageReading(ShutdownMessage(200, "Work completed"))


def test_missing_message(joboutputs):
    reading = joboutputs.read_shutdown_message()
    assert reading.message is None
    assert "no shutdown_message" in reading.reason


def test_symlink_to_root_only_file_leaks_nothing_and_is_not_written_through(joboutputs, secret_file):
    secret_file.write_text("200 " + SECRET)
    (joboutputs.path / "shutdown_message").symlink_to(secret_file)

    reading = joboutputs.read_shutdown_message()
    written = joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK)

    assert reading.message is None and "symlink" in reading.reason
    assert "secret" not in reading.reason
    assert written is False
    assert secret_file.read_text() == "200 " + SECRET
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600


def test_dangling_symlink_is_not_followed_to_create_a_file(joboutputs, tmp_path):
    target = tmp_path / "created-through-link"
    (joboutputs.path / "shutdown_message").symlink_to(target)

    assert joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK) is False
    assert not target.exists()


def test_hard_link_to_another_file_is_refused(joboutputs, secret_file):
    secret_file.write_text("300 " + SECRET)
    os.link(secret_file, joboutputs.path / "shutdown_message")

    reading = joboutputs.read_shutdown_message()

    assert reading.message is None and "hard links" in reading.reason


def test_fifo_does_not_block(joboutputs, alarm):
    os.mkfifo(joboutputs.path / "shutdown_message")

    reading = joboutputs.read_shutdown_message()

    assert reading.message is None and "FIFO" in reading.reason
    assert joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_device_node_is_never_opened(joboutputs, alarm):
    # /dev/zero's numbers: reading it would never end and never be 'NNN text'.
    os.mknod(joboutputs.path / "shutdown_message", 0o644 | stat.S_IFCHR, os.makedev(1, 5))

    reading = joboutputs.read_shutdown_message()

    assert reading.message is None and "character device" in reading.reason


def test_directory_named_shutdown_message(joboutputs):
    (joboutputs.path / "shutdown_message").mkdir()

    assert "directory" in joboutputs.read_shutdown_message().reason
    assert joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK) is False


def test_oversize_content_is_capped(joboutputs):
    huge = b"300 " + b"z" * (10 * MAX_MESSAGE_BYTES) + b"\n"
    (joboutputs.path / "shutdown_message").write_bytes(huge)

    reading = joboutputs.read_shutdown_message()

    assert reading.message.code == 300
    assert len(reading.message.text) == MAX_MESSAGE_BYTES - 4


def test_oversize_file_with_a_normal_first_line(joboutputs):
    (joboutputs.path / "shutdown_message").write_bytes(b"200 Done\n" + b"log " * 100000)

    assert joboutputs.read_shutdown_message().message == ShutdownMessage(200, "Done")


def test_factory_message_is_written_only_if_none_exists(joboutputs):
    assert joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK) is True
    assert joboutputs.write_shutdown_message(SHUTDOWN_BY_FACTORY) is False

    assert (joboutputs.path / "shutdown_message").read_text() == "700 Exceeded max_wallclock_seconds"
    assert joboutputs.read_shutdown_message().message == EXCEEDED_WALLCLOCK
    assert stat.S_IMODE(os.lstat(joboutputs.path / "shutdown_message").st_mode) == 0o644


def test_containers_message_is_never_overwritten(joboutputs):
    (joboutputs.path / "shutdown_message").write_text("300 Nothing to do")

    assert joboutputs.write_shutdown_message(EXCEEDED_WALLCLOCK) is False
    assert joboutputs.read_shutdown_message().message == ShutdownMessage(300, "Nothing to do")


def test_swapping_the_joboutputs_directory_for_a_symlink_does_not_redirect_us(tmp_path, secret_file):
    directory = tmp_path / "joboutputs"
    directory.mkdir()
    with JoboutputsDirectory(directory) as opened:
        directory.rename(tmp_path / "moved")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        directory.symlink_to(elsewhere)

        assert opened.write_shutdown_message(EXCEEDED_WALLCLOCK) is True

    assert (tmp_path / "moved" / "shutdown_message").exists()
    assert list(elsewhere.iterdir()) == []


def test_opening_a_symlinked_joboutputs_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "joboutputs").symlink_to(tmp_path / "real")

    with pytest.raises(OSError):
        JoboutputsDirectory(tmp_path / "joboutputs")


def test_heartbeat_age_from_the_files_own_time(joboutputs):
    heartbeat = joboutputs.path / "heartbeat"
    heartbeat.write_text("")
    os.utime(heartbeat, (1000.0, 1000.0))

    assert joboutputs.heartbeat_age("heartbeat", now=1250.0) == 250.0
    assert joboutputs.heartbeat_age("absent", now=1250.0) is None


def test_heartbeat_symlink_is_not_followed(joboutputs, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.write_text("")
    (joboutputs.path / "heartbeat").symlink_to(fresh)

    assert joboutputs.heartbeat_age("heartbeat", now=os.stat(fresh).st_mtime) is None


@pytest.mark.parametrize("name", ["../record.json", "a/b", "..", ""])
def test_names_outside_joboutputs_are_refused(joboutputs, name):
    with pytest.raises(ValueError):
        joboutputs.heartbeat_age(name, now=0.0)


def test_the_payloads_last_change_is_its_latest_regular_file_not_ours_nor_a_link(joboutputs, secret_file):
    directory = joboutputs.path
    assert joboutputs.latest_payload_change() is None
    for name, when in (("heartbeat", 1000.0), ("log", 2000.0), ("shutdown_message", 9000.0)):
        (directory / name).write_text(name)
        os.utime(directory / name, (when, when))
    os.utime(secret_file, (8000.0, 8000.0))
    (directory / "link").symlink_to(secret_file)
    (directory / "sub").mkdir()

    # shutdown_message may be the factory's own; a link's target says nothing of the payload.
    assert joboutputs.latest_payload_change() == 2000.0
    assert joboutputs.latest_payload_change(max_entries=0) is None
