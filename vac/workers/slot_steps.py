"""The blocking steps of a slot, each run as a job in a thread (see job_runner.py).

Every step may be cut short by the worker's death and repeated by its
successor: creating the container again returns the one made before, the
outcome is fixed in the record once, removing what is gone is fine.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from vac import history
from vac.machine.joboutputs import ShutdownMessage
from vac.machine.layout import MachinePaths, create_machine_directory, iter_machine_directories
from vac.machine.prepare import BadTerms, MachineTerms, PreparedMachine, create_directory, scratch_backend
from vac.machine.record import MachineRecord, is_finished, read_record, write_record
from vac.machine.scratch import DirectoryScratch
from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerRequest, ContainerRuntime,
                               ContainerRuntimeError, ExitInfo, ImageMissing, StartFailed)
from vac.vocabulary.slot_states import MachineState, machine_state
from vac.workers import finishing, slot_rules

# Each wait on the engine is bounded; the slot starts the next one at once.
WAIT_CHUNK_SECONDS = 60.0
IMAGE_DEADLINE_SECONDS = slot_rules.IMAGE_DEADLINE_SECONDS
SUPPORTED_MODELS = ("docker", "singularity")


class UnsupportedModel(ValueError):
    """A machine_model this slot worker does not run."""


def scan(runtime: ContainerRuntime, factory: str, slot: int, state_dir: Path) -> slot_rules.AdoptionPlan:
    """What a predecessor left in `slot`: its unfinished records and its labelled containers."""
    records = []
    for paths in iter_machine_directories(state_dir):
        record = read_record(paths)
        if record is None or record.slot != slot or machine_state(record.state) is MachineState.DONE:
            continue
        records.append((record, is_finished(paths)))
    # An engine must answer when a record says a machine of its model may be there;
    # one that no record needs is only asked for orphans, if it answers.
    models = {record.machine_model for record, _ in records}
    containers = runtime.find(factory, slot, models=models)
    return slot_rules.adoption_plan(records, containers)


def remove_containers(runtime: ContainerRuntime, handles) -> None:
    """Remove each container (killing it if it runs)."""
    for handle in handles:
        runtime.remove(handle)


def prepare(terms: MachineTerms, paths: MachinePaths, record: MachineRecord, now: float,
            prepare_machine, runtime: ContainerRuntime) -> PreparedMachine:
    """PREPARING: the directory and record first (so a failure can be finalised), then the rest."""
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
    """STARTING, second half: start the created container; its handle, with the engine's start time.

    The caller has recorded that the start was asked for. The start is
    recorded in the factory's history, which `vac occupancy` draws.
    """
    runtime.start(handle)
    started = runtime.inspect(handle.id)
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
    if handle is not None:
        # The last reading: a Singularity machine's cgroup keeps its whole CPU time until it is cleaned,
        # while the slot sampled it only every few seconds (Docker gives its last sample again).
        try:
            cpu_seconds = max(cpu_seconds, runtime.stats(handle).cpu_seconds)
        except ContainerRuntimeError:
            pass
    return finishing.finish_machine(paths, record, terms, exit_info, cpu_seconds, now, fallback)


def clean(runtime: ContainerRuntime, factory: str, slot: int, paths: MachinePaths,
          terms: MachineTerms | None) -> None:
    """CLEANING: remove every container of the machine (found by its labels) and destroy its scratch space."""
    record = read_record(paths)
    # Its own engine must answer; another (a Docker engine on a Singularity-only host) need not.
    models = {record.machine_model} if record is not None else None
    for handle in runtime.find(factory, slot, models=models, machine_uuid=paths.machine_uuid, brief=True):
        if handle.machine_uuid == paths.machine_uuid:
            runtime.remove(handle)
    backend = scratch_backend(terms.factory) if terms is not None else DirectoryScratch()
    backend.destroy(paths)
