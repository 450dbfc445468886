"""The slot records each machine in the factory's history: its start, its end, once, whatever fails."""

import pytest

from vac import history
from vac.machine.record import read_record
from vac.workers import finishing

from slot_fakes import FACTORY, SLOT, World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def spans(world):
    return history.machines_between(world.state_dir, 0, 2 * world.clock())


def test_a_started_machine_is_in_the_history_as_running_then_with_its_end(world):
    world.boot()
    started_at = world.clock()
    spec = world.place(processors=2)
    [running] = spans(world)
    assert running == history.MachineSpan(
        uuid=spec["uuid"], factory=FACTORY, slot=SLOT, machinetype="busy-test", processors=2,
        started_at=started_at, shutdown_at=spec["shutdown_at"])

    world.runtime.cpu[world.container_id()] = 950.0
    world.tick_at(world.clock() + 2)
    world.slot.on_jobs([world.jobs.take("stats")])
    world.clock.advance(598)
    world.end_container(0, "200 Work completed")
    [ended] = spans(world)
    assert (ended.ended_at, ended.shutdown_code, ended.shutdown_text) == (started_at + 600, 200, "Work completed")
    assert ended.cpu_seconds == 950.0
    assert ended.started_at == started_at and ended.processors == 2
    assert world.states()[-1] == "idle"


def test_a_repeated_finalisation_leaves_one_row(world):
    world.boot()
    spec = world.place()
    world.clock.advance(300)
    world.end_container(0, "300 No more work")
    paths = world.paths(spec)
    record = read_record(paths)
    # As a worker restarted in the middle of FINISHING does.
    finishing.record_history(paths, record, None)
    [ended] = spans(world)
    assert (ended.uuid, ended.shutdown_code, ended.factory) == (spec["uuid"], 300, FACTORY)


def test_a_machine_that_never_started_occupied_no_processors(world):
    world.boot()
    world.runtime.images.clear()
    world.place()
    assert world.finished()[0].code == 700
    assert not history.history_path(world.state_dir).exists()


def test_an_unwritable_history_does_not_stop_machines_running_and_being_accounted(world, caplog):
    history.history_path(world.state_dir).mkdir()   # sqlite cannot open a directory
    world.boot()
    world.place()
    assert world.states()[-1] == "running"
    world.clock.advance(120)
    world.end_container(0, "200 Work completed")
    assert world.states()[-3:] == ["finishing", "cleaning", "idle"]
    assert world.finished()[0].code == 200
    assert len(world.apel_files()) == 1
    assert "cannot record its start" in caplog.text and "cannot record its end" in caplog.text
