"""The factory's running totals for the metrics exporter, fed scripted worker reports."""

import random

from vac.config.load import load_configuration
from vac.ipc import messages
from vac.supervisor.factory import Factory

CONFIG = """
[settings]
vac_space = space.example.com
total_processors = 2

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 1
max_wallclock_seconds = 3600
"""
NOW = 1_800_000_000.0


def make_factory(tmp_path, load_average=0.0):
    path = tmp_path / "vac.conf"
    path.write_text(CONFIG)
    return Factory(load_configuration([str(path)]), factory_name="f1.example.com",
                   rng=random.Random(1), clock=lambda: NOW, load_average=lambda: load_average)


def report(factory, slot, state, machine=None):
    child = f"slot-{slot:02d}"
    factory.on_message(child, messages.StateReport(
        child_id=child, state=state, detail={"slot": slot, "machine": machine}))


def machine(uuid, started_at=NOW):
    return {"uuid": uuid, "machinetype": "work", "processors": 1, "started_at": started_at,
            "shutdown_at": int(NOW) + 3600, "superslot": 0, "container_id": "c"}


def finished(factory, uuid, code, text):
    factory.on_message("slot-00", messages.MachineFinished(
        uuid=uuid, machinetype="work", started_at=NOW - 3600, ended_at=NOW, code=code, text=text,
        processors=1, cpu_seconds=3000.0))


def test_a_machine_counts_as_started_once_however_often_its_slot_reports_it(tmp_path):
    factory = make_factory(tmp_path)
    report(factory, 0, "starting", machine("m1"))
    assert factory.started_total == {}, "not running yet"
    report(factory, 0, "running", machine("m1"))
    report(factory, 0, "running", machine("m1"))
    # Its worker restarts and adopts it.
    factory.on_child_exit("slot-00")
    report(factory, 0, "adopting")
    report(factory, 0, "running", machine("m1"))
    assert factory.started_total == {"work": 1}
    report(factory, 0, "running", machine("m2"))
    report(factory, 1, "running", machine("m3"))
    assert factory.started_total == {"work": 3}


def test_machines_a_new_root_adopts_are_not_counted_as_started(tmp_path):
    factory = make_factory(tmp_path)
    report(factory, 0, "adopting")
    report(factory, 0, "running", machine("old", started_at=NOW - 600))
    assert factory.started_total == {}


def test_finished_machines_count_by_machinetype_and_code_and_wall_limit_kills_apart(tmp_path):
    factory = make_factory(tmp_path)
    finished(factory, "a", 700, "Exceeded max_wallclock_seconds")
    finished(factory, "a", 700, "Exceeded max_wallclock_seconds")  # reported again: counted once
    finished(factory, "b", 700, "Failed to start")
    finished(factory, "c", 200, "Intended work completed ok")
    finished(factory, "d", None, "")
    assert factory.finished_total == {("work", 700): 2, ("work", 200): 1, ("work", None): 1}
    assert factory.wall_limit_kills == {"work": 1}


def test_scheduler_decisions_count_placements_by_machinetype_and_refusals_by_reason(tmp_path):
    factory = make_factory(tmp_path)
    report(factory, 0, "idle")
    report(factory, 1, "idle")
    factory.tick(True)
    assert factory.placements_total == {"work": 2}
    assert factory.refusals_total == {}

    loaded = make_factory(tmp_path, load_average=100.0)
    report(loaded, 1, "running", machine("m1"))
    for _ in range(2):
        report(loaded, 0, "idle")
        assert [child for child, _ in loaded.tick(True) if child != "reaper"] == []
    assert loaded.refusals_total == {"load_too_high": 2}
    assert loaded.placements_total == {}
