"""`vac check`'s verdicts: which factory states are OK, WARNING, CRITICAL, and the perfdata."""

import pytest

from vac import nagios

NOW = 1_800_000_000.0


def status(**changes):
    """A healthy factory's `status` result, with `changes` applied (dotted keys reach inside)."""
    result = {
        "state": "running", "degraded": False, "draining": False,
        "summary": "4 slots: 2 running, 2 idle, 0 backoff",
        "slots": {"slots": 4, "running": 2, "idle": 2, "backoff": 0, "fatal": 0},
        "processors": {"total": 4, "used": 2},
        "machinetypes": {
            "alpha": {"target_share": 1.0, "running": 2, "processors": 2, "backoff_until": None,
                      "paused": False, "pipe": None},
            "lhcb-prod": {"target_share": 1.0, "running": 0, "processors": 0,
                          "backoff_until": None, "paused": False, "pipe": "lhcb"},
        },
        "helpers": {"reaper": {"state": "running"}, "cvmfs-keeper": {"state": "running"}},
        "config_problems": [],
        "pipes": {"lhcb": {"url": "https://x/p.json", "fetched_at": NOW - 60, "stale": False,
                           "error": None, "machinetypes": ["lhcb-prod"], "problems": []}},
        "last_refusal": None,
        "uptime_seconds": 7200.0,
    }
    for key, value in changes.items():
        target = result
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    return result


IDLE = {"slots": {"slots": 4, "running": 0, "idle": 4, "backoff": 0, "fatal": 0}}


@pytest.mark.parametrize("changes, code, words", [
    ({}, nagios.OK, ["4 slots: 2 running, 2 idle, 0 backoff; 2/4 processors used"]),
    ({"degraded": True}, nagios.CRITICAL, ["DEGRADED"]),
    ({"config_problems": ["vac.conf [settings] total_processors = many: not a number"]},
     nagios.CRITICAL, ["1 configuration problem", "total_processors = many"]),
    ({"slots": {"slots": 4, "running": 2, "idle": 1, "backoff": 0, "fatal": 1}},
     nagios.CRITICAL, ["1 slot FATAL", "reset-slot"]),
    ({"slots": {"slots": 4, "running": 2, "idle": 1, "backoff": 1, "fatal": 0}},
     nagios.WARNING, ["1 slot in restart backoff"]),
    ({"draining": True}, nagios.WARNING, ["draining"]),
    ({"state": "stopping"}, nagios.WARNING, ["vacd is stopping"]),
    ({"helpers__reaper": {"state": "backoff"}}, nagios.WARNING, ["helper reaper backoff"]),
    ({"pipes__lhcb__stale": True, "pipes__lhcb__error": "HTTP 503"}, nagios.WARNING,
     ["pipe lhcb stale: HTTP 503"]),
    ({"pipes__lhcb__fetched_at": None, "pipes__lhcb__error": "HTTP 404"}, nagios.WARNING,
     ["pipe lhcb has no document: HTTP 404"]),
    # Idle for the whole two hours of uptime, not draining: nothing starts, and why.
    (dict(IDLE, last_refusal="load average 9.00 exceeds 5.00"), nagios.WARNING,
     ["no machine running for 2:00:00 with 4 slots idle (load average 9.00 exceeds 5.00)"]),
])
def test_each_rule_gives_its_verdict_and_names_itself(changes, code, words):
    verdict, line = nagios.evaluate(status(**changes), now=NOW)
    assert verdict == code, line
    assert line.startswith(f"VAC {nagios.LABELS[code]} - ")
    for word in words:
        assert word in line.split(" | ")[0]


@pytest.mark.parametrize("changes", [
    # A pipe not fetched yet is normal for a while after start.
    {"pipes__lhcb__fetched_at": None, "pipes__lhcb__error": "not fetched yet",
     "uptime_seconds": 30.0},
    # Idle but only for a short while since start.
    dict(IDLE, uptime_seconds=600.0),
    # A full factory has no idle slot.
    {"slots": {"slots": 4, "running": 4, "idle": 0, "backoff": 0, "fatal": 0}},
])
def test_normal_conditions_are_ok(changes):
    verdict, line = nagios.evaluate(status(**changes), now=NOW)
    assert verdict == nagios.OK, line


def test_an_unfetched_pipe_warns_after_the_grace_period():
    verdict, line = nagios.evaluate(status(pipes__lhcb__fetched_at=None,
                                           pipes__lhcb__error="not fetched yet",
                                           uptime_seconds=nagios.PIPE_GRACE_SECONDS + 1), now=NOW)
    assert verdict == nagios.WARNING
    assert "pipe lhcb has no document: not fetched yet" in line


def test_a_draining_idle_factory_warns_only_that_it_drains():
    verdict, line = nagios.evaluate(status(draining=True, **IDLE), now=NOW)
    assert verdict == nagios.WARNING
    assert "draining" in line and "no machine running" not in line


def test_idle_time_counts_from_the_last_machine_that_ended():
    slots = [{"slot": 0, "worker": {"state": "running"},
              "last_outcome": {"ended_at": NOW - 100}},
             {"slot": 1, "worker": {"state": "running"}, "last_outcome": None}]
    verdict, line = nagios.evaluate(status(**IDLE), slots, now=NOW, idle_warning_seconds=600)
    assert verdict == nagios.OK, line
    verdict, line = nagios.evaluate(status(**IDLE), slots, now=NOW + 600, idle_warning_seconds=600)
    assert verdict == nagios.WARNING
    assert "no machine running for 0:11:40" in line


def test_critical_outranks_warning_and_both_are_named_slots_first():
    slots = [{"slot": 3, "worker": {"state": "fatal"}}, {"slot": 5, "worker": {"state": "fatal"}},
             {"slot": 1, "worker": {"state": "backoff"}}]
    counts = {"slots": 6, "running": 1, "idle": 1, "backoff": 1, "fatal": 2}
    verdict, line = nagios.evaluate(status(slots=counts, draining=True), slots, now=NOW)
    assert verdict == nagios.CRITICAL
    text = line.split(" | ")[0]
    assert text.index("slots 3, 5 FATAL") < text.index("slot 1 in restart backoff") \
        < text.index("draining")


def test_perfdata_has_slot_states_processors_and_running_per_machinetype():
    _, line = nagios.evaluate(status(), now=NOW)
    text, perf = line.split(" | ")
    assert perf.split() == [
        "slots=4;;;", "running=2;;;", "idle=2;;;", "backoff=0;;;", "fatal=0;;;",
        "processors_used=2;;;0;4", "processors_total=4;;;",
        "running_alpha=2;;;", "running_lhcb-prod=0;;;"]


def test_the_line_is_one_line_and_its_text_holds_no_perfdata_separator():
    problem = "vac.conf: bad value 'a|b'\n  second line"
    verdict, line = nagios.evaluate(status(config_problems=[problem]), now=NOW)
    assert "\n" not in line
    assert line.count("|") == 1
    assert "bad value 'a/b' second line" in line


def test_unknown_says_why():
    assert nagios.unknown("vacd is not running (/run/vac/control.sock: No such file)") == (
        nagios.UNKNOWN, "VAC UNKNOWN - vacd is not running (/run/vac/control.sock: No such file)")


def test_a_capped_problem_list_is_counted_by_its_total():
    shown = ["vac.conf [settings] total_processors = many: not a number", "and 311 more"]
    verdict, line = nagios.evaluate(status(config_problems=shown, config_problems_total=312), now=NOW)
    assert verdict == nagios.CRITICAL
    assert "312 configuration problems: vac.conf [settings] total_processors" in line
