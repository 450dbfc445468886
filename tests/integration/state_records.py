"""What a factory leaves in its state directory, read as a site reads it: each
machine's record and `finished` marker, the APEL records, and how often each
machine was finalised.

The tests and bench/bench_recovery.py both use it; it needs no pytest.
"""

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Machine:
    """One machine as its directory shows it."""
    uuid: str
    slot: int
    machinetype: str
    state: str
    created: float
    started: float | None
    ended: float | None
    container_id: str | None
    shutdown_code: int | None
    finished: bool
    joboutputs: Path

    @property
    def ready(self):
        """Its container runs /user_data and waits to be released."""
        return (self.joboutputs / "ready").exists()


def read_machines(state_dir):
    """Every machine with a readable record, in the order the slots created them."""
    machines = []
    root = Path(state_dir) / "machines"
    for directory in root.iterdir() if root.exists() else ():
        try:
            record = json.loads((directory / "record.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # being created: the next look finds it
        machines.append(Machine(
            uuid=record["machine_uuid"], slot=record["slot"], machinetype=record["machinetype"],
            state=record["state"], created=record["created"], started=record["started"],
            ended=record["ended"], container_id=record["container_id"],
            shutdown_code=record["shutdown_code"], finished=(directory / "finished").exists(),
            joboutputs=directory / "joboutputs"))
    return sorted(machines, key=lambda m: (m.created, m.uuid))


def apel_records(state_dir):
    """The text of each APEL record in the archive."""
    archive = Path(state_dir) / "apel-archive"
    return [path.read_text() for path in sorted(archive.rglob("*")) if path.is_file()] \
        if archive.exists() else []


@dataclasses.dataclass(frozen=True)
class Accounting:
    """How one machine was accounted: APEL records naming it, and in the logs of
    every vacd that ran on the state directory, its finalisations (by its slot)
    and its ends reported (by the root)."""
    apel_records: int
    finalised: int
    reported: int


def accounting(machines, records, logs):
    """{machine uuid: Accounting} for `machines`, from the APEL `records` and the vacds' `logs` (texts)."""
    return {machine.uuid: Accounting(
        apel_records=sum(f"LocalJobId: {machine.uuid}\n" in text for text in records),
        finalised=sum(text.count(f"machine {machine.uuid} finalised:") for text in logs),
        reported=sum(text.count(f"machine {machine.uuid} ({machine.machinetype}) finished:") for text in logs))
        for machine in machines}
