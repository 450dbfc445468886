"""What this factory answers VacQuery with, and what the space adds to its scores."""

from types import SimpleNamespace

from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MAX_ANSWER_DATAGRAMS
from vac.space.status import (STALE_SECONDS, abort_code, local_factory, local_machines, local_statuses, space_aborts,
                              space_hs06)

NOW = 1_800_000_000.0
TYPES = {"alpha": SimpleNamespace(fizzle_seconds=600, accounting_fqan="/alpha/Role=pilot", max_wallclock_seconds=3600,
                                  max_processors=4, machine_model="docker"),
         "beta": SimpleNamespace(fizzle_seconds=60, accounting_fqan=None, max_wallclock_seconds=7200,
                                 max_processors=1, machine_model="singularity")}


def machine(machinetype, processors, started_at):
    return {"machinetype": machinetype, "processors": processors, "started_at": started_at}


def test_each_machinetype_gets_its_running_figures_and_last_outcome():
    machines = [(0, machine("alpha", 2, NOW - 100)), (1, machine("alpha", 1, NOW - 1000)),
                (2, machine("beta", 4, NOW - 10))]
    outcomes = [{"machinetype": "alpha", "code": 300, "text": "Nothing to do", "ended_at": NOW - 50,
                 "machine_name": "f1-05.example.org"},
                {"machinetype": "alpha", "code": 0, "text": "Success", "ended_at": NOW - 500,
                 "machine_name": "f1-06.example.org"},
                {"machinetype": "beta", "code": None, "text": "", "ended_at": NOW - 5, "machine_name": "x"}]
    alpha, beta = local_statuses(factory_name="f1.example.org", machinetypes=TYPES, machines=machines,
                                 outcomes=outcomes, hs06_per_processor=10.0, bytes_per_processor=2 * 2**30, now=NOW)
    assert (alpha.machinetype, alpha.num_machinetypes, alpha.running_hs06, alpha.running_machines,
            alpha.running_processors, alpha.num_before_fizzle) == ("alpha", 2, 30.0, 2, 3, 1)
    assert (alpha.shutdown_message, alpha.shutdown_time, alpha.shutdown_machine) == (
        "300 Nothing to do", int(NOW - 50), "f1-05.example.org")
    assert (beta.running_hs06, beta.num_before_fizzle, beta.shutdown_message) == (40.0, 1, None)
    # What Vac 03.01 adds, from the configuration.
    assert (alpha.bytes_per_processor, alpha.fqan, alpha.max_wallclock_seconds, alpha.max_processors) == (
        2 * 2**30, "/alpha/Role=pilot", 3600, 4)
    assert (beta.fqan, beta.max_wallclock_seconds, beta.max_processors) == (None, 7200, 1)


def test_a_machinetype_with_nothing_running_is_still_answered():
    (alpha, beta) = local_statuses(factory_name="f1.example.org", machinetypes=TYPES, machines=[], outcomes=[],
                                   hs06_per_processor=1.0, bytes_per_processor=2**30, now=NOW)
    assert (alpha.running_hs06, beta.running_machines) == (0.0, 0)


def test_space_hs06_sums_fresh_answers_of_other_factories():
    answers = {
        "f2": {"answered_at": NOW - 10, "machinetypes": {"alpha": {"running_hs06": 20.0}}},
        "f3": {"answered_at": NOW - 20, "machinetypes": {"alpha": {"running_hs06": 5.0},
                                                          "gamma": {"running_hs06": 7.0}}},
        "old": {"answered_at": NOW - STALE_SECONDS - 1, "machinetypes": {"alpha": {"running_hs06": 100.0}}},
        "f1": {"answered_at": NOW, "machinetypes": {"alpha": {"running_hs06": 1000.0}}},
    }
    assert space_hs06(answers, now=NOW, exclude=("f1",)) == {"alpha": 25.0, "gamma": 7.0}


def test_a_machine_that_ended_silently_before_fizzle_is_told_as_vacs_300():
    outcomes = [{"machinetype": "beta", "code": None, "text": "", "started_at": NOW - 30, "ended_at": NOW - 5,
                 "machine_name": "f1-01.example.org"},
                {"machinetype": "alpha", "code": None, "text": "", "started_at": NOW - 5000, "ended_at": NOW - 5,
                 "machine_name": "f1-02.example.org"}]
    alpha, beta = local_statuses(factory_name="f1.example.org", machinetypes=TYPES, machines=[], outcomes=outcomes,
                                 hs06_per_processor=1.0, bytes_per_processor=2**30, now=NOW)
    assert beta.shutdown_message == "300 Vac detects fizzle after 25 seconds" and beta.shutdown_time == int(NOW - 5)
    assert alpha.shutdown_message is None, "one that ran past fizzle_seconds just ended"


def slot(number, state, machine=None):
    return {"slot": number, "name": f"f1-{number:02d}.example.org", "state": state, "machine": machine}


def test_each_slot_is_one_machine_status_as_vac_answers_it():
    running = {"uuid": "u1", "machinetype": "alpha", "processors": 2, "started_at": NOW - 100, "created_at": NOW - 130,
               "cpu_seconds": 150.0, "heartbeat_at": NOW - 10, "shutdown_at": NOW + 3600}
    starting = {"uuid": "u2", "machinetype": "beta", "processors": 1, "started_at": NOW - 2}
    outcomes = {2: {"machine": "u0", "machinetype": "beta", "code": 300, "text": "Nothing to do",
                    "started_at": NOW - 500, "ended_at": NOW - 400, "processors": 1, "cpu_seconds": 50.0}}
    statuses = local_machines(factory_name="f1.example.org", slots=[
        slot(0, "running", running), slot(1, "starting", starting), slot(2, "idle"), slot(3, "idle")],
        outcomes=outcomes, machinetypes=TYPES, hs06_per_processor=10.0)
    common = {"factory": "f1.example.org", "num_machines": 4}
    assert statuses == [
        MachineStatus(**common, machine="f1-00.example.org", state="Running", machine_model="docker", uuid="u1",
                      created_time=int(NOW - 130), started_time=int(NOW - 100), heartbeat_time=int(NOW - 10),
                      num_processors=2, cpu_seconds=150.0, cpu_percentage=166.67, hs06=20.0, machinetype="alpha",
                      fqan="/alpha/Role=pilot"),
        MachineStatus(**common, machine="f1-01.example.org", state="Starting", machine_model="singularity",
                      uuid="u2", created_time=int(NOW - 2), started_time=int(NOW - 2), num_processors=1, hs06=10.0,
                      machinetype="beta"),
        # An empty slot tells of the last machine it held, as Vac's do.
        MachineStatus(**common, machine="f1-02.example.org", state="Shut down", machine_model="singularity",
                      uuid="u0", started_time=int(NOW - 500), heartbeat_time=int(NOW - 400), num_processors=1,
                      cpu_seconds=50.0, cpu_percentage=50.0, hs06=10.0, machinetype="beta",
                      shutdown_message="300 Nothing to do", shutdown_time=int(NOW - 400)),
        MachineStatus(**common, machine="f1-03.example.org", state="Shut down")]


def test_only_the_first_slots_up_to_the_answer_cap_are_told():
    statuses = local_machines(factory_name="f1.example.org", slots=[slot(n, "idle") for n in range(100)],
                              outcomes={}, machinetypes=TYPES, hs06_per_processor=1.0)
    assert len(statuses) == MAX_ANSWER_DATAGRAMS and {s.num_machines for s in statuses} == {MAX_ANSWER_DATAGRAMS}


def test_the_factory_status_counts_what_runs_and_what_could():
    machines = [(0, machine("alpha", 2, NOW)), (1, machine("beta", 4, NOW))]
    assert local_factory(factory_name="f1.example.org", machines=machines, total_processors=8,
                         hs06_per_processor=10.0) == FactoryStatus(
        factory="f1.example.org", running_processors=6, running_machines=2, running_hs06=60.0, max_processors=8,
        max_machines=8, max_hs06=80.0)


def figures(message=None, at=None, young=0):
    return {"running_hs06": 1.0, "num_before_fizzle": young, "shutdown_message": message, "shutdown_time": at}


def test_the_latest_abort_of_each_machinetype_anywhere_and_the_machines_before_fizzle_there():
    answers = {
        "f2": {"answered_at": NOW - 10, "machinetypes": {
            "alpha": figures("300 Nothing to do", NOW - 100, young=1), "beta": figures("200 Done", NOW - 5)}},
        "f3": {"answered_at": NOW - 20, "machinetypes": {
            "alpha": figures("500 Site problem", NOW - 50, young=2), "beta": figures("301 Tired", NOW - 400),
            # A clock ahead of ours cannot stretch the backoff: no later than its answer.
            "gamma": figures("600 Grid problem", NOW + 9999)}},
        "old": {"answered_at": NOW - STALE_SECONDS - 1, "machinetypes": {"alpha": figures("300 x", NOW, young=5)}},
        "f1": {"answered_at": NOW, "machinetypes": {"alpha": figures("300 mine", NOW, young=7)}},
    }
    assert space_aborts(answers, now=NOW, exclude=("f1",)) == {
        "alpha": {"last_abort_at": NOW - 50, "factory": "f3", "message": "500 Site problem", "before_fizzle": 3},
        "beta": {"last_abort_at": NOW - 400, "factory": "f3", "message": "301 Tired", "before_fizzle": 0},
        "gamma": {"last_abort_at": NOW - 20, "factory": "f3", "message": "600 Grid problem", "before_fizzle": 0}}


def test_the_code_of_a_shutdown_message():
    assert [abort_code(m) for m in ("300 Nothing to do", "404", "2000 x", "x300", "", None, " 300 x")] == [
        300, 404, None, None, None, None, None]
