"""A restarted root: backoff rebuilt from the history, and no placement before every slot has adopted."""

import random

import pytest

from vac import history
from vac.config.load import load_configuration
from vac.ipc import messages
from vac.machine.layout import create_machine_directory
from vac.machine.record import MachineRecord, mark_finished, write_record
from vac.supervisor import aborts, recall
from vac.supervisor.factory import Factory

NOW = 1_800_000_000.0
CONFIG = """
[settings]
vac_space = space.example.com
total_processors = 4
state_dir = {state_dir}

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 1
max_wallclock_seconds = 3600
backoff_seconds = 1000
fizzle_seconds = 60
"""


def make_factory(tmp_path):
    path = tmp_path / "vac.conf"
    path.write_text(CONFIG.format(state_dir=tmp_path))
    return Factory(load_configuration([str(path)]), factory_name="f1.example.com", rng=random.Random(1),
                   clock=lambda: NOW, load_average=lambda: 0.0)


def report(factory, slot, state, machine=None):
    child = f"slot-{slot:02d}"
    factory.on_message(child, messages.StateReport(child_id=child, state=state,
                                                   detail={"slot": slot, "machine": machine}))


def placements(factory):
    return [(child, msg.machine) for child, msg in factory.tick(True) if isinstance(msg, messages.Place)]


def machine(uuid, processors=1):
    return {"uuid": uuid, "machinetype": "work", "processors": processors, "started_at": NOW - 100,
            "shutdown_at": int(NOW) + 3000, "superslot": 1, "container_id": "c"}


def ended(tmp_path, uuid, ended_at, code, started_at=None):
    history.record_finished(tmp_path, uuid=uuid, factory="f1.example.com", slot=0, machinetype="work",
                            processors=1, started_at=started_at or ended_at - 3000, ended_at=ended_at,
                            shutdown_code=code, shutdown_text="", cpu_seconds=1.0)


# ------------------------------------------------------------ backoff across a restart


def test_an_abort_before_the_restart_still_backs_its_machinetype_off(tmp_path):
    ended(tmp_path, "00000000-0000-4000-8000-000000000001", NOW - 400, 200)
    ended(tmp_path, "00000000-0000-4000-8000-000000000002", NOW - 300, 500)   # the abort
    ended(tmp_path, "00000000-0000-4000-8000-000000000003", NOW - 200, 200)
    factory = make_factory(tmp_path)

    recall.recall(factory, tmp_path, NOW)
    for slot in range(4):
        report(factory, slot, "idle")

    assert placements(factory) == []
    assert factory.backoff() == {"work": NOW - 300 + 1000}
    assert factory.last_refusal.reason.value == "all_in_backoff"


def test_without_the_history_a_restarted_factory_starts_at_once(tmp_path):
    # What the test above guards against: the same factory, not told the history, starts.
    ended(tmp_path, "00000000-0000-4000-8000-000000000002", NOW - 300, 500)
    factory = make_factory(tmp_path)
    for slot in range(4):
        report(factory, slot, "idle")

    assert len(placements(factory)) == 4


def test_aborts_older_than_backoff_and_fizzle_are_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(aborts, "BACKOFF_MEMORY_FLOOR_SECONDS", 0)
    ended(tmp_path, "00000000-0000-4000-8000-000000000002", NOW - 1000 - 60 - 1, 500)
    ended(tmp_path, "00000000-0000-4000-8000-000000000003", NOW - 1000 - 60 + 1, 200)

    histories = recall.remembered_histories(tmp_path, make_factory(tmp_path).machinetypes.values(), NOW)

    assert histories == {"work": aborts.OutcomeHistory(None, (aborts.Outcome(NOW - 4059, NOW - 1059, 200),))}


def test_a_history_that_cannot_be_read_forgets_backoff_and_vacd_starts(tmp_path, caplog):
    (tmp_path / history.HISTORY_FILE_NAME).write_bytes(b"not a database at all" * 100)

    assert recall.remembered_histories(tmp_path, make_factory(tmp_path).machinetypes.values(), NOW) == {}
    assert "backoff after earlier aborts is forgotten" in caplog.text


def test_rebuilt_histories_match_the_outcomes_reported_live():
    outcomes = [("a", aborts.Outcome(0.0, 30.0, None)), ("a", aborts.Outcome(0.0, 7200.0, 200)),
                ("b", aborts.Outcome(100.0, 900.0, 700)), ("a", aborts.Outcome(50.0, 60.0, 300))]
    live = {}
    for name, outcome in sorted(outcomes, key=lambda pair: pair[1].ended_at):
        live[name] = aborts.record_outcome(live.get(name, aborts.OutcomeHistory()), outcome.started_at,
                                           outcome.ended_at, outcome.code, {"a": 600}.get(name, 600))

    assert aborts.rebuilt_histories(reversed(outcomes), {"a": 600}) == live
    assert live["a"].last_abort_at == 60.0 and live["b"].last_abort_at == 900.0


@pytest.mark.parametrize("machinetypes, seconds", [
    ([], aborts.BACKOFF_MEMORY_FLOOR_SECONDS),
    ([(10, 600)], aborts.BACKOFF_MEMORY_FLOOR_SECONDS),
    ([(10, 600), (20000, 600)], 20600),
    ([(10 ** 9, 600)], aborts.BACKOFF_MEMORY_CEILING_SECONDS),
])
def test_the_history_read_at_start_is_bounded(machinetypes, seconds):
    assert aborts.backoff_memory_seconds(machinetypes) == seconds


# ------------------------------------------------------------ no placement while slots adopt


def test_nothing_is_placed_until_every_slot_has_reported_what_it_holds(tmp_path):
    factory = make_factory(tmp_path)
    report(factory, 0, "adopting")
    report(factory, 1, "idle")
    report(factory, 2, "idle")
    report(factory, 3, "adopting")
    assert placements(factory) == [], "slots 0 and 3 may hold machines of up to 4 processors"

    report(factory, 0, "running", machine("big", processors=2))
    assert placements(factory) == []
    report(factory, 3, "running", machine("small"))

    placed = placements(factory)
    # 4 processors less the 3 held: one placement of one processor, not two.
    assert [(child, spec["processors"]) for child, spec in placed] == [("slot-01", 1)]


def test_a_slot_ending_an_older_machine_has_not_finished_adopting(tmp_path):
    factory = make_factory(tmp_path)
    for slot in (1, 2, 3):
        report(factory, slot, "idle")
    report(factory, 0, "finishing", machine("old"))

    assert placements(factory) == []
    report(factory, 0, "idle")
    assert len(placements(factory)) == 4


def _live_record(tmp_path, uuid, slot, processors, state="running"):
    paths = create_machine_directory(tmp_path, uuid)
    write_record(paths, MachineRecord(machine_uuid=uuid, slot=slot, machine_name="m", machinetype="work",
                                      machine_model="docker", processors=processors, created=NOW - 500,
                                      shutdown_time=int(NOW) + 3000, state=state, started=NOW - 490))
    return paths


def test_a_slot_whose_worker_gave_up_holds_what_its_directories_say(tmp_path):
    _live_record(tmp_path, "00000000-0000-4000-8000-00000000000a", slot=2, processors=3)
    done = _live_record(tmp_path, "00000000-0000-4000-8000-00000000000b", slot=1, processors=4)
    mark_finished(done, NOW - 50)
    factory = make_factory(tmp_path)
    recall.recall(factory, tmp_path, NOW)
    for slot in (0, 1, 3):
        report(factory, slot, "idle")
    assert placements(factory) == []

    # Slot 2's worker crashes before it reports (it will back off, perhaps for good):
    # placements go on, and its remembered machine keeps its 3 processors taken.
    factory.on_child_exit("slot-02")
    placed = placements(factory)

    assert [(child, spec["processors"]) for child, spec in placed] == [("slot-00", 1)]
    assert [slot for slot, _ in factory.table.machines()] == [0, 2]


def test_what_a_slot_reports_replaces_what_its_directories_said(tmp_path):
    _live_record(tmp_path, "00000000-0000-4000-8000-00000000000a", slot=2, processors=3)
    factory = make_factory(tmp_path)
    recall.recall(factory, tmp_path, NOW)
    for slot in range(4):
        report(factory, slot, "idle")   # slot 2 found its container gone and finalised it

    assert len(placements(factory)) == 4
