"""Ends nobody saw: the last evidence of life, bounded by the shutdown time, and marked as estimated."""

import json
import os

import pytest

from vac.accounting import apel
from vac.accounting.end_time import ENGINE_LOST_MARGIN_SECONDS, decide_end
from vac.history import machines_between
from vac.machine.record import read_record
from vac.runtimes.base import ExitInfo

from slot_fakes import START, World

STARTED = 1000.0
SHUTDOWN = 1600


def end(exit_info=None, evidence=(), now=5000.0, started=STARTED):
    return decide_end(started=started, exit_info=exit_info, evidence=evidence, shutdown_time=SHUTDOWN,
                      stop_grace=1.0, now=now)


# ------------------------------------------------------------ the decision


def test_the_engines_finish_time_is_the_end_when_it_saw_one():
    decided = end(ExitInfo(0, 1500.0), evidence=[1490.0])

    assert (decided.ended, decided.estimated) == (1500.0, False)


def test_an_unseen_end_is_the_last_evidence_of_life():
    decided = end(None, evidence=[1100.0, None, 1350.5, 1200.0])

    assert (decided.ended, decided.estimated) == (1350.5, True)


def test_an_estimate_is_never_after_the_shutdown_time_plus_the_grace_nor_before_the_start():
    # A container may set its files' times as it likes.
    assert end(None, evidence=[99999.0]).ended == SHUTDOWN + 1.0
    assert end(None, evidence=[10.0]).ended == STARTED
    assert end(None, evidence=[]).ended == STARTED
    assert end(None, evidence=[1400.0], now=1300.0).ended == 1300.0


@pytest.mark.parametrize("finished_at, believed", [
    (1400.0 + ENGINE_LOST_MARGIN_SECONDS, True),
    (1400.0 + ENGINE_LOST_MARGIN_SECONDS + 1, False),
])
def test_exit_255_long_after_the_last_sign_of_life_is_the_engines_restore_not_the_exit(finished_at, believed):
    decided = end(ExitInfo(255, finished_at), evidence=[1400.0])

    assert decided.estimated is not believed
    assert decided.ended == (finished_at if believed else 1400.0)


def test_other_exit_codes_long_after_the_last_sample_are_believed():
    decided = end(ExitInfo(137, 1590.0), evidence=[1100.0])

    assert (decided.ended, decided.estimated) == (1590.0, False)


def test_a_machine_that_never_started_ends_when_it_was_given_up():
    decided = end(None, evidence=[1200.0], started=None, now=1234.0)

    assert (decided.ended, decided.estimated) == (1234.0, False)


# ------------------------------------------------------------ through the slot


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def _sample(world):
    """The slot takes a CPU sample now (the engine's sample time is the fake clock)."""
    world.slot.tick()
    world.slot.on_jobs([world.jobs.take("stats")])


def _apel(world):
    [path] = world.apel_files()
    [record] = apel.parse_records(path.read_text())
    return record


def test_a_container_removed_while_no_worker_ran_ends_at_its_last_sign_of_life(world):
    world.boot()
    spec = world.place(shutdown_at=int(START) + 600)
    started = read_record(world.paths(spec)).started
    world.clock.advance(100)
    _sample(world)
    world.clock.advance(61)
    _sample(world)   # a minute after the first: the sample reaches the record
    assert read_record(world.paths(spec)).last_seen == started + 161
    heartbeat = world.paths(spec).joboutputs / "heartbeat"
    heartbeat.write_text("alive")
    os.utime(heartbeat, (started + 400, started + 400))
    # vacd stops (the worker with it); the container is removed; vacd starts 28 minutes later.
    world.runtime.containers.clear()
    world.clock.advance(1700)

    world.boot()

    [finished] = world.finished()
    assert finished.ended_at == started + 400
    record = read_record(world.paths(spec))
    assert record.end_estimated is True and record.ended == started + 400
    assert int(_apel(world)["WallDuration"]) == 400
    [span] = machines_between(world.state_dir, 0, 2 * START)
    assert span.end_estimated is True and span.ended_at == started + 400


def test_a_payload_that_touched_its_files_past_its_shutdown_time_is_not_billed_for_it(world):
    world.boot()
    spec = world.place(shutdown_at=int(START) + 600)
    started = read_record(world.paths(spec)).started
    (world.paths(spec).joboutputs / "result").write_text("x")
    os.utime(world.paths(spec).joboutputs / "result", (started + 5000, started + 5000))
    world.runtime.containers.clear()
    world.clock.advance(3000)

    world.boot()

    assert int(_apel(world)["EndTime"]) == int(START) + 600 + 1
    assert read_record(world.paths(spec)).end_estimated is True


def test_exit_255_stamped_at_an_engine_restore_is_not_billed(world):
    world.boot()
    spec = world.place()
    started = read_record(world.paths(spec)).started
    world.clock.advance(900)
    _sample(world)
    # dockerd goes down; the container exits unseen; dockerd's restore reports 255 now.
    world.clock.advance(600)
    world.end_container(255)

    [finished] = world.finished()
    assert finished.ended_at == started + 900
    record = read_record(world.paths(spec))
    assert (record.exit_code, record.end_estimated) == (255, True)
    assert int(_apel(world)["WallDuration"]) == 900


def test_exit_255_seen_while_the_slot_sampled_it_is_the_end(world):
    world.boot()
    spec = world.place()
    started = read_record(world.paths(spec)).started
    world.clock.advance(900)
    _sample(world)
    world.clock.advance(3)
    world.end_container(255)

    record = read_record(world.paths(spec))
    assert (record.ended, record.end_estimated) == (started + 903, False)
    assert json.loads(world.paths(spec).record.read_text())["end_estimated"] is False
