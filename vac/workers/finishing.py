"""FINISHING of one machine: its shutdown_message, its outcome, its accounting record, its `finished` marker.

It runs in a job thread and may be repeated after a crash at any point: the
outcome is fixed in the record the first time, the APEL record and the
`finished` marker are each created once.
"""

from __future__ import annotations

import dataclasses
import logging

from vac import history
from vac.accounting import apel, end_time
from vac.accounting.apel import FinishedMachine
from vac.machine.joboutputs import JoboutputsDirectory, MessageReading, ShutdownMessage
from vac.machine.layout import MachinePaths
from vac.machine.prepare import MachineTerms
from vac.machine.record import MachineRecord, mark_finished, write_record
from vac.runtimes.base import ExitInfo
from vac.vocabulary.slot_states import MachineState, check_transition, machine_state
from vac.workers.slot_rules import WALLCLOCK_GRACE_SECONDS

log = logging.getLogger(__name__)


def read_message(paths: MachinePaths) -> MessageReading:
    """The machine's shutdown_message, read without following the container's symlinks."""
    try:
        with JoboutputsDirectory(paths.joboutputs) as joboutputs:
            return joboutputs.read_shutdown_message()
    except OSError as error:
        return MessageReading(None, f"cannot read joboutputs: {error.strerror or error}")


def write_message_if_none(paths: MachinePaths, message: ShutdownMessage) -> bool:
    """Write the factory's `message` unless the machine has a shutdown_message (or the directory is unusable)."""
    try:
        with JoboutputsDirectory(paths.joboutputs) as joboutputs:
            written = joboutputs.write_shutdown_message(message)
    except OSError as error:
        log.warning("machine %s: cannot write shutdown_message %r: %s", paths.machine_uuid, message.line(), error)
        return False
    if written:
        log.info("machine %s: wrote shutdown_message %r", paths.machine_uuid, message.line())
    return written


def transition(paths: MachinePaths, record: MachineRecord, new_state: MachineState, **changes) -> MachineRecord:
    """The record in `new_state` (with `changes`), stored atomically before it is returned."""
    check_transition(machine_state(record.state), new_state)
    record = dataclasses.replace(record, state=new_state.value, **changes)
    write_record(paths, record)
    return record


def evidence_of_life(paths: MachinePaths, record: MachineRecord) -> list[float | None]:
    """Times the machine was seen alive: its last CPU sample and the files its payload left in joboutputs."""
    evidence = [record.last_seen]
    try:
        with JoboutputsDirectory(paths.joboutputs) as joboutputs:
            evidence.append(joboutputs.latest_payload_change())
    except OSError as error:
        log.info("machine %s: cannot look at joboutputs for signs of life: %s", paths.machine_uuid, error)
    return evidence


def fix_outcome(paths: MachinePaths, record: MachineRecord, exit_info: ExitInfo | None, cpu_seconds: float,
                now: float, fallback: ShutdownMessage | None = None) -> MachineRecord:
    """Record how the machine ended (once: a record already FINISHING keeps what it holds).

    `fallback` is the message when the machine has none that can be read
    (a machine that failed before its joboutputs directory existed). An end
    nobody saw is the last evidence of the machine's life (end_time.py).
    """
    if machine_state(record.state) in (MachineState.FINISHING, MachineState.CLEANING) and record.ended is not None:
        return record
    reading = read_message(paths)
    message = reading.message or fallback
    end = end_time.decide_end(
        started=record.started, exit_info=exit_info,
        evidence=evidence_of_life(paths, record) if record.started is not None else (),
        shutdown_time=record.shutdown_time, stop_grace=WALLCLOCK_GRACE_SECONDS, now=now)
    if end.estimated:
        log.warning("machine %s: its end was not observed (%s); recording the last evidence of its life, "
                    "%.0f s after its start, as its end", record.machine_uuid, end.why, end.ended - record.started)
    ended = end.ended
    return transition(
        paths, record, MachineState.FINISHING, ended=float(ended), end_estimated=end.estimated,
        exit_code=exit_info.exit_code if exit_info is not None else None,
        cpu_seconds=max(float(cpu_seconds), record.cpu_seconds or 0.0),
        shutdown_code=message.code if message else None,
        shutdown_text=message.text if message else reading.reason or "no shutdown_message")


def finished_machine(terms: MachineTerms, start_time: float, end_time: float,
                     cpu_seconds: float) -> FinishedMachine:
    """What the machine's APEL record is made from."""
    return FinishedMachine(
        machine_uuid=terms.uuid, machinetype=terms.machinetype_name, space=terms.factory["vac_space"],
        factory=terms.factory["factory_name"], processors=terms.processors, start_time=int(start_time),
        end_time=int(end_time), cpu_seconds=int(cpu_seconds), mb_per_processor=terms.factory["mb_per_processor"],
        hs06_per_processor=terms.factory.get("hs06_per_processor"),
        gocdb_sitename=terms.factory.get("gocdb_sitename"),
        accounting_fqan=terms.machinetype.get("accounting_fqan"))


def finish_machine(paths: MachinePaths, record: MachineRecord, terms: MachineTerms | None,
                   exit_info: ExitInfo | None, cpu_seconds: float, now: float,
                   fallback: ShutdownMessage | None = None) -> MachineRecord:
    """Fix the outcome, write the APEL record (machines that ran at least fizzle_seconds) and the marker."""
    record = fix_outcome(paths, record, exit_info, cpu_seconds, now, fallback)
    if record.started is None:
        log.info("machine %s never started: no accounting record", record.machine_uuid)
    elif terms is None:
        log.error("machine %s: its terms (machine.json) are lost, so no accounting record can be written",
                  record.machine_uuid)
    elif not apel.lived_long_enough(record.started, record.ended, terms.fizzle_seconds):
        # Decided on the exact times: the record's whole seconds could round a
        # fizzled machine up to fizzle_seconds, unlike what the root is told.
        log.info("machine %s lived %.1f s, less than fizzle_seconds %d: no accounting record",
                 record.machine_uuid, record.ended - record.started, terms.fizzle_seconds)
    else:
        apel.write_job_record(terms.state_dir, paths.root,
                              finished_machine(terms, record.started, record.ended, record.cpu_seconds or 0.0),
                              terms.fizzle_seconds)
    if record.started is not None:
        # Before the marker: a finalisation repeated after a crash records the end again.
        record_history(paths, record, terms)
    if mark_finished(paths, record.ended):
        log.info("machine %s finalised: %s %s, exit code %s, %.0f s CPU%s", record.machine_uuid,
                 record.shutdown_code, record.shutdown_text, record.exit_code, record.cpu_seconds or 0.0,
                 ", end estimated" if record.end_estimated else "")
    return record


def record_history(paths: MachinePaths, record: MachineRecord, terms: MachineTerms | None) -> None:
    """Record how the machine ended in the factory's history (a failure is logged, never raised)."""
    # Without its terms the state directory is still known: machines live in <state_dir>/machines/<uuid>.
    state_dir = terms.state_dir if terms is not None else paths.root.parent.parent
    history.record_finished(
        state_dir, uuid=record.machine_uuid, factory=terms.factory["factory_name"] if terms is not None else None,
        slot=record.slot, machinetype=record.machinetype, processors=record.processors,
        started_at=record.started, ended_at=record.ended, shutdown_code=record.shutdown_code,
        shutdown_text=record.shutdown_text, cpu_seconds=record.cpu_seconds, shutdown_at=record.shutdown_time,
        end_estimated=record.end_estimated)

