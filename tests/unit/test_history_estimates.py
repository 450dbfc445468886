"""The history's estimated ends, its upgrade from the first schema, and the bounded read of recent ends."""

import sqlite3

from vac import history

T0 = 1_700_000_000.0
ROW = dict(factory="f1.example.com", slot=1, machinetype="work", processors=1, started_at=T0,
           shutdown_code=None, shutdown_text="no shutdown_message", cpu_seconds=10.0, shutdown_at=T0 + 600)

# The first schema, as factories wrote it before end_estimated existed.
SCHEMA_1 = """
CREATE TABLE machines (uuid TEXT PRIMARY KEY, factory TEXT, slot INTEGER NOT NULL, machinetype TEXT NOT NULL,
    processors INTEGER NOT NULL, started_at REAL NOT NULL, shutdown_at REAL, ended_at REAL,
    shutdown_code INTEGER, shutdown_text TEXT, cpu_seconds REAL);
INSERT INTO machines VALUES ('00000000-0000-4000-8000-000000000001', 'f1', 0, 'work', 1, 1700000000.0,
    NULL, 1700000600.0, 200, 'done', 5.0);
PRAGMA user_version = 1;
"""


def _uuid(n):
    return f"00000000-0000-4000-8000-{n:012d}"


def test_an_estimated_end_is_marked_in_the_history(tmp_path):
    history.record_finished(tmp_path, uuid=_uuid(7), ended_at=T0 + 601, end_estimated=True, **ROW)
    history.record_finished(tmp_path, uuid=_uuid(8), ended_at=T0 + 300, **ROW)

    spans = {span.uuid: span for span in history.machines_between(tmp_path, 0, 2 * T0)}

    assert spans[_uuid(7)].end_estimated is True and spans[_uuid(7)].ended_at == T0 + 601
    assert spans[_uuid(8)].end_estimated is False


def test_a_history_of_the_first_schema_is_read_as_it_is_and_upgraded_by_the_next_write(tmp_path):
    connection = sqlite3.connect(history.history_path(tmp_path))
    connection.executescript(SCHEMA_1)
    connection.close()

    [old] = history.machines_between(tmp_path, 0, 2 * T0)
    assert (old.uuid, old.shutdown_code, old.end_estimated) == (_uuid(1), 200, False)

    assert history.record_finished(tmp_path, uuid=_uuid(2), ended_at=T0 + 700, end_estimated=True, **ROW)
    spans = {span.uuid: span for span in history.machines_between(tmp_path, 0, 2 * T0)}
    assert spans[_uuid(1)].end_estimated is False and spans[_uuid(2)].end_estimated is True
    connection = sqlite3.connect(history.history_path(tmp_path))
    assert connection.execute("PRAGMA user_version").fetchone()[0] == history.SCHEMA_VERSION
    connection.close()


def test_recent_ends_are_the_newest_within_the_window_oldest_first(tmp_path):
    for n in range(10):
        history.record_finished(tmp_path, uuid=_uuid(n), ended_at=T0 + 100 * n, **ROW)
    history.record_started(tmp_path, uuid=_uuid(99), **{k: ROW[k] for k in (
        "factory", "slot", "machinetype", "processors", "started_at")})

    recent = history.ended_since(tmp_path, T0 + 250, limit=4)

    assert [span.ended_at for span in recent] == [T0 + 600, T0 + 700, T0 + 800, T0 + 900]
    assert [span.ended_at for span in history.ended_since(tmp_path, T0 + 250, limit=100)] == [
        T0 + 100 * n for n in range(3, 10)]


def test_no_history_file_means_no_recent_ends(tmp_path):
    assert history.ended_since(tmp_path, 0, limit=10) == []
    assert not history.history_path(tmp_path).exists()
