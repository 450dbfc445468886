"""No slot state waits forever, and a full state disk holds back nothing that matters: scripted
histories of the slot state machine with a recording runtime, jobs run when the test says,
a clock the test moves, and the real machine directory on disk."""

import errno

import pytest

from vac.history import history_path
from vac.ipc import messages
from vac.machine import atomicfile
from vac.machine.record import is_finished, read_record
from vac.workers import slot_rules

from slot_fakes import SLOT, World, settle

ENGINE_TIMEOUT = 30.0   # what the fake slot is built with (machine_run's default)
STEP = slot_rules.step_seconds(ENGINE_TIMEOUT)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def stopping_at_the_wall_limit(world, leave=("wait", "stats", "stop")):
    """A running machine reaches its shutdown time while a CPU sample is under way."""
    world.boot()
    spec = world.place(shutdown_at=int(world.clock()) + 100)
    world.tick_at(world.clock() + slot_rules_first_stats())
    assert world.jobs.running("stats"), "a CPU sample is under way"
    world.clock.now = float(spec["shutdown_at"])
    world.slot.tick()
    settle(world.slot, world.jobs, leave=leave)
    assert world.slot.state.value == "stopping"
    return spec


def slot_rules_first_stats():
    from vac.workers.slot_running import FIRST_STATS_DELAY_SECONDS
    return FIRST_STATS_DELAY_SECONDS


def test_a_sample_due_while_one_is_under_way_is_no_reason_to_wake(world):
    # The slot used to return a past wake-up here and spin, never collecting the stop's end.
    stopping_at_the_wall_limit(world)
    for _ in range(3):
        wake = world.slot.tick()
        assert wake is None or wake > world.clock()
    world.slot.on_jobs([world.jobs.take("stop")])
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs, leave=("stats",))
    assert [(f.code, f.text) for f in world.finished()] == [(700, "Exceeded max_wallclock_seconds")]
    assert world.states()[-1] == "idle" and world.apel_files() != []
    world.slot.on_jobs([world.jobs.take("stats")])   # the slow sample ends late: nothing to do with it
    assert world.states()[-1] == "idle"


def test_a_stop_that_never_returns_is_checked_with_the_engine_at_its_deadline(world):
    spec = stopping_at_the_wall_limit(world)
    container_id = world.container_id()
    state, deadline = world.slot.progress()
    assert (state, deadline) == ("stopping", spec["shutdown_at"] + slot_rules.WALLCLOCK_GRACE_SECONDS + STEP)
    assert world.slot.tick() <= deadline

    world.clock.now = deadline
    world.slot.tick()
    assert world.jobs.running("recheck")
    # Asked again: the slot has moved, so its heartbeats carry a new deadline.
    assert world.slot.progress()[1] > deadline
    world.slot.on_jobs([world.jobs.take("recheck")])
    assert ("kill", container_id) in world.runtime.calls
    settle(world.slot, world.jobs, leave=("wait", "stats", "stop"))

    [finished] = world.finished()
    assert (finished.uuid, finished.code) == (spec["uuid"], 700)
    assert is_finished(world.paths(spec)) and world.states()[-1] == "idle"
    # The stop and the wait that never came back end at last: the next machine is not disturbed.
    second = world.place(leave=("wait", "stats", "stop"))
    world.slot.on_jobs([world.jobs.take("stop")])
    world.slot.on_jobs([world.jobs.take("wait")])
    assert world.slot.state.value == "running" and world.jobs.running("wait")
    assert world.slot.machine.uuid == second["uuid"]


def test_a_container_gone_when_asked_again_is_finished(world):
    spec = stopping_at_the_wall_limit(world)
    world.runtime.containers.clear()     # removed behind the slot's back
    world.tick_at(world.slot.progress()[1])
    assert [f.uuid for f in world.finished()] == [spec["uuid"]]
    assert world.states()[-1] == "idle"


def test_an_engine_that_does_not_answer_the_check_is_asked_again_at_the_next_deadline(world):
    stopping_at_the_wall_limit(world)
    world.runtime.unavailable = True
    first = world.slot.progress()[1]
    world.tick_at(first)
    assert world.slot.state.value == "stopping" and not world.jobs.running("recheck")
    second = world.slot.progress()[1]
    assert second > first
    world.runtime.unavailable = False
    world.tick_at(second)
    assert world.finished() != [] and world.states()[-1] == "idle"


@pytest.mark.parametrize("state, step", [("finishing", "finish"), ("cleaning", "clean")])
def test_a_step_that_never_returns_leaves_its_deadline_passed_for_the_supervisor(world, state, step):
    world.boot()
    world.place()
    world.runtime.end(world.container_id(), 0)
    world.slot.on_jobs([world.jobs.take("wait")])
    if state == "cleaning":
        world.slot.on_jobs([world.jobs.take("finish")])
    assert world.slot.state.value == state and world.jobs.running(step)
    deadline = world.slot.progress()[1]
    assert world.slot.tick() == deadline

    world.clock.now = deadline + 5
    wake = world.slot.tick()
    # Nothing a worker can do about a job stuck in the kernel: no spinning, and its
    # heartbeats keep the passed deadline, which the supervisor acts on.
    assert wake is None or wake > world.clock()
    assert world.slot.progress() == (state, deadline)
    assert world.jobs.names().count(step) == 1


def test_a_step_retried_after_a_failure_counts_as_progress(world):
    world.runtime.unavailable = True
    world.boot()
    due = world.slot.tick()
    assert world.slot.progress() == ("unavailable", due + STEP)


def test_an_idle_slot_has_no_deadline(world):
    world.boot()
    assert world.slot.progress() == ("idle", None)
    assert world.slot.tick() is None


# ------------------------------------------------------------ the start is recorded before it happens


def test_the_start_is_recorded_before_the_engine_is_asked(world):
    world.boot()
    spec = world.place(leave=("start", "wait", "stats"))
    record = read_record(world.paths(spec))
    assert (record.state, record.start_requested, record.started) == ("starting", world.clock(), None)


def killed_between_start_and_record(world):
    """The engine starts the container; the worker dies before it learns so."""
    world.boot()
    spec = world.place(leave=("start", "wait", "stats"))
    world.jobs.take("start")             # the engine did it; the result never reaches the worker
    [container] = world.runtime.containers.values()
    return spec, container


def test_a_machine_that_ended_before_its_adoption_is_accounted_from_the_engine_s_start(world):
    spec, container = killed_between_start_and_record(world)
    started = container.started_at
    world.clock.advance(500)
    (world.paths(spec).joboutputs / "shutdown_message").write_text("200 Work completed")
    world.runtime.end(container.id, 0)

    world.boot()

    [finished] = world.finished()
    assert (finished.code, finished.started_at, finished.ended_at) == (200, started, started + 500)
    [apel] = world.apel_files()
    assert f"LocalJobId: {spec['uuid']}\n" in apel.read_text() and "WallDuration: 500\n" in apel.read_text()
    assert read_record(world.paths(spec)).started == started
    assert history_path(world.state_dir).exists()


def test_a_machine_whose_container_vanished_after_its_start_was_asked_for_keeps_that_start(world):
    spec, container = killed_between_start_and_record(world)
    asked = read_record(world.paths(spec)).start_requested
    world.clock.advance(500)
    world.runtime.containers.clear()

    world.boot()

    [finished] = world.finished()
    assert finished.started_at == asked
    assert read_record(world.paths(spec)).started == asked


# ------------------------------------------------------------ a full state disk


@pytest.fixture
def full_disk(monkeypatch):
    """Every durable write of the state directory fails with ENOSPC while `full` is set."""
    state = {"full": False}
    real = atomicfile._write_temporary

    def write_temporary(*args, **kwargs):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(atomicfile, "_write_temporary", write_temporary)
    return state


def test_a_full_state_disk_does_not_hold_back_the_wall_limit(world, full_disk):
    world.boot()
    spec = world.place(shutdown_at=int(world.clock()) + 100)
    container_id = world.container_id()
    full_disk["full"] = True

    world.clock.now = float(spec["shutdown_at"])
    world.slot.tick()
    assert world.jobs.running("stop"), "the stop goes to the engine whatever the disk does"
    world.slot.on_jobs([world.jobs.take("stop")])
    assert world.runtime.containers[container_id].state.has_ended
    state, detail = world.reports[-1]
    assert state == "stopping" and "No space left on device" in detail["error"]
    assert read_record(world.paths(spec)).state == "running", "the disk took nothing"

    # The finalisation cannot be written either: retried, not a crash, until the disk has room.
    world.slot.on_jobs([world.jobs.take("wait")])
    world.slot.on_jobs([world.jobs.take("finish")])
    assert world.finished() == [] and world.slot.state.value == "finishing"
    full_disk["full"] = False
    for _ in range(5):
        world.tick_at(world.slot.tick())
        if world.states()[-1] == "idle":
            break
    [finished] = world.finished()
    assert (finished.code, finished.text) == (700, "Exceeded max_wallclock_seconds")
    assert read_record(world.paths(spec)).state == "done" and len(world.apel_files()) == 1
    assert world.reports[-1] == ("idle", {"slot": SLOT, "machine": None, "error": None})


def test_a_record_write_that_fails_while_running_is_retried_and_reported(world, full_disk):
    world.boot()
    spec = world.place()
    full_disk["full"] = True
    lowered = spec["shutdown_at"] - 1000
    world.slot.on_message(messages.LowerShutdown(spec["uuid"], lowered))
    state, detail = world.reports[-1]
    assert state == "running" and "No space left on device" in detail["error"]
    assert detail["machine"]["shutdown_at"] == lowered, "the limit is kept whatever the disk does"
    full_disk["full"] = False
    world.tick_at(world.slot.tick())
    world.tick_at(world.slot.tick())
    assert read_record(world.paths(spec)).shutdown_time == lowered
    assert (world.paths(spec).jobfeatures / "shutdowntime_job").read_text() == str(lowered)
    assert world.reports[-1][1]["error"] is None
