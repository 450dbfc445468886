"""The factory's own history of machines: an SQLite file in the state directory.

Each slot worker (its own process) and the reaper write one row per machine,
when its container starts and when it is finalised; `vac occupancy` reads it.
WAL mode lets readers and the writers of several processes work side by side,
and every write has a bounded busy timeout. History is a record, not a duty:
a write that fails is logged and the machine's lifecycle goes on.

A writing process keeps its connection open: opening one, setting it up and
closing it (the last connection out checkpoints the log, with its fsyncs)
cost more than the row it wrote, twice per machine.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HISTORY_FILE_NAME = "history.sqlite"
# Long enough to wait out another process's commit, short enough that a
# wedged lock costs a job thread no more than this.
WRITE_TIMEOUT_SECONDS = 2.0
WRITE_ATTEMPTS = 3
# Connections a process keeps open for writing, one per history file (a factory has one).
KEPT_CONNECTIONS = 4
READ_TIMEOUT_SECONDS = 5.0
# 2: end_estimated, set where nobody saw the machine end (accounting/end_time.py).
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    uuid          TEXT PRIMARY KEY,
    factory       TEXT,
    slot          INTEGER NOT NULL,
    machinetype   TEXT NOT NULL,
    processors    INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    shutdown_at   REAL,
    ended_at      REAL,
    shutdown_code INTEGER,
    shutdown_text TEXT,
    cpu_seconds   REAL,
    end_estimated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS machines_by_start ON machines (started_at);
CREATE INDEX IF NOT EXISTS machines_by_end ON machines (ended_at);
"""

# A start never overwrites an end: finalisation may already have happened
# when a repeated start is recorded.
UPSERT_STARTED = """
INSERT INTO machines (uuid, factory, slot, machinetype, processors, started_at, shutdown_at)
VALUES (:uuid, :factory, :slot, :machinetype, :processors, :started_at, :shutdown_at)
ON CONFLICT (uuid) DO UPDATE SET
    factory = COALESCE(excluded.factory, machines.factory),
    slot = excluded.slot, machinetype = excluded.machinetype, processors = excluded.processors,
    started_at = excluded.started_at,
    shutdown_at = COALESCE(excluded.shutdown_at, machines.shutdown_at)
"""

# The whole row, so a machine whose start was never recorded is still complete.
UPSERT_FINISHED = """
INSERT INTO machines (uuid, factory, slot, machinetype, processors, started_at, shutdown_at,
                      ended_at, shutdown_code, shutdown_text, cpu_seconds, end_estimated)
VALUES (:uuid, :factory, :slot, :machinetype, :processors, :started_at, :shutdown_at,
        :ended_at, :shutdown_code, :shutdown_text, :cpu_seconds, :end_estimated)
ON CONFLICT (uuid) DO UPDATE SET
    factory = COALESCE(excluded.factory, machines.factory),
    slot = excluded.slot, machinetype = excluded.machinetype, processors = excluded.processors,
    started_at = excluded.started_at,
    shutdown_at = COALESCE(excluded.shutdown_at, machines.shutdown_at),
    ended_at = excluded.ended_at, shutdown_code = excluded.shutdown_code,
    shutdown_text = excluded.shutdown_text, cpu_seconds = excluded.cpu_seconds,
    end_estimated = excluded.end_estimated
"""

COLUMNS = ("uuid", "factory", "slot", "machinetype", "processors", "started_at", "shutdown_at",
           "ended_at", "shutdown_code", "shutdown_text", "cpu_seconds", "end_estimated")


@dataclass(frozen=True, slots=True)
class MachineSpan:
    """One machine as the history knows it; `ended_at` is None while it runs (or its end was lost)."""
    uuid: str
    factory: str | None
    slot: int
    machinetype: str
    processors: int
    started_at: float
    shutdown_at: float | None = None
    ended_at: float | None = None
    shutdown_code: int | None = None
    shutdown_text: str | None = None
    cpu_seconds: float | None = None
    end_estimated: bool = False   # nobody saw it end: `ended_at` is its last evidence of life


def history_path(state_dir: str | os.PathLike) -> Path:
    """Where the history of the factory with this state directory is kept."""
    return Path(state_dir) / HISTORY_FILE_NAME


def open_for_writing(state_dir: str | os.PathLike, timeout: float = WRITE_TIMEOUT_SECONDS) -> sqlite3.Connection:
    """A connection to the history (created with its schema if missing), in WAL mode."""
    connection = sqlite3.connect(history_path(state_dir), timeout=timeout, isolation_level=None,
                                 check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # A lost last commit after a power cut costs a history row, not consistency.
        connection.execute("PRAGMA synchronous = NORMAL")
        if connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # Several workers may create or upgrade it at once: the immediate
            # transaction makes them take turns, and each step checks first.
            connection.executescript(f"BEGIN IMMEDIATE; {SCHEMA}")
            try:
                if "end_estimated" not in _column_names(connection):
                    connection.execute("ALTER TABLE machines ADD COLUMN end_estimated INTEGER NOT NULL DEFAULT 0")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
    except BaseException:
        connection.close()
        raise
    return connection


def _column_names(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(machines)")}


def _selected_columns(connection: sqlite3.Connection) -> str:
    """COLUMNS for a SELECT; a column the file's older schema lacks reads as its default."""
    present = _column_names(connection)
    return ", ".join(name if name in present else f"0 AS {name}" for name in COLUMNS)


def _span(row) -> MachineSpan:
    return MachineSpan(*row[:-1], end_estimated=bool(row[-1]))


class _KeptConnections:
    """This process's open writing connections, by history file, shared by its threads.

    A connection opened before a fork belongs to the parent: the child never
    uses it, nor closes it (closing may checkpoint and remove the parent's
    log), and opens its own. A history file replaced or removed under a kept
    connection (by an operator) is noticed by its inode, and opened again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: OrderedDict[Path, tuple[sqlite3.Connection, tuple[int, int]]] = OrderedDict()
        self.inherited: list = []

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.inherited.extend(self.open.values())
        self.open = OrderedDict()

    def execute(self, state_dir, statement: str, values: dict) -> None:
        """Run `statement` in a transaction of its own on this process's connection to the history."""
        path = history_path(state_dir)
        with self.lock:
            connection = self._connection(state_dir, path)
            try:
                with connection:
                    connection.execute(statement, values)
            except sqlite3.Error:
                # Locked, damaged or replaced: the next write starts from a new connection.
                self._close(path)
                raise

    def _connection(self, state_dir, path: Path) -> sqlite3.Connection:
        kept = self.open.get(path)
        identity = _identity(path)
        if kept is not None and kept[1] == identity:
            self.open.move_to_end(path)
            return kept[0]
        if kept is not None:
            self._close(path)
        connection = open_for_writing(state_dir, WRITE_TIMEOUT_SECONDS)
        self.open[path] = (connection, _identity(path))
        while len(self.open) > KEPT_CONNECTIONS:
            self._close(next(iter(self.open)))
        return connection

    def _close(self, path: Path) -> None:
        kept = self.open.pop(path, None)
        if kept is not None:
            kept[0].close()

    def close_all(self) -> None:
        with self.lock:
            for path in list(self.open):
                self._close(path)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


_kept = _KeptConnections()
os.register_at_fork(after_in_child=_kept.after_fork_in_child)


def close_connections() -> None:
    """Close the connections this process kept for writing (tests; a process may also just exit)."""
    _kept.close_all()


def _write(state_dir, statement: str, values: dict, what: str) -> bool:
    for attempt in range(WRITE_ATTEMPTS):
        try:
            _kept.execute(state_dir, statement, values)
            return True
        except sqlite3.OperationalError as error:
            # Switching a new file to WAL answers "locked" at once, without
            # waiting out the busy timeout, while another writer creates it.
            if attempt + 1 < WRITE_ATTEMPTS and "locked" in str(error):
                continue
            failure = error
        except (sqlite3.Error, OSError) as error:
            failure = error
        break
    log.warning("machine %s: cannot record its %s in the history %s (%s); the machine goes on",
                values["uuid"], what, history_path(state_dir), failure)
    return False


def record_started(state_dir, *, uuid: str, factory: str | None, slot: int, machinetype: str, processors: int,
                   started_at: float, shutdown_at: float | None = None) -> bool:
    """Record that the machine's container started; False (logged) if the history cannot be written."""
    return _write(state_dir, UPSERT_STARTED, {
        "uuid": uuid, "factory": factory, "slot": int(slot), "machinetype": machinetype,
        "processors": int(processors), "started_at": float(started_at),
        "shutdown_at": None if shutdown_at is None else float(shutdown_at)}, "start")


def record_finished(state_dir, *, uuid: str, factory: str | None, slot: int, machinetype: str, processors: int,
                    started_at: float, ended_at: float, shutdown_code: int | None, shutdown_text: str | None,
                    cpu_seconds: float | None, shutdown_at: float | None = None,
                    end_estimated: bool = False) -> bool:
    """Record how the machine ended (repeatable); False (logged) if the history cannot be written.

    `end_estimated`: nobody saw it end, and `ended_at` is its last evidence of life.
    """
    return _write(state_dir, UPSERT_FINISHED, {
        "uuid": uuid, "factory": factory, "slot": int(slot), "machinetype": machinetype,
        "processors": int(processors), "started_at": float(started_at),
        "shutdown_at": None if shutdown_at is None else float(shutdown_at), "ended_at": float(ended_at),
        "shutdown_code": shutdown_code, "shutdown_text": shutdown_text,
        "cpu_seconds": None if cpu_seconds is None else float(cpu_seconds),
        "end_estimated": int(bool(end_estimated))}, "end")


def _open_for_reading(path: Path) -> sqlite3.Connection:
    # A file URI must be absolute, and operators type relative state directories.
    path = Path(os.path.abspath(path))
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=READ_TIMEOUT_SECONDS)
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return connection
    except sqlite3.OperationalError:
        # A reader who may not create the -wal/-shm files beside a database no
        # writer holds open can still read it as it stands.
        connection = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True, timeout=READ_TIMEOUT_SECONDS)
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return connection


def machines_between(state_dir, start: float, end: float) -> list[MachineSpan]:
    """Every machine that started before `end` and had not ended by `start`, oldest first.

    Raises FileNotFoundError if the state directory has no history, and
    sqlite3.Error if the file cannot be read as one.
    """
    path = history_path(state_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no machine history at {path}")
    rows = _select_machines(path, "started_at < ? AND (ended_at IS NULL OR ended_at > ?)"
                                  " ORDER BY started_at, uuid", (float(end), float(start)))
    return [_span(row) for row in rows]


def ended_since(state_dir, since: float, limit: int) -> list[MachineSpan]:
    """The newest `limit` machines that ended at or after `since`, oldest end first.

    What a restarted root needs to rebuild each machinetype's backoff; bounded
    so that it costs the same whatever the file holds. An absent history is
    empty; sqlite3.Error if the file cannot be read as one.
    """
    path = history_path(state_dir)
    if not path.is_file():
        return []
    rows = _select_machines(path, "ended_at >= ? ORDER BY ended_at DESC, uuid LIMIT ?",
                            (float(since), int(limit)))
    return [_span(row) for row in reversed(rows)]


def _select_machines(path, condition: str, parameters: tuple) -> list:
    """The machines rows `condition` (a constant of this module) selects; none before the table exists."""
    connection = _open_for_reading(path)
    try:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'machines'"
                                  ).fetchall():
            return []
        return connection.execute(
            f"SELECT {_selected_columns(connection)} FROM machines WHERE {condition}", parameters).fetchall()
    finally:
        connection.close()


def forget_ended_before(state_dir, before: float) -> int:
    """Delete the rows of machines that ended before `before`; how many went."""
    connection = open_for_writing(state_dir)
    try:
        with connection:
            return connection.execute("DELETE FROM machines WHERE ended_at < ?", (float(before),)).rowcount
    finally:
        connection.close()
