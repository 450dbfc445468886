"""The slot's pure decisions: retry backoff, heartbeat verdicts, state transitions and adoption plans."""

import dataclasses

import pytest

from vac.machine.joboutputs import HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED
from vac.machine.record import MachineRecord
from vac.runtimes.base import ContainerHandle, ContainerState
from vac.vocabulary.slot_states import InvalidTransition, MachineState, SlotState, check_transition, machine_state
from vac.workers import slot_rules
from vac.workers.slot_rules import Adopt, adoption_plan

UUIDS = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(6)]


def test_retry_backoff_doubles_up_to_thirty_seconds():
    assert [slot_rules.retry_delay(attempt) for attempt in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize("now, age, expected", [
    (1059, None, None),                    # within fizzle_seconds: no verdict yet
    (1060, None, HEARTBEAT_NOT_CREATED),   # fizzled and never created
    (1060, 30, None),                      # exactly heartbeat_seconds old is still fine
    (1060, 30.5, HEARTBEAT_NOT_UPDATED),
    (5000, 2, None),
])
def test_heartbeat_verdict(now, age, expected):
    assert slot_rules.heartbeat_verdict(now, 1000, 60, "heartbeat", 30, age) == expected


@pytest.mark.parametrize("heartbeat_file, heartbeat_seconds", [(None, 30), ("", 30), ("heartbeat", 0)])
def test_no_heartbeat_rule_without_a_file_and_a_period(heartbeat_file, heartbeat_seconds):
    assert slot_rules.heartbeat_verdict(10_000, 0, 60, heartbeat_file, heartbeat_seconds, None) is None
    assert slot_rules.next_heartbeat_check(10_000, 0, 60, heartbeat_file, heartbeat_seconds, None) is None


def test_next_heartbeat_check_is_when_the_verdict_can_change():
    assert slot_rules.next_heartbeat_check(1010, 1000, 60, "hb", 30, None) == 1060
    # A file 10 s old at 1100 turns stale just after 1120.
    check = slot_rules.next_heartbeat_check(1100, 1000, 60, "hb", 30, 10)
    assert 1120 < check < 1120.01
    assert slot_rules.heartbeat_verdict(check, 1000, 60, "hb", 30, 10 + check - 1100) == HEARTBEAT_NOT_UPDATED


def test_the_wall_clock_grace_lets_the_kill_land_within_two_seconds():
    from vac.machine.joboutputs import EXCEEDED_WALLCLOCK
    assert slot_rules.stop_grace_seconds(EXCEEDED_WALLCLOCK) < 2


def test_machine_transitions():
    check_transition(MachineState.PREPARING, MachineState.STARTING)
    check_transition(MachineState.RUNNING, MachineState.RUNNING)
    for current, new in [(MachineState.RUNNING, MachineState.PREPARING), (MachineState.DONE, MachineState.CLEANING),
                         (MachineState.CLEANING, MachineState.FINISHING), (MachineState.PREPARING, MachineState.DONE)]:
        with pytest.raises(InvalidTransition):
            check_transition(current, new)
    assert machine_state("stopping") is MachineState.STOPPING
    assert machine_state("nonsense") is MachineState.PREPARING


def record(n, state, created=None):
    return MachineRecord(machine_uuid=UUIDS[n], slot=3, machine_name="f1-03.example.com", machinetype="t",
                         machine_model="docker", processors=1, created=created or 1000 + n, shutdown_time=9999,
                         state=state)


def container(n, state, container_id=None):
    return ContainerHandle(id=container_id or f"id{n}", name=f"c{n}",
                           labels={"vac.factory": "f1", "vac.slot": "3", "vac.machine": UUIDS[n]}, state=state)


@pytest.mark.parametrize("state, container_state, finished, action", [
    ("running", ContainerState.RUNNING, False, Adopt.WATCH),
    ("starting", ContainerState.RUNNING, False, Adopt.WATCH),
    ("stopping", ContainerState.RUNNING, False, Adopt.STOP),
    ("starting", ContainerState.CREATED, False, Adopt.START),
    ("running", ContainerState.EXITED, False, Adopt.FINALISE),
    ("stopping", ContainerState.DEAD, False, Adopt.FINALISE),
    ("running", None, False, Adopt.FINALISE),
    ("starting", None, False, Adopt.FAIL_TO_START),
    ("preparing", None, False, Adopt.FAIL_TO_START),
    ("finishing", ContainerState.EXITED, False, Adopt.FINALISE),
    ("finishing", ContainerState.EXITED, True, Adopt.FINALISE),
    ("cleaning", ContainerState.EXITED, True, Adopt.CLEAN),
    ("cleaning", None, True, Adopt.CLEAN),
])
def test_adoption_action(state, container_state, finished, action):
    containers = [container(0, container_state)] if container_state is not None else []
    plan = adoption_plan([(record(0, state), finished)], containers)
    assert [(a.record.machine_uuid, a.action) for a in plan.machines] == [(UUIDS[0], action)]
    assert plan.orphans == ()


def test_containers_without_an_unfinished_record_are_orphans():
    plan = adoption_plan([(record(0, "running"), False)],
                         [container(0, ContainerState.RUNNING), container(1, ContainerState.RUNNING),
                          container(2, ContainerState.EXITED)])
    assert [c.id for c in plan.orphans] == ["id1", "id2"]


def test_one_live_machine_per_slot_the_newest_stays_and_the_live_one_comes_last():
    plan = adoption_plan([(record(2, "running", created=3000), False), (record(0, "running", created=1000), False),
                          (record(1, "running", created=2000), False)],
                         [container(0, ContainerState.RUNNING), container(1, ContainerState.EXITED),
                          container(2, ContainerState.RUNNING)])
    assert [(a.record.machine_uuid, a.action) for a in plan.machines] == [
        (UUIDS[0], Adopt.END_EXTRA), (UUIDS[1], Adopt.FINALISE), (UUIDS[2], Adopt.WATCH)]


def test_adoption_of_a_start_asked_for_whose_container_vanished_finalises_it():
    asked = dataclasses.replace(record(0, "starting"), start_requested=1500.0)
    assert [a.action for a in adoption_plan([(asked, False)], []).machines] == [Adopt.FINALISE]
    assert slot_rules.adopted_start(asked, None) == 1500.0


@pytest.mark.parametrize("state, container_state, started_at, expected", [
    ("starting", ContainerState.EXITED, 1601.5, 1601.5),    # killed before recording it: the engine's time
    ("starting", ContainerState.RUNNING, 1601.5, 1601.5),
    ("starting", ContainerState.CREATED, None, None),       # never started: no start to account
    ("finishing", ContainerState.EXITED, 1601.5, None),     # the outcome is fixed: it keeps what it says
])
def test_an_adopted_machine_s_start_is_the_engine_s(state, container_state, started_at, expected):
    handle = dataclasses.replace(container(0, container_state), started_at=started_at)
    asked = dataclasses.replace(record(0, state), start_requested=1600.0)
    assert slot_rules.adopted_start(asked, handle) == expected
    assert slot_rules.adopted_start(dataclasses.replace(asked, started=1700.0), handle) == 1700.0


ENGINE_TIMEOUT = 10.0
STEP = slot_rules.step_seconds(ENGINE_TIMEOUT)


def test_a_step_may_take_a_few_engine_calls_each_up_to_the_timeout():
    assert STEP == slot_rules.ENGINE_CALLS_PER_STEP * ENGINE_TIMEOUT + slot_rules.STEP_SLACK_SECONDS
    assert slot_rules.step_seconds(30.0) > STEP


@pytest.mark.parametrize("state, expected", [
    (SlotState.IDLE, None),
    (SlotState.RUNNING, 5000.0),                          # the shutdown time
    (SlotState.STOPPING, 1000.0 + 10.0 + STEP),           # the grace, then one step
    (SlotState.FINISHING, 1000.0 + STEP),
    (SlotState.ADOPTING, 1000.0 + STEP),
    (SlotState.CLEANING, 1000.0 + STEP + slot_rules.SCRATCH_DESTROY_SECONDS),
    (SlotState.STARTING, 1000.0 + slot_rules.IMAGE_DEADLINE_SECONDS + STEP),
    (SlotState.PREPARING, 1000.0 + slot_rules.PREPARING_SECONDS),
])
def test_every_state_but_idle_has_a_deadline(state, expected):
    assert slot_rules.state_deadline(state, 1000.0, ENGINE_TIMEOUT, shutdown_at=5000.0, stop_grace=10.0) == expected


def test_a_deadline_is_overdue_from_its_moment_on():
    assert not slot_rules.is_overdue(None, 10 ** 12)
    assert not slot_rules.is_overdue(100.0, 99.9)
    assert slot_rules.is_overdue(100.0, 100.0)
