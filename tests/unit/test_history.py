"""The machine history store: upserts by UUID, repeated finalisation, period queries, failures tolerated."""

import logging
import os
import sqlite3
import time

import pytest

from vac import history
from vac.history import MachineSpan

T0 = 1_700_000_000.0
UUID_A = "11111111-1111-4111-8111-111111111111"
UUID_B = "22222222-2222-4222-8222-222222222222"
UUID_C = "33333333-3333-4333-8333-333333333333"

STARTED = dict(factory="f1.example.com", slot=3, machinetype="lhcb-prod", processors=2, started_at=T0,
               shutdown_at=T0 + 86400)
ENDING = dict(ended_at=T0 + 3600, shutdown_code=200, shutdown_text="Work completed", cpu_seconds=7000.5)


def rows(state_dir):
    return history.machines_between(state_dir, 0, 2 * T0)


@pytest.fixture(autouse=True)
def _close_kept_connections():
    yield
    history.close_connections()


def open_descriptors_of(path):
    """How many of this process's descriptors are open on `path` (its -wal and -shm files apart)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == str(path)
        except OSError:
            continue
    return count


def test_a_started_machine_is_running_until_its_end_is_recorded(tmp_path):
    assert history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    assert rows(tmp_path) == [MachineSpan(uuid=UUID_A, **STARTED)]
    assert history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
    assert rows(tmp_path) == [MachineSpan(uuid=UUID_A, **STARTED, **ENDING)]


def test_repeated_finalisation_leaves_one_row_with_the_outcome(tmp_path):
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    for _ in range(3):
        assert history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
    assert rows(tmp_path) == [MachineSpan(uuid=UUID_A, **STARTED, **ENDING)]


def test_a_start_recorded_again_after_the_end_does_not_reopen_the_machine(tmp_path):
    history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    assert rows(tmp_path)[0].ended_at == ENDING["ended_at"]
    assert rows(tmp_path)[0].shutdown_code == 200


def test_an_end_without_a_recorded_start_makes_a_whole_row(tmp_path):
    history.record_finished(tmp_path, uuid=UUID_B, **STARTED, **ENDING)
    assert rows(tmp_path) == [MachineSpan(uuid=UUID_B, **STARTED, **ENDING)]


def test_an_end_with_an_unknown_factory_keeps_the_one_recorded_at_the_start(tmp_path):
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    history.record_finished(tmp_path, uuid=UUID_A, **dict(STARTED, factory=None, shutdown_at=None), **ENDING)
    assert rows(tmp_path)[0].factory == "f1.example.com"
    assert rows(tmp_path)[0].shutdown_at == T0 + 86400


def test_the_period_query_takes_machines_that_overlap_it(tmp_path):
    history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)                    # T0 .. T0+1h
    history.record_finished(tmp_path, uuid=UUID_B, **dict(STARTED, started_at=T0 + 7200),
                            **dict(ENDING, ended_at=T0 + 9000))                          # T0+2h .. T0+2.5h
    history.record_started(tmp_path, uuid=UUID_C, **dict(STARTED, started_at=T0 - 86400))  # still running
    between = lambda start, end: [span.uuid for span in history.machines_between(tmp_path, start, end)]
    assert between(T0 + 1800, T0 + 2000) == [UUID_C, UUID_A]
    assert between(T0 + 3600, T0 + 7200) == [UUID_C]       # A ended as the period began, B starts as it ends
    assert between(T0 + 8000, T0 + 20000) == [UUID_C, UUID_B]
    assert between(T0 - 90000, T0 - 87000) == []


def test_the_store_is_in_wal_mode_for_readers_beside_writers(tmp_path):
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    connection = sqlite3.connect(history.history_path(tmp_path))
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_a_state_directory_without_history_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no machine history"):
        history.machines_between(tmp_path, 0, T0)


def test_a_write_that_fails_is_logged_and_reported_not_raised(tmp_path, caplog):
    missing = tmp_path / "no-such-directory"
    with caplog.at_level(logging.WARNING, logger="vac.history"):
        assert not history.record_started(missing, uuid=UUID_A, **STARTED)
        assert not history.record_finished(missing, uuid=UUID_A, **STARTED, **ENDING)
    assert sum(UUID_A in record.getMessage() and "the machine goes on" in record.getMessage()
               for record in caplog.records) == 2


def test_a_damaged_history_file_fails_writes_softly_and_reads_loudly(tmp_path, caplog):
    history.history_path(tmp_path).write_bytes(b"this is not an SQLite database, just bytes" * 100)
    with caplog.at_level(logging.WARNING, logger="vac.history"):
        assert not history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    assert "cannot record its start" in caplog.text
    with pytest.raises(sqlite3.DatabaseError):
        history.machines_between(tmp_path, 0, T0)


def test_a_locked_history_costs_a_write_its_timeout_then_the_write_is_given_up(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(history, "WRITE_TIMEOUT_SECONDS", 0.1)
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    holder = history.open_for_writing(tmp_path)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        assert not history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
        assert time.monotonic() - started < 2.0
    finally:
        holder.close()
    assert "locked" in caplog.text
    assert rows(tmp_path)[0].ended_at is None


def test_old_finished_machines_can_be_forgotten(tmp_path):
    history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
    history.record_started(tmp_path, uuid=UUID_B, **STARTED)
    assert history.forget_ended_before(tmp_path, T0 + 7200) == 1
    assert [span.uuid for span in rows(tmp_path)] == [UUID_B]


def test_a_process_keeps_one_connection_for_all_its_writes(tmp_path):
    for number in range(20):
        uuid = f"{number:08d}-1111-4111-8111-111111111111"
        assert history.record_started(tmp_path, uuid=uuid, **STARTED)
        assert history.record_finished(tmp_path, uuid=uuid, **STARTED, **ENDING)
    assert open_descriptors_of(history.history_path(tmp_path)) == 1
    # The log stays between writes: no last connection closed and checkpointed it away.
    assert (tmp_path / (history.HISTORY_FILE_NAME + "-wal")).exists()
    assert len(rows(tmp_path)) == 20
    history.close_connections()
    assert open_descriptors_of(history.history_path(tmp_path)) == 0


def test_a_history_file_removed_under_a_kept_connection_is_made_again(tmp_path):
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (history.HISTORY_FILE_NAME + suffix)).unlink(missing_ok=True)
    assert history.record_started(tmp_path, uuid=UUID_B, **STARTED)
    assert open_descriptors_of(history.history_path(tmp_path)) == 1
    assert [span.uuid for span in rows(tmp_path)] == [UUID_B]


def test_a_forked_child_writes_on_a_connection_of_its_own_and_leaves_its_parents_alone(tmp_path):
    history.record_started(tmp_path, uuid=UUID_A, **STARTED)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if history.record_started(tmp_path, uuid=UUID_B, **STARTED) else 2
            # The child's own connection, and the parent's left open as it was.
            status = status or (0 if open_descriptors_of(history.history_path(tmp_path)) == 2 else 3)
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert history.record_finished(tmp_path, uuid=UUID_A, **STARTED, **ENDING)
    assert {span.uuid: span.ended_at for span in rows(tmp_path)} == {UUID_A: ENDING["ended_at"], UUID_B: None}
