"""The slot state machine driven through scripted histories: a recording runtime, jobs run
when the test says, a clock the test moves, and the real machine directory on disk."""

import os

import pytest

from vac.ipc import messages
from vac.machine.record import is_finished, read_record
from vac.workers import slot_steps

from slot_fakes import FACTORY, SLOT, World, make_machinetype, place_spec, settle


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_a_fresh_slot_adopts_nothing_and_reports_idle(world):
    world.boot()
    assert world.reports == [("adopting", {"slot": SLOT, "machine": None, "error": None}),
                             ("idle", {"slot": SLOT, "machine": None, "error": None})]
    assert world.runtime.names() == ["find"]


def test_a_machine_runs_through_every_state_and_ends_with_its_message(world):
    world.boot()
    spec = world.place()
    paths = world.paths(spec)
    assert world.states()[2:] == ["preparing", "starting", "running"]
    container_id = world.container_id()
    state, detail = world.reports[-1]
    assert detail == {"slot": SLOT, "error": None, "machine": {
        "uuid": spec["uuid"], "machinetype": "busy-test", "processors": 1, "started_at": world.clock(),
        "shutdown_at": spec["shutdown_at"], "superslot": 7, "container_id": container_id,
        "created_at": world.clock(), "cpu_seconds": None, "heartbeat_at": None}}
    labels = world.runtime.containers[container_id].labels
    assert labels == {"vac.factory": FACTORY, "vac.slot": str(SLOT), "vac.machine": spec["uuid"],
                      "vac.machinetype": "busy-test", "vac.generation": "1", "vac.machine_name": "f1-03.example.com"}
    assert read_record(paths).state == "running"
    assert (paths.user_data.read_text() == f"#!/bin/sh\necho {spec['uuid']} busy-test\n")
    assert (paths.jobfeatures / "job_id").read_text() == spec["uuid"]

    world.clock.advance(120)
    world.end_container(0, "200 Work completed")

    assert world.states()[-3:] == ["finishing", "cleaning", "idle"]
    [finished] = world.finished()
    assert (finished.uuid, finished.code, finished.text, finished.machinetype) == (
        spec["uuid"], 200, "Work completed", "busy-test")
    assert finished.ended_at - finished.started_at == 120
    assert is_finished(paths) and read_record(paths).state == "done"
    assert world.runtime.containers == {}
    assert len(world.apel_files()) == 1
    assert paths.root.is_dir() and not paths.scratch.exists()


def test_cleaning_removes_the_machine_s_own_container_without_a_listing(world):
    world.boot()
    world.place()
    container_id = world.container_id()
    world.end_container(0, "200 Work completed")
    assert world.states()[-3:] == ["finishing", "cleaning", "idle"]
    # The adoption scan's listing at boot is the only one.
    assert world.runtime.names().count("find") == 1
    assert ("remove", container_id) in world.runtime.calls and world.runtime.containers == {}


def test_a_container_made_by_an_unanswered_create_is_found_by_its_labels_and_removed(world):
    world.boot()
    world.runtime.images.clear()  # the create fails, so the slot knows no container
    spec = world.place()
    assert [f.code for f in world.finished()] == [700]
    # As if the engine had made one before failing its answer: cleaning it again finds it.
    stray = world.runtime.add({"vac.factory": FACTORY, "vac.slot": str(SLOT), "vac.machine": spec["uuid"]})
    slot_steps.clean(world.runtime, FACTORY, SLOT, world.paths(spec), None)
    assert ("remove", stray.id) in world.runtime.calls and world.runtime.containers == {}


def test_the_wall_clock_limit_falls_due_to_the_second_and_ends_the_machine_with_700(world):
    world.boot()
    spec = world.place(shutdown_at=int(world.clock()) + 100)
    assert world.slot.tick() <= spec["shutdown_at"]
    world.tick_at(spec["shutdown_at"] - 0.5)
    assert world.slot.state.value == "running"

    world.tick_at(spec["shutdown_at"])
    assert world.slot.state.value == "stopping"
    assert ("stop", world.container_id(), 1.0) in world.runtime.calls
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)

    [finished] = world.finished()
    assert (finished.code, finished.text) == (700, "Exceeded max_wallclock_seconds")
    assert (world.paths(spec).joboutputs / "shutdown_message").read_text() == "700 Exceeded max_wallclock_seconds"


def test_the_wall_clock_limit_keeps_a_message_the_machine_wrote(world):
    world.boot()
    spec = world.place(shutdown_at=int(world.clock()) + 100)
    (world.paths(spec).joboutputs / "shutdown_message").write_text("300 No more work\n")
    world.tick_at(spec["shutdown_at"] + 1)
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)
    assert [(f.code, f.text) for f in world.finished()] == [(300, "No more work")]


def heartbeat_machinetype(world):
    return make_machinetype(world.template, heartbeat_file="heartbeat", heartbeat_seconds=30, fizzle_seconds=60)


def test_a_missing_heartbeat_file_ends_the_machine_after_fizzle_seconds(world):
    world.boot()
    world.place(heartbeat_machinetype(world))
    started = world.clock()
    assert world.tick_at(started + 59) <= started + 60
    assert world.slot.state.value == "running"
    world.tick_at(started + 60)
    assert world.slot.state.value == "stopping"
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)
    assert [(f.code, f.text) for f in world.finished()] == [(700, "Heartbeat file not created")]


def test_a_stale_heartbeat_file_ends_the_machine_and_a_fresh_one_does_not(world):
    world.boot()
    spec = world.place(heartbeat_machinetype(world))
    heartbeat = world.paths(spec).joboutputs / "heartbeat"
    heartbeat.write_text("alive")
    started = world.clock()
    os.utime(heartbeat, (started + 50, started + 50))
    world.tick_at(started + 70)
    assert world.slot.state.value == "running"
    assert started + 80 < world.slot.machine.heartbeat_check_at < started + 81   # when it turns 30 s old
    os.utime(heartbeat, (started + 79, started + 79))
    world.slot.machine.heartbeat_check_at = None    # what the joboutputs watch does on a touch
    world.tick_at(started + 100)
    assert world.slot.state.value == "running"
    world.tick_at(started + 109.5)
    assert world.slot.state.value == "stopping"
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)
    assert [(f.code, f.text) for f in world.finished()] == [(700, "Heartbeat file not updated")]


def test_end_machine_writes_its_message_and_stops_with_a_grace(world):
    world.boot()
    spec = world.place()
    world.slot.on_message(messages.EndMachine(spec["uuid"], 100, "Shutdown requested by the factory"))
    settle(world.slot, world.jobs)
    assert ("stop", world.container_id(), 10.0) in world.runtime.calls
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs)
    assert [(f.code, f.text) for f in world.finished()] == [(100, "Shutdown requested by the factory")]


def test_end_machine_for_another_machine_is_ignored(world):
    world.boot()
    world.place()
    world.slot.on_message(messages.EndMachine("11111111-1111-4111-8111-111111111111", 100, "no"))
    assert world.slot.state.value == "running"


def test_end_machine_while_preparing_starts_no_container(world):
    world.boot()
    spec = place_spec(world.settings, make_machinetype(world.template), SLOT, world.clock())
    world.slot.on_message(messages.Place(spec))
    world.slot.on_message(messages.EndMachine(spec["uuid"], 100, "Shutdown requested by the factory"))
    settle(world.slot, world.jobs)
    assert "create" not in world.runtime.names()
    assert [(f.code, f.text) for f in world.finished()] == [(100, "Shutdown requested by the factory")]
    assert world.states()[-1] == "idle"


def test_a_missing_image_ends_the_machine_as_failed_to_start(world):
    world.boot()
    world.runtime.images.clear()
    spec = world.place()
    [finished] = world.finished()
    assert (finished.uuid, finished.code, finished.text) == (spec["uuid"], 700, "Failed to start")
    assert world.runtime.containers == {}
    assert world.apel_files() == []
    assert is_finished(world.paths(spec))
    assert world.states()[-3:] == ["finishing", "cleaning", "idle"]


def test_a_user_data_template_that_cannot_be_read_fails_the_start(world):
    world.boot()
    world.place(make_machinetype(world.tmp_path / "no-such-template"))
    assert [(f.code, f.text) for f in world.finished()] == [(700, "Failed to start")]
    assert "create" not in world.runtime.names()


def test_lower_shutdown_rewrites_the_mjf_and_moves_the_deadline(world):
    world.boot()
    spec = world.place()
    paths = world.paths(spec)
    lowered = spec["shutdown_at"] - 1000
    world.slot.on_message(messages.LowerShutdown(spec["uuid"], lowered))
    assert (paths.jobfeatures / "shutdowntime_job").read_text() == str(lowered)
    assert (paths.machinefeatures / "shutdowntime").read_text() == str(lowered)
    assert read_record(paths).shutdown_time == lowered
    assert world.reports[-1][1]["machine"]["shutdown_at"] == lowered
    world.tick_at(lowered)
    assert world.slot.state.value == "stopping"


def test_cpu_time_is_sampled_while_running_and_accounted_after_exit(world):
    world.boot()
    spec = world.place()
    world.runtime.cpu[world.container_id()] = 42.5
    world.tick_at(world.clock() + 2)
    world.slot.on_jobs([world.jobs.take("stats")])
    world.clock.advance(100)
    world.end_container(0, "200 done")
    assert world.finished()[0].cpu_seconds == 42.5
    [record_file] = world.apel_files()
    assert "CpuDuration: 42\n" in record_file.read_text()
    assert f"LocalJobId: {spec['uuid']}\n" in record_file.read_text()


def test_the_root_hears_a_running_machines_cpu_time_once_it_reaches_the_record(world):
    # The space's machines queries are answered with it, so it must reach the
    # root; once a minute, with the record, not with every sample.
    world.boot()
    world.place()
    world.runtime.cpu[world.container_id()] = 42.5
    reports = len(world.reports)
    world.tick_at(world.clock() + 2)
    world.slot.on_jobs([world.jobs.take("stats")])
    assert len(world.reports) == reports, "a sample alone is not reported"
    world.tick_at(world.clock() + 61)
    world.slot.on_jobs([world.jobs.take("stats")])
    machine = world.reports[-1][1]["machine"]
    assert machine["cpu_seconds"] == 42.5 and machine["heartbeat_at"] is not None


def test_a_machine_shorter_than_fizzle_seconds_gets_no_accounting_record(world):
    world.boot()
    world.place()
    world.clock.advance(10)
    world.end_container(1)
    [finished] = world.finished()
    assert finished.code is None and finished.text == "no shutdown_message"
    assert world.apel_files() == []


def test_a_placement_while_busy_is_refused_and_answered(world):
    world.boot()
    world.place()
    before = len(world.reports)
    world.place()
    assert len(world.reports) == before + 1
    state, detail = world.reports[-1]
    assert state == "running" and detail["error"].startswith("placement refused")


def test_the_title_shows_machinetype_state_and_time_since_start(world):
    world.boot()
    assert world.slot.title(world.clock() + 61) == "slot 03 - idle 0:01:01"
    world.place()
    assert world.slot.title(world.clock() + 7985) == "slot 03 busy-test running 2:13:05"


def test_an_unavailable_engine_is_reported_and_retried_with_backoff(world):
    world.runtime.unavailable = True
    world.boot()
    state, detail = world.reports[-1]
    assert state == "unavailable" and "connection refused" in detail["error"] and detail["machine"] is None
    delays = []
    for _ in range(7):
        due = world.slot.tick()
        delays.append(round(due - world.clock()))
        world.tick_at(due)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    world.runtime.unavailable = False
    world.tick_at(world.slot.tick())
    assert world.reports[-1] == ("idle", {"slot": SLOT, "machine": None, "error": None})


def test_the_engine_failing_while_running_keeps_the_machine_and_recovers(world):
    world.boot()
    world.place()
    container_id = world.container_id()
    world.runtime.unavailable = True
    world.slot.on_jobs([world.jobs.take("wait")])
    state, detail = world.reports[-1]
    assert state == "unavailable" and detail["machine"]["container_id"] == container_id
    world.runtime.unavailable = False
    world.tick_at(world.slot.tick())
    world.slot.on_jobs([world.jobs.take("wait")])
    assert world.reports[-1][0] == "running"


def test_a_running_slot_asks_an_unavailable_engine_every_second_and_runs_again_within_one(world):
    # Its CPU sample is what tells a running slot that the engine is back: at
    # the usual 5 s interval a node's machines would be unsupervised that long.
    world.boot()
    world.place()
    world.runtime.unavailable = True
    world.slot.on_jobs([world.jobs.take("wait")])
    world.tick_at(world.clock() + 2)
    world.slot.on_jobs([world.jobs.take("stats")])
    assert world.reports[-1][0] == "unavailable"
    world.runtime.unavailable = False
    world.tick_at(world.clock() + 1)
    world.slot.on_jobs([world.jobs.take("stats")])
    assert world.reports[-1][0] == "running"


def test_a_stop_left_over_from_the_previous_machine_does_not_swallow_the_next_one(world):
    world.boot()
    first = world.place()
    first_container = world.container_id()
    world.slot.on_message(messages.EndMachine(first["uuid"], 100, "Shutdown requested by the factory"))
    world.runtime.end(first_container, 0)         # it exited by itself before the stop reached the engine
    world.slot.on_jobs([world.jobs.take("wait")])
    settle(world.slot, world.jobs, leave=("wait", "stats", "stop"))
    assert world.states()[-1] == "idle" and world.jobs.running("stop")

    second = world.place(leave=("wait", "stats", "stop"))
    world.slot.on_message(messages.EndMachine(second["uuid"], 100, "Shutdown requested by the factory"))
    world.slot.on_jobs([world.jobs.take("stop")])  # the first machine's stop ends late
    world.slot.on_jobs([world.jobs.take("stop")])
    assert ("stop", world.container_id(), 10.0) in world.runtime.calls
    assert world.runtime.running() == []


def test_a_proxy_that_cannot_be_made_fails_the_start(world):
    # user_data_proxy with no x509cert.pem in the machinetype's files/: no machine without its credential.
    world.boot()
    world.place(make_machinetype(world.template, user_data_proxy=True))
    assert [(f.code, f.text) for f in world.finished()] == [(700, "Failed to start")]
    assert "create" not in world.runtime.names()
