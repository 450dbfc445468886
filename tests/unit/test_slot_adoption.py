"""A worker started after its predecessor died takes over what it left: scripted histories
with a recording runtime, and crashes at chosen points."""

import pytest

from vac.ipc import messages
from vac.machine.record import is_finished, read_record
from vac.runtimes.base import ContainerState
from vac.workers import finishing
from vac.workers.machine_run import SlotMachine

from slot_fakes import FACTORY, SLOT, FakeJobs, World, make_machinetype, place_spec, settle


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_a_running_container_is_watched_again_and_finalised_once(world):
    world.boot()
    spec = world.place()
    container_id = world.container_id()
    world.clock.advance(300)
    world.runtime.calls.clear()

    world.boot()   # the worker died; a new one starts

    assert "create" not in world.runtime.names() and "start" not in world.runtime.names()
    assert world.slot.state.value == "running"
    state, detail = world.reports[-1]
    assert detail["machine"]["container_id"] == container_id and detail["machine"]["superslot"] == 7
    assert detail["machine"]["started_at"] == world.clock() - 300
    world.end_container(0, "200 done")
    assert [(f.uuid, f.code) for f in world.finished()] == [(spec["uuid"], 200)]
    assert len(world.apel_files()) == 1
    assert world.runtime.containers == {}


def test_a_container_that_ended_while_no_worker_ran_is_finalised_once(world):
    world.boot()
    spec = world.place()
    container_id = world.container_id()
    world.clock.advance(200)
    (world.paths(spec).joboutputs / "shutdown_message").write_text("300 Nothing to do")
    world.runtime.end(container_id, 0)

    world.boot()
    world.boot()   # and once more: nothing is left to do

    [finished] = world.finished()
    assert (finished.uuid, finished.code, finished.text) == (spec["uuid"], 300, "Nothing to do")
    assert finished.ended_at - finished.started_at == 200
    assert len(world.apel_files()) == 1
    assert world.runtime.containers == {}
    assert read_record(world.paths(spec)).state == "done"
    assert world.states()[-1] == "idle"


def test_a_machine_whose_container_was_never_created_failed_to_start(world):
    world.boot()
    world.slot.on_message(messages.Place(_spec(world)))
    world.slot.on_jobs([world.jobs.take("prepare")])     # died with the start job pending
    spec = world.slot.machine
    assert read_record(spec.paths).state == "starting"

    world.boot()

    [finished] = world.finished()
    assert (finished.uuid, finished.code, finished.text) == (spec.uuid, 700, "Failed to start")
    assert (spec.paths.joboutputs / "shutdown_message").read_text() == "700 Failed to start"
    assert is_finished(spec.paths) and world.apel_files() == []
    assert world.states()[-1] == "idle"


def test_a_created_but_unstarted_container_is_started_not_created_again(world):
    world.boot()
    world.slot.on_message(messages.Place(_spec(world)))
    world.slot.on_jobs([world.jobs.take("prepare")])
    created = world.runtime.create(world.slot.machine.request)   # created, then the worker died

    world.boot()

    assert world.slot.state.value == "running"
    assert list(world.runtime.containers) == [created.id]
    assert world.runtime.containers[created.id].state is ContainerState.RUNNING


def test_a_labelled_container_without_a_record_is_removed_and_others_are_left(world):
    orphan = world.runtime.add({"vac.factory": FACTORY, "vac.slot": str(SLOT),
                                "vac.machine": "22222222-2222-4222-8222-222222222222"})
    other_slot = world.runtime.add({"vac.factory": FACTORY, "vac.slot": "4",
                                    "vac.machine": "33333333-3333-4333-8333-333333333333"})
    other_factory = world.runtime.add({"vac.factory": "f2.example.com", "vac.slot": str(SLOT),
                                       "vac.machine": "44444444-4444-4444-8444-444444444444"})
    world.boot()
    assert orphan.id not in world.runtime.containers
    assert {other_slot.id, other_factory.id} <= set(world.runtime.containers)
    assert world.states()[-1] == "idle"


def test_a_machine_being_stopped_is_stopped_again(world):
    world.boot()
    spec = world.place()
    world.slot.on_message(messages.EndMachine(spec["uuid"], 100, "Shutdown requested by the factory"))
    world.jobs.pending.clear()          # died before the stop reached the engine
    world.runtime.calls.clear()

    world.boot()

    assert world.slot.state.value == "stopping"
    assert world.runtime.names().count("stop") == 1
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)
    assert [(f.code, f.text) for f in world.finished()] == [(100, "Shutdown requested by the factory")]


def test_a_crash_between_the_apel_record_and_the_finished_marker_still_accounts_once(world, monkeypatch):
    world.boot()
    spec = world.place()
    world.clock.advance(900)

    def crash(paths, ended):
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(finishing, "mark_finished", crash)
    with pytest.raises(RuntimeError, match="died here"):
        world.end_container(0, "200 done")
    assert len(world.apel_files()) == 1 and not is_finished(world.paths(spec))
    assert world.finished() == []
    monkeypatch.undo()

    world.boot()

    assert len(world.apel_files()) == 1
    assert is_finished(world.paths(spec))
    [finished] = world.finished()
    assert (finished.code, finished.ended_at - finished.started_at) == (200, 900)
    assert world.runtime.containers == {}


def test_the_outcome_fixed_before_a_crash_is_the_one_reported(world, monkeypatch):
    world.boot()
    spec = world.place()
    world.clock.advance(900)
    monkeypatch.setattr(finishing.apel, "write_job_record", lambda *args: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        world.end_container(0, "200 done")
    monkeypatch.undo()
    # The container's message changes and time passes: the record already holds the outcome.
    (world.paths(spec).joboutputs / "shutdown_message").write_text("500 changed later")
    world.clock.advance(5000)
    world.boot()
    [finished] = world.finished()
    assert (finished.code, finished.ended_at - finished.started_at) == (200, 900)
    [apel_record] = world.apel_files()
    assert "WallDuration: 900\n" in apel_record.read_text()


def test_a_record_of_another_slot_is_not_touched(world):
    world.boot()
    spec = world.place()
    jobs = FakeJobs()
    slot = SlotMachine(slot=SLOT + 1, factory_name=FACTORY, state_dir=world.state_dir, runtime=world.runtime,
                       jobs=jobs, report=lambda state, **detail: None, send=world.sent.append, clock=world.clock,
                       watch_factory=lambda path: None)
    slot.start()
    settle(slot, jobs)
    assert slot.state.value == "idle"
    assert read_record(world.paths(spec)).state == "running"
    assert len(world.runtime.running()) == 1


def _spec(world):
    return place_spec(world.settings, make_machinetype(world.template), SLOT, world.clock())
