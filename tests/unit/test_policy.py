"""Pure restart decisions as scripted histories with a fake clock (vac.supervisor.policy)."""

import signal

import pytest

from vac.supervisor.policy import (
    Breaker, BreakerPolicy, ExitStatus, HelperRestart, HelperRestartPolicy, Intensity, SlotRestart,
    SlotRestartPolicy, breaker_after_crash, helper_restart, record_restart, restart_time,
    slot_restart, wants_restart,
)
from vac.vocabulary.child_states import EXIT_BAD_SPEC, Restart

T0 = 1000.0   # any origin: the functions only compare differences


# Exit status and restart types.

NORMAL = ExitStatus(code=0)
ABNORMAL = ExitStatus(code=1)
KILLED = ExitStatus(signal=signal.SIGKILL)
BAD_SPEC = ExitStatus(code=EXIT_BAD_SPEC)

P, T, TMP = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY

RESTART_TABLE = [
    # restart, exit,   failed by supervisor, restarted?
    (P,   NORMAL,   False, True),
    (P,   ABNORMAL, False, True),
    (P,   KILLED,   False, True),
    (P,   NORMAL,   True,  True),
    (P,   BAD_SPEC, False, False),
    (T,   NORMAL,   False, False),
    (T,   ABNORMAL, False, True),
    (T,   KILLED,   False, True),
    (T,   NORMAL,   True,  True),     # exit 0 after the supervisor killed it for silence
    (T,   BAD_SPEC, False, False),
    (T,   BAD_SPEC, True,  False),
    (TMP, NORMAL,   False, False),
    (TMP, ABNORMAL, False, False),
    (TMP, KILLED,   True,  False),
    (TMP, BAD_SPEC, False, False),
]


@pytest.mark.parametrize("restart, exit_status, failed, restarted", RESTART_TABLE,
                         ids=[f"{r.value}-{e}-{'failed' if f else 'own'}" for r, e, f, _ in RESTART_TABLE])
def test_wants_restart(restart, exit_status, failed, restarted):
    assert wants_restart(restart, exit_status, failed) is restarted


@pytest.mark.parametrize("status, expected", [
    (0, ExitStatus(code=0)),
    (3 << 8, ExitStatus(code=3)),
    (EXIT_BAD_SPEC << 8, ExitStatus(code=EXIT_BAD_SPEC)),
    (signal.SIGKILL, ExitStatus(signal=signal.SIGKILL)),
    (signal.SIGSEGV | 0x80, ExitStatus(signal=signal.SIGSEGV)),   # with core dump
])
def test_exit_status_from_wait_status(status, expected):
    assert ExitStatus.from_wait_status(status) == expected


def test_exit_status_reads_well_in_logs():
    assert str(ExitStatus(code=1)) == "exit status 1"
    assert str(ExitStatus(signal=signal.SIGTERM)) == "killed by SIGTERM"
    assert str(ExitStatus(signal=99)) == "killed by signal 99"
    assert not KILLED.normal and not KILLED.bad_spec
    assert NORMAL.normal and BAD_SPEC.bad_spec


# Restart intensity.

def replay_intensity(times, intensity):
    """Record a restart at each time; return the `exceeded` flags in order."""
    history, flags = (), []
    for now in times:
        history, exceeded = record_restart(history, now, intensity)
        flags.append(exceeded)
    return flags


@pytest.mark.parametrize("offsets, flags", [
    pytest.param([0, 1, 2], [False, False, False], id="three in period is allowed"),
    pytest.param([0, 1, 2, 3], [False, False, False, True], id="the fourth within 5 s exceeds"),
    pytest.param([0, 1, 2, 5], [False, False, False, False], id="a restart exactly period old is forgotten"),
    pytest.param([0, 3, 4, 6, 7], [False, False, False, False, True], id="only older ones are forgotten"),
    pytest.param([0, 10, 20, 30, 40], [False] * 5, id="slow steady restarts never exceed"),
    pytest.param([0, 0, 0, 0], [False, False, False, True], id="simultaneous restarts count"),
])
def test_intensity_window(offsets, flags):
    assert replay_intensity([T0 + o for o in offsets], Intensity(max_restarts=3, period=5.0)) == flags


def test_intensity_forgets_old_restarts_in_the_history_it_returns():
    history = ()
    for now in (T0, T0 + 1, T0 + 2):
        history, _ = record_restart(history, now, Intensity(3, 5.0))
    history, exceeded = record_restart(history, T0 + 100, Intensity(3, 5.0))
    assert history == (T0 + 100,)
    assert not exceeded


def test_zero_intensity_exceeds_on_the_first_restart():
    assert replay_intensity([T0], Intensity(max_restarts=0, period=5.0)) == [True]


# Per-slot backoff.

POLICY = SlotRestartPolicy(healthy_after=10.0, first_delay=1.0, max_delay=8.0, max_failed_starts=7)


def crash_soon_after_start(count, policy=POLICY, ready=False):
    """A slot whose worker dies 0.5 s after each (re)start; return its decisions."""
    now, failed, decisions = T0, 0, []
    for _ in range(count):
        started = now
        decision = slot_restart(failed, started + 0.1 if ready else None, started + 0.5, policy)
        decisions.append(decision)
        if decision.fatal:
            break
        failed, now = decision.failed_starts, decision.at
    return decisions


def test_backoff_doubles_and_is_capped_then_fatal():
    decisions = crash_soon_after_start(10)
    delays = [round(d.at - (T0 if i == 0 else decisions[i - 1].at) - 0.5, 6)
              for i, d in enumerate(decisions) if not d.fatal]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [d.failed_starts for d in decisions] == [1, 2, 3, 4, 5, 6, 7]
    assert decisions[-1] == SlotRestart(failed_starts=7, at=None, fatal=True)
    assert not any(d.fatal for d in decisions[:-1])


def test_a_worker_that_became_ready_but_died_soon_is_still_a_failed_start():
    decisions = crash_soon_after_start(3, ready=True)
    assert [d.failed_starts for d in decisions] == [1, 2, 3]
    assert decisions[0].at == T0 + 0.5 + 1.0


def test_a_worker_that_never_became_ready_counts_as_failed_however_long_it_ran():
    decision = slot_restart(0, None, T0 + 3600, POLICY)
    assert decision == SlotRestart(failed_starts=1, at=T0 + 3600 + 1.0, fatal=False)


def test_a_healthy_run_resets_the_count_and_restarts_at_once():
    decision = slot_restart(5, T0, T0 + 10.0, POLICY)
    assert decision == SlotRestart(failed_starts=0, at=T0 + 10.0, fatal=False)
    # One tick less than healthy_after is not healthy yet.
    assert slot_restart(5, T0, T0 + 9.99, POLICY).failed_starts == 6


def test_after_a_healthy_run_the_backoff_starts_from_the_first_delay_again():
    assert slot_restart(0, T0, T0 + 60, POLICY).at == T0 + 60
    assert slot_restart(0, None, T0 + 61, POLICY).at == T0 + 62


def test_default_policy_matches_the_documented_schedule():
    # ARCHITECTURE: 1, 2, 4 ... 60 s.
    policy = SlotRestartPolicy(max_failed_starts=100)
    failed, delays = 0, []
    for _ in range(9):
        decision = slot_restart(failed, None, T0, policy)
        failed = decision.failed_starts
        delays.append(decision.at - T0)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@pytest.mark.parametrize("max_failed_starts, fatal_on", [(1, 1), (2, 2), (6, 6)])
def test_fatal_after_max_failed_starts(max_failed_starts, fatal_on):
    policy = SlotRestartPolicy(max_failed_starts=max_failed_starts)
    decisions = crash_soon_after_start(20, policy)
    assert len(decisions) == fatal_on
    assert decisions[-1].fatal and decisions[-1].at is None


# The pool breaker.

STORM = BreakerPolicy(crashes=3, window=10.0, pause=30.0)


def replay_crashes(offsets, policy=STORM):
    breaker, opened = Breaker(), []
    for offset in offsets:
        breaker = breaker_after_crash(breaker, T0 + offset, policy)
        opened.append(breaker.is_open(T0 + offset))
    return breaker, opened


@pytest.mark.parametrize("offsets, opened", [
    pytest.param([0, 1], [False, False], id="two crashes are no storm"),
    pytest.param([0, 1, 2], [False, False, True], id="the third within the window opens"),
    pytest.param([0, 5, 10], [False, False, False], id="crashes a full window apart do not add up"),
    pytest.param([0, 20, 40, 60], [False] * 4, id="steady slow crashes never open"),
    pytest.param([0, 1, 2, 3], [False, False, True, True], id="crashes while open keep it open"),
])
def test_breaker_opens_on_a_storm(offsets, opened):
    assert replay_crashes(offsets)[1] == opened


def test_breaker_pauses_for_its_pause_then_closes():
    breaker, _ = replay_crashes([0, 1, 2])
    assert breaker.open_until == T0 + 2 + 30.0
    assert breaker.is_open(T0 + 31.9)
    assert not breaker.is_open(T0 + 32.0)


def test_one_crash_after_the_pause_does_not_reopen_it():
    breaker, _ = replay_crashes([0, 1, 2])
    breaker = breaker_after_crash(breaker, T0 + 40, STORM)
    assert not breaker.is_open(T0 + 40)
    assert breaker.open_until is None


def test_a_storm_during_the_pause_extends_it():
    breaker, _ = replay_crashes([0, 1, 2, 10, 11, 12])
    assert breaker.open_until == T0 + 12 + 30.0


@pytest.mark.parametrize("wanted_offset, now_offset, expected_offset", [
    (5, 3, 32),       # open: deferred to the end of the pause
    (50, 3, 50),      # wanted after the pause anyway
    (33, 33, 33),     # closed again: as wanted
])
def test_restart_time_defers_to_an_open_breaker(wanted_offset, now_offset, expected_offset):
    breaker, _ = replay_crashes([0, 1, 2])
    assert restart_time(T0 + wanted_offset, breaker, T0 + now_offset) == T0 + expected_offset


def test_restart_time_with_a_closed_breaker_is_the_wanted_time():
    assert restart_time(T0 + 4, Breaker(), T0) == T0 + 4


# Helpers: permanent, a short growing delay before each restart.

ROOMY = Intensity(max_restarts=5, period=30.0)   # the factory's helper group


def test_a_helper_failing_at_once_waits_longer_each_time_up_to_a_few_seconds():
    policy = HelperRestartPolicy()
    now, failed, delays = T0, 0, []
    for _ in range(7):
        decision = helper_restart(failed, None, now, policy, ROOMY)
        delays.append(decision.at - now)
        failed, now = decision.failed_starts, decision.at + 0.1
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert failed == 7


def test_a_helper_that_ran_well_starts_its_count_again():
    policy = HelperRestartPolicy(healthy_after=10.0)
    assert helper_restart(5, T0, T0 + 10.0, policy, ROOMY) == HelperRestart(failed_starts=1, at=T0 + 10.5)
    # Ready, but not up long enough: still a quick failure.
    assert helper_restart(5, T0, T0 + 9.9, policy, ROOMY).at == T0 + 9.9 + 4.0


@pytest.mark.parametrize("intensity", [Intensity(), Intensity(2, 10.0), ROOMY, Intensity(0, 1.0)])
def test_a_helper_failing_at_once_exceeds_its_intensity_however_long_it_keeps_failing(intensity):
    # Its delays never spread its restarts wider than the intensity allows: every
    # round of max_restarts + 1 quick failures escalates, the first and the tenth alike.
    policy = HelperRestartPolicy()
    now, failed = T0, 0
    for _ in range(10):
        history, exceeded = (), False
        while not exceeded:
            history, exceeded = record_restart(history, now, intensity)
            decision = helper_restart(failed, None, now, policy, intensity)
            failed, now = decision.failed_starts, decision.at + 0.001
    assert failed >= 10
