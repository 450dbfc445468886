"""What a slot holds of the machine in it, and how the root sees that machine."""

from __future__ import annotations

from dataclasses import dataclass

from vac.machine.joboutputs import ShutdownMessage
from vac.machine.layout import MachinePaths
from vac.machine.prepare import MachineTerms
from vac.machine.record import MachineRecord
from vac.runtimes.base import ContainerHandle, ContainerRequest, ExitInfo
from vac.workers.watch import JoboutputsWatch

# Reported for an adopted machine whose terms (machine.json) are lost.
UNKNOWN_SUPERSLOT = -1


@dataclass
class Machine:
    """What the slot holds of the machine in it."""
    uuid: str
    paths: MachinePaths
    terms: MachineTerms | None
    shutdown_at: int
    record: MachineRecord | None = None          # None until the record is on disk
    request: ContainerRequest | None = None
    handle: ContainerHandle | None = None
    exit_info: ExitInfo | None = None
    cpu_seconds: float = 0.0
    end_request: ShutdownMessage | None = None   # asked to end before its container ran
    fallback: ShutdownMessage | None = None      # its outcome if it has no readable message
    watch: JoboutputsWatch | None = None
    heartbeat_check_at: float | None = None
    next_stats_at: float | None = None
    cpu_saved_at: float = 0.0
    start_deadline: float = 0.0
    stop_grace: float = 0.0
    seen_message: str | None = None

    @property
    def machinetype(self) -> str:
        if self.terms is not None:
            return self.terms.machinetype_name
        return self.record.machinetype if self.record is not None else "?"

    @property
    def processors(self) -> int:
        if self.terms is not None:
            return self.terms.processors
        return self.record.processors if self.record is not None else 0

    @property
    def started_at(self) -> float:
        """The container's start or, before it started, when the machine was placed."""
        if self.record is not None:
            return float(self.record.started if self.record.started is not None else self.record.created)
        return self.terms.placed_at if self.terms is not None else 0.0

    def summary(self) -> dict:
        """The machine as StateReport.detail["machine"] shows it.

        Its CPU time and last sign of life are those last written to its record
        (once a minute while it runs), so they cost the root one report a minute.
        """
        record = self.record
        return {
            "uuid": self.uuid,
            "machinetype": self.machinetype,
            "processors": self.processors,
            "started_at": self.started_at,
            "shutdown_at": int(self.shutdown_at),
            "superslot": self.terms.superslot if self.terms is not None else UNKNOWN_SUPERSLOT,
            "container_id": self.handle.id if self.handle is not None else None,
            "created_at": float(record.created) if record is not None else self.started_at,
            "cpu_seconds": record.cpu_seconds if record is not None else None,
            "heartbeat_at": record.last_seen if record is not None else None,
        }
