"""What this factory answers VacQuery with, and what the space adds to its scores."""

from types import SimpleNamespace

from vac.space.status import STALE_SECONDS, local_statuses, space_hs06

NOW = 1_800_000_000.0
TYPES = {"alpha": SimpleNamespace(fizzle_seconds=600, accounting_fqan="/alpha/Role=pilot", max_wallclock_seconds=3600,
                                  max_processors=4),
         "beta": SimpleNamespace(fizzle_seconds=60, accounting_fqan=None, max_wallclock_seconds=7200,
                                 max_processors=1)}


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
