"""The blocking steps of a slot, each run as a job in a thread (see job_runner.py).

Every step may be cut short by the worker's death and repeated by its
successor: creating the container again returns the one made before, the
outcome is fixed in the record once, removing what is gone is fine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from vac import history
from vac.machine.joboutputs import ShutdownMessage
from vac.machine.layout import (MachinePaths, complete_index, create_machine_directory, index_machine,
                                indexed_machines, is_machine_uuid, iter_machine_directories, unindex_machine)
from vac.machine.prepare import BadTerms, MachineTerms, PreparedMachine, create_directory, scratch_backend
from vac.machine.record import MachineRecord, is_finished, read_record, write_record
from vac.machine.scratch import DirectoryScratch
from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerRequest, ContainerRuntime,
                               ContainerRuntimeError, ExitInfo, ImageMissing, StartFailed)
from vac.vocabulary.slot_states import MachineState, machine_state
from vac.workers import finishing, slot_rules

log = logging.getLogger(__name__)

# Each wait on the engine is bounded; the slot starts the next one at once.
WAIT_CHUNK_SECONDS = 60.0
IMAGE_DEADLINE_SECONDS = slot_rules.IMAGE_DEADLINE_SECONDS
SUPPORTED_MODELS = ("docker", "singularity")


class UnsupportedModel(ValueError):
    """A machine_model this slot worker does not run."""


def scan(runtime: ContainerRuntime, factory: str, slot: int, state_dir: Path) -> slot_rules.AdoptionPlan:
    """What a predecessor left in `slot`: its unfinished records and its labelled containers.

    The records read are those the slot's index names (layout.py); without a
    complete index (a state directory from before it), every record, after
    which the index is completed. A container of the slot that the index does
    not name has its record read all the same: it is never taken for an orphan
    because of the index.
    """
    indexed = indexed_machines(state_dir, slot)
    if indexed is None:
        records = _every_unfinished_record(state_dir, slot)
        try:
            complete_index(state_dir, slot, [record.machine_uuid for record, _ in records])
        except OSError as error:
            log.warning("slot %02d: cannot write its index of unfinished machines (%s); "
                        "its next scan reads every record again", slot, error)
    else:
        records = _indexed_unfinished_records(state_dir, slot, indexed)
    # An engine must answer when a record says a machine of its model may be there;
    # one that no record needs is only asked for orphans, if it answers.
    models = {record.machine_model for record, _ in records}
    containers = runtime.find(factory, slot, models=models)
    named = {record.machine_uuid for record, _ in records}
    for container in containers:
        if container.machine_uuid in named or not is_machine_uuid(container.machine_uuid or ""):
            continue
        found = _unfinished_record(MachinePaths.for_machine(state_dir, container.machine_uuid), slot)
        if found is not None:
            log.warning("slot %02d: machine %s has a container and an unfinished record but was not in the "
                        "slot's index; naming it there", slot, container.machine_uuid)
            index_machine(state_dir, slot, container.machine_uuid)
            records.append(found)
            named.add(container.machine_uuid)
    return slot_rules.adoption_plan(records, containers)


def _unfinished_record(paths: MachinePaths, slot: int) -> tuple[MachineRecord, bool] | None:
    """(record, finished marker exists) of a machine of `slot` whose record is not done, else None."""
    record = read_record(paths)
    if record is None or record.slot != slot or machine_state(record.state) is MachineState.DONE:
        return None
    return record, is_finished(paths)


def _every_unfinished_record(state_dir: Path, slot: int) -> list[tuple[MachineRecord, bool]]:
    found = (_unfinished_record(paths, slot) for paths in iter_machine_directories(state_dir))
    return [item for item in found if item is not None]


def _indexed_unfinished_records(state_dir: Path, slot: int, machine_uuids) -> list[tuple[MachineRecord, bool]]:
    """The unfinished records of the machines the slot's index names; those that need nothing more leave it."""
    records = []
    for machine_uuid in machine_uuids:
        paths = MachinePaths.for_machine(state_dir, machine_uuid)
        record = read_record(paths)
        if _needs_nothing(paths, record):
            unindex_machine(state_dir, slot, machine_uuid)
        elif record is not None and record.slot == slot:
            records.append((record, is_finished(paths)))
    return records


def _needs_nothing(paths: MachinePaths, record: MachineRecord | None) -> bool:
    """True if the machine needs nothing more of its slot: its record says done, or it has no directory at all.

    A directory whose record cannot be read stays in the index: the disk may answer later.
    """
    if record is None:
        return not paths.root.is_dir()
    return machine_state(record.state) is MachineState.DONE


def forget_done_machines(state_dir: Path, slot: int) -> None:
    """Remove from the slot's index the machines that need nothing more (its earlier machines, once done)."""
    for machine_uuid in indexed_machines(state_dir, slot) or ():
        paths = MachinePaths.for_machine(state_dir, machine_uuid)
        if _needs_nothing(paths, read_record(paths)):
            unindex_machine(state_dir, slot, machine_uuid)


def remove_containers(runtime: ContainerRuntime, handles) -> None:
    """Remove each container (killing it if it runs)."""
    for handle in handles:
        runtime.remove(handle)


def prepare(terms: MachineTerms, paths: MachinePaths, record: MachineRecord, now: float,
            prepare_machine, runtime: ContainerRuntime) -> PreparedMachine:
    """PREPARING: the directory and record first (so a failure can be finalised), then the rest."""
    # Named in its slot's index before it has a record: a successor of this worker looks there (scan).
    forget_done_machines(terms.state_dir, record.slot)
    index_machine(terms.state_dir, record.slot, record.machine_uuid)
    try:
        create_directory(terms)
    except BadTerms:
        # A Singularity machine whose account is missing: a plain directory, so its failure is finalised.
        create_machine_directory(terms.state_dir, terms.uuid)
        write_record(paths, record)
        raise
    write_record(paths, record)
    model = terms.machinetype["machine_model"]
    if model not in SUPPORTED_MODELS:
        raise UnsupportedModel(f"machine_model {model} is not run by this slot worker")
    return prepare_machine(terms, paths, now, runtime.payload_paths_for(model))


def create(runtime: ContainerRuntime, request: ContainerRequest) -> ContainerHandle:
    """STARTING, first half: the image, then the container (not started yet).

    Creating again after a failed attempt returns the container made then.
    A Docker image is looked for (and pulled) only when the engine refuses
    the container for want of it, or refuses it at all (the look names what
    is wrong with an image); a Singularity image is always looked at, as a
    cached copy of a URL may need refreshing.
    """
    if request.model == "docker":
        try:
            return runtime.create(request)
        except (ImageMissing, StartFailed):
            pass
    runtime.ensure_image(request.image, time.monotonic() + IMAGE_DEADLINE_SECONDS)
    return runtime.create(request)


def start(runtime: ContainerRuntime, handle: ContainerHandle, state_dir: Path, factory: str,
          record: MachineRecord) -> ContainerHandle:
    """STARTING, second half: start the created container; its handle, with its start time.

    The caller has recorded that the start was asked for. The start is
    recorded in the factory's history, which `vac occupancy` draws. An
    engine that gives no start time with the start gives it with the exit
    (see finish).
    """
    started = runtime.start(handle)
    history.record_started(state_dir, uuid=record.machine_uuid, factory=factory, slot=record.slot,
                           machinetype=record.machinetype, processors=record.processors,
                           started_at=started.started_at or time.time(), shutdown_at=record.shutdown_time)
    return started


def wait(runtime: ContainerRuntime, handle: ContainerHandle) -> ExitInfo | None:
    """RUNNING: the container's exit, or None after WAIT_CHUNK_SECONDS."""
    return runtime.wait(handle, time.monotonic() + WAIT_CHUNK_SECONDS)


def stop(runtime: ContainerRuntime, handle: ContainerHandle, grace_seconds: float) -> None:
    """STOPPING: SIGTERM, SIGKILL after the grace; returns once the container has exited."""
    runtime.stop(handle, grace_seconds)


def recheck(runtime: ContainerRuntime, handle: ContainerHandle) -> ExitInfo | None:
    """STOPPING past its deadline: how the container ended, after a SIGKILL if it still runs.

    None if it runs even so; ContainerGone if it no longer exists.
    """
    info = runtime.exit_status(handle)
    if info is None:
        runtime.kill(handle)
        info = runtime.exit_status(handle)
    return info


def finish(runtime: ContainerRuntime, paths: MachinePaths, record: MachineRecord, terms: MachineTerms | None,
           handle: ContainerHandle | None, exit_info: ExitInfo | None, cpu_seconds: float, now: float,
           fallback: ShutdownMessage | None) -> MachineRecord:
    """FINISHING: the outcome, the APEL record and the `finished` marker; the final record."""
    # The stored record wins: after a crash or a retry it may hold the outcome already.
    stored = read_record(paths)
    if stored is not None and stored.started is None and record.started is not None:
        # An adopted machine's start, taken from the engine, that the disk did not take.
        stored = dataclasses.replace(stored, started=record.started)
    if stored is not None and record.last_seen is not None and (stored.last_seen or 0.0) < record.last_seen:
        # The slot keeps its newest CPU sample in memory; the disk's may be a minute old.
        stored = dataclasses.replace(stored, last_seen=record.last_seen)
    record = stored or record
    if exit_info is None and handle is not None:
        try:
            exit_info = runtime.exit_status(handle)
        except ContainerGone:
            exit_info = None
    if exit_info is not None and exit_info.started_at is not None:
        # The engine's own start time: the record had the time the start returned.
        record = dataclasses.replace(record, started=exit_info.started_at)
    if handle is not None:
        # The last reading: a Singularity machine's cgroup keeps its whole CPU time until it is cleaned,
        # while the slot sampled it only every few seconds (Docker gives its last sample again).
        try:
            cpu_seconds = max(cpu_seconds, runtime.stats(handle).cpu_seconds)
        except ContainerRuntimeError:
            pass
    return finishing.finish_machine(paths, record, terms, exit_info, cpu_seconds, now, fallback)


def clean(runtime: ContainerRuntime, factory: str, slot: int, paths: MachinePaths,
          terms: MachineTerms | None, known: ContainerHandle | None = None) -> None:
    """CLEANING: remove the machine's container and destroy its scratch space.

    `known`: the container the slot made or adopted for it. A machine has at
    most one (its container's name holds its UUID, and a repeated create
    returns the first), so that one is removed without asking the engine for
    a listing; a machine with none known (its create failed or went
    unanswered) has its containers found by their labels.
    """
    if known is not None:
        runtime.remove(known)
    else:
        record = read_record(paths)
        # Its own engine must answer; another (a Docker engine on a Singularity-only host) need not.
        models = {record.machine_model} if record is not None else None
        for handle in runtime.find(factory, slot, models=models, machine_uuid=paths.machine_uuid, brief=True):
            if handle.machine_uuid == paths.machine_uuid:
                runtime.remove(handle)
    backend = scratch_backend(terms.factory) if terms is not None else DirectoryScratch()
    backend.destroy(paths)
