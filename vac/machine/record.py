"""The machine's lifecycle record (record.json) and its `finished` marker.

The record is rewritten atomically at every transition, so a restarted slot
worker finds the last state it reached and resumes from there; reading it
never fails, because a missing or damaged record only means "start over".
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from vac.machine.atomicfile import create_atomic, write_atomic
from vac.machine.layout import PRIVATE_FILE_MODE, MachinePaths

log = logging.getLogger(__name__)

# A machine record is a few hundred bytes; anything much larger is not ours.
MAX_MACHINE_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """What a slot worker must remember about its machine across its own restarts."""
    machine_uuid: str
    slot: int
    machine_name: str
    machinetype: str
    machine_model: str
    processors: int
    created: float
    shutdown_time: int
    state: str = "preparing"
    generation: int = 0
    container_id: str | None = None
    # When the container's start was asked for, written before the call: a
    # worker killed during it leaves this, and its successor the engine's time.
    start_requested: float | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    cpu_seconds: float | None = None
    shutdown_code: int | None = None
    shutdown_text: str | None = None
    # The engine's time of the last CPU sample taken while it ran: evidence
    # of life if its end is never seen.
    last_seen: float | None = None
    # True if nobody saw the machine end and `ended` is its last evidence of life.
    end_estimated: bool = False

    def to_json(self) -> bytes:
        """The record as JSON text (its fields are plain values: no deep copy is needed, as asdict makes)."""
        return json.dumps({name: getattr(self, name) for name in _RECORD_FIELDS}, sort_keys=True,
                          indent=1).encode() + b"\n"

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> MachineRecord:
        """Build a record from decoded JSON, ignoring keys a newer version may have added."""
        return cls(**{key: value for key, value in data.items() if key in _RECORD_FIELDS})


# A record is written at every transition of every machine.
_RECORD_FIELDS = frozenset(field.name for field in dataclasses.fields(MachineRecord))


def write_record(paths: MachinePaths, record: MachineRecord) -> None:
    """Store `record` atomically (temp file, fsync, rename, fsync of the directory)."""
    write_atomic(paths.record, record.to_json(), PRIVATE_FILE_MODE)


def read_record(paths: MachinePaths) -> MachineRecord | None:
    """The stored record, or None if it is missing, truncated or not a record (logged)."""
    try:
        with open(paths.record, "rb") as stream:
            raw = stream.read(MAX_MACHINE_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("machine %s: cannot read %s (%s); treating the machine as unrecorded",
                    paths.machine_uuid, paths.record, error)
        return None
    if len(raw) > MAX_MACHINE_RECORD_BYTES:
        log.warning("machine %s: %s is larger than %d bytes; ignoring it",
                    paths.machine_uuid, paths.record, MAX_MACHINE_RECORD_BYTES)
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"top level is {type(data).__name__}, not an object")
        record = MachineRecord.from_mapping(data)
    except (ValueError, TypeError) as error:
        log.warning("machine %s: %s is damaged (%s); ignoring it", paths.machine_uuid, paths.record, error)
        return None
    if record.machine_uuid != paths.machine_uuid:
        log.warning("machine %s: %s names machine %s; ignoring it",
                    paths.machine_uuid, paths.record, record.machine_uuid)
        return None
    return record


def mark_finished(paths: MachinePaths, ended: float) -> bool:
    """Create the `finished` marker (content: end time); False if it already existed."""
    return create_atomic(paths.finished_marker, f"{int(ended)}\n".encode(), PRIVATE_FILE_MODE)


def is_finished(paths: MachinePaths) -> bool:
    """True once the machine has been finalised (accounting written, outcome reported)."""
    return paths.finished_marker.exists()
