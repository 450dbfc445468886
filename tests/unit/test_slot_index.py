"""The index of each slot's unfinished machines: a restarted worker reads only their records, and still
finds every unfinished machine of its slot after a crash at each point, and on a state directory from
before the index."""

import json
import shutil
import time
import uuid as uuid_module

import pytest

from vac.ipc import messages
from vac.machine import layout
from vac.machine.layout import (MachinePaths, complete_index, create_machine_directory, index_machine,
                                indexed_machines, slot_index_directory)
from vac.machine.record import MachineRecord, is_finished, read_record, write_record
from vac.runtimes import singularity
from vac.runtimes.base import ContainerState
from vac.runtimes.by_model import runtimes_from_spec
from vac.workers import slot_steps

from vac.workers.machine_run import SlotMachine

from slot_fakes import FACTORY, SLOT, FakeJobs, World, make_machinetype, place_spec, settle


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def _history(state_dir, count, slot=SLOT, state="done"):
    """`count` machines of `slot` kept for history (finished, their records done)."""
    uuids = []
    for _ in range(count):
        machine_uuid = str(uuid_module.uuid4())
        paths = create_machine_directory(state_dir, machine_uuid)
        write_record(paths, MachineRecord(machine_uuid=machine_uuid, slot=slot, machine_name="f1-03.example.com",
                                          machinetype="busy-test", machine_model="docker", processors=1,
                                          created=time.time() - 86400, shutdown_time=0, state=state))
        (paths.finished_marker).write_text("1\n")
        uuids.append(machine_uuid)
    return uuids


def _reads(monkeypatch):
    """The machine UUIDs whose records the scan reads, in order."""
    read = []
    real = slot_steps.read_record

    def counting(paths):
        read.append(paths.machine_uuid)
        return real(paths)

    monkeypatch.setattr(slot_steps, "read_record", counting)
    return read


def _without_index(world):
    """The state directory as the version before the index left it."""
    shutil.rmtree(world.state_dir / layout.UNFINISHED_DIR_NAME)


def test_a_restarted_slot_reads_only_the_records_its_index_names(world, monkeypatch):
    world.boot()
    spec = world.place()
    _history(world.state_dir, 50)
    _history(world.state_dir, 50, slot=SLOT + 1)
    read = _reads(monkeypatch)

    world.boot()

    assert world.slot.state.value == "running" and world.slot.machine.uuid == spec["uuid"]
    assert read == [spec["uuid"]], "one record read, not every machine's kept for history"


def test_a_state_directory_from_before_the_index_is_read_whole_once_then_indexed(world, monkeypatch):
    world.boot()
    spec = world.place()
    container_id = world.container_id()
    history = _history(world.state_dir, 5)
    _without_index(world)
    read = _reads(monkeypatch)

    world.boot()

    assert world.slot.state.value == "running" and world.slot.machine.uuid == spec["uuid"]
    assert world.runtime.containers[container_id].state is ContainerState.RUNNING, "never taken for an orphan"
    assert sorted(read) == sorted(history + [spec["uuid"]])
    assert indexed_machines(world.state_dir, SLOT) == [spec["uuid"]]
    read.clear()
    world.boot()
    assert read == [spec["uuid"]]


def test_an_unstarted_machine_from_before_the_index_still_fails_to_start_once(world):
    world.boot()
    world.slot.on_message(messages.Place(_spec(world)))
    world.slot.on_jobs([world.jobs.take("prepare")])     # died with the start job pending: no container
    machine = world.slot.machine
    _without_index(world)

    world.boot()
    world.boot()

    assert [(f.uuid, f.code) for f in world.finished()] == [(machine.uuid, 700)]
    assert read_record(machine.paths).state == "done"


def test_each_machine_is_named_in_the_index_before_its_record_is_written(world, monkeypatch):
    world.boot()
    named_first = []
    real = slot_steps.write_record

    def checking(paths, record):
        if not paths.record.exists():
            named_first.append(record.machine_uuid in (indexed_machines(world.state_dir, record.slot) or ()))
        return real(paths, record)

    monkeypatch.setattr(slot_steps, "write_record", checking)
    world.place()
    assert named_first == [True]


def test_a_worker_dead_before_its_machines_record_leaves_nothing_to_take_over(world):
    world.boot()
    machine_uuid = str(uuid_module.uuid4())
    index_machine(world.state_dir, SLOT, machine_uuid)      # then it died: no directory, no record

    world.boot()

    assert world.states()[-1] == "idle" and world.finished() == []
    assert indexed_machines(world.state_dir, SLOT) == []


def test_a_machine_prepared_before_a_crash_is_found_by_the_index_and_finalised_once(world):
    world.boot()
    world.slot.on_message(messages.Place(_spec(world)))
    world.slot.on_jobs([world.jobs.take("prepare")])
    machine = world.slot.machine
    assert indexed_machines(world.state_dir, SLOT) == [machine.uuid]

    world.boot()
    world.boot()

    assert [(f.uuid, f.code) for f in world.finished()] == [(machine.uuid, 700)]
    assert is_finished(machine.paths) and read_record(machine.paths).state == "done"
    assert indexed_machines(world.state_dir, SLOT) == []


def test_a_machine_whose_record_says_done_leaves_the_index_without_being_finalised_again(world):
    world.boot()
    spec = world.place()
    world.clock.advance(900)
    world.end_container(0, "200 done")
    assert read_record(world.paths(spec)).state == "done"
    assert indexed_machines(world.state_dir, SLOT) == [spec["uuid"]], "still named: the worker died here"

    world.boot()

    assert len(world.finished()) == 1 and len(world.apel_files()) == 1
    assert indexed_machines(world.state_dir, SLOT) == []


def test_the_next_machine_of_a_slot_removes_its_done_predecessor_from_the_index(world):
    world.boot()
    first = world.place()
    world.end_container(0, "200 done")
    second = world.place()
    assert indexed_machines(world.state_dir, SLOT) == [second["uuid"]]
    assert first["uuid"] != second["uuid"]


def _placed_without_index(world):
    """A running machine in a slot whose index is gone (as after an upgrade): its spec."""
    world.boot()
    spec = world.place()
    _without_index(world)
    return spec


def _raising(error):
    def fail(*args):
        raise error
    return fail


def test_a_crash_while_the_index_is_completed_reads_every_record_again(world, monkeypatch):
    spec = _placed_without_index(world)
    monkeypatch.setattr(layout, "create_atomic", _raising(RuntimeError("the worker died here")))
    with pytest.raises(RuntimeError, match="died here"):
        world.boot()
    monkeypatch.undo()
    assert indexed_machines(world.state_dir, SLOT) is None, "names without the marker are not an index"

    world.boot()

    assert world.slot.state.value == "running" and world.slot.machine.uuid == spec["uuid"]
    assert indexed_machines(world.state_dir, SLOT) == [spec["uuid"]]


def test_an_index_that_cannot_be_written_leaves_the_scan_to_every_record(world, monkeypatch):
    spec = _placed_without_index(world)
    monkeypatch.setattr(slot_steps, "complete_index", _raising(PermissionError("read-only")))
    world.boot()

    assert world.slot.state.value == "running" and world.slot.machine.uuid == spec["uuid"]
    assert indexed_machines(world.state_dir, SLOT) is None


def test_a_running_machine_the_index_does_not_name_is_adopted_not_removed(world):
    # A complete index that missed a machine (made by a version without it, say):
    # the engine's container leads to its record all the same.
    world.boot()
    spec = world.place()
    container_id = world.container_id()
    (slot_index_directory(world.state_dir, SLOT) / spec["uuid"]).unlink()

    world.boot()

    assert world.slot.state.value == "running" and world.slot.machine.uuid == spec["uuid"]
    assert world.runtime.containers[container_id].state is ContainerState.RUNNING
    assert indexed_machines(world.state_dir, SLOT) == [spec["uuid"]]


def test_a_named_machine_whose_record_cannot_be_read_stays_named(world):
    world.boot()
    machine_uuid = str(uuid_module.uuid4())
    index_machine(world.state_dir, SLOT, machine_uuid)
    paths = create_machine_directory(world.state_dir, machine_uuid)
    paths.record.write_text("{damaged")

    world.boot()

    assert world.states()[-1] == "idle"
    assert indexed_machines(world.state_dir, SLOT) == [machine_uuid]


def test_the_index_marker_and_names(tmp_path):
    assert indexed_machines(tmp_path, 5) is None
    first, second = str(uuid_module.uuid4()), str(uuid_module.uuid4())
    index_machine(tmp_path, 5, first)
    index_machine(tmp_path, 5, first)
    assert indexed_machines(tmp_path, 5) is None, "incomplete until a full scan says so"
    complete_index(tmp_path, 5, [second])
    assert indexed_machines(tmp_path, 5) == sorted([first, second])
    layout.unindex_machine(tmp_path, 5, first)
    layout.unindex_machine(tmp_path, 5, first)
    assert indexed_machines(tmp_path, 5) == [second]
    assert indexed_machines(tmp_path, 6) is None
    with pytest.raises(ValueError):
        index_machine(tmp_path, 5, "../machines")
    assert oct((slot_index_directory(tmp_path, 5)).stat().st_mode & 0o777) == "0o700"
    assert MachinePaths.for_machine(tmp_path, first)   # names are machine UUIDs


class ForkRecordingJobs(FakeJobs):
    """FakeJobs that remember which jobs were to run in a forked child."""

    def __init__(self):
        super().__init__()
        self.forked = {}

    def submit(self, name, call, *args, token=None, fork=False):
        self.forked[name] = fork
        super().submit(name, call, *args, token=token, fork=fork)


def _scan_forked(world):
    jobs = ForkRecordingJobs()
    slot = SlotMachine(slot=SLOT, factory_name=FACTORY, state_dir=world.state_dir, runtime=world.runtime,
                       jobs=jobs, report=lambda state, **detail: None, send=world.sent.append, clock=world.clock,
                       watch_factory=lambda path: None)
    slot.start()
    settle(slot, jobs)
    return jobs.forked["scan"]


def test_a_slot_with_a_machine_to_take_over_scans_in_its_own_thread_an_empty_one_in_a_child(world):
    # The slot that will supervise a machine makes its engine client anyway; an idle one should hold none.
    assert _scan_forked(world) is True
    world.boot()
    world.place()
    assert _scan_forked(world) is False
    _without_index(world)
    assert _scan_forked(world) is True, "without an index, as before it"


def _spec(world):
    return place_spec(world.settings, make_machinetype(world.template), SLOT, world.clock())


def _singularity_machine(state_dir, slot):
    """A machine directory holding a Singularity machine's container of `slot` (as the runtime writes it)."""
    machine_uuid = str(uuid_module.uuid4())
    folder = create_machine_directory(state_dir, machine_uuid).root / singularity.FOLDER_NAME
    folder.mkdir()
    (folder / singularity.CONTAINER_FILE).write_text(json.dumps({
        "id": f"singularity-{machine_uuid}", "name": f"vac-{machine_uuid}", "created_at": 1.0,
        "labels": {"vac.factory": FACTORY, "vac.slot": str(slot), "vac.machine": machine_uuid}}))
    return machine_uuid


def test_the_singularity_runtime_looks_only_at_the_machines_a_complete_index_names(tmp_path, monkeypatch):
    runtime = runtimes_from_spec({"state_dir": str(tmp_path), "machine_models": ["singularity"]},
                                 30).for_model("singularity")
    named = _singularity_machine(tmp_path, SLOT)
    unnamed = _singularity_machine(tmp_path, SLOT)
    _history(tmp_path, 20)
    assert sorted(h.machine_uuid for h in runtime.find(FACTORY, SLOT)) == sorted([named, unnamed]), \
        "without an index, every machine directory"

    complete_index(tmp_path, SLOT, [named])
    looked_at = []
    real = singularity.iter_machine_directories

    def counting(state_dir, machine_uuid=None):
        for paths in real(state_dir, machine_uuid):
            looked_at.append(paths.machine_uuid)
            yield paths

    monkeypatch.setattr(singularity, "iter_machine_directories", counting)
    assert [h.machine_uuid for h in runtime.find(FACTORY, SLOT)] == [named]
    assert looked_at == [named], "not every machine directory kept for history"
    assert runtime.find(FACTORY, SLOT + 1) == []
