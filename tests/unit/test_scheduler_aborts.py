"""Abort detection, outcome history and machinetype backoff (vac.supervisor.aborts)."""

import pytest

from vac.supervisor.aborts import Outcome, OutcomeHistory, backoff_until, is_abort, record_outcome, with_space

FIZZLE = 600


@pytest.mark.parametrize("code, lived, expected", [
    pytest.param(100, 30, False, id="100-shut-down-by-host-is-not-an-abort"),
    pytest.param(200, 30, False, id="200-work-completed-is-not-an-abort-even-if-quick"),
    pytest.param(200, 7200, False, id="200-after-hours"),
    pytest.param(300, 7200, True, id="300-no-more-work"),
    pytest.param(400, 7200, True, id="400-banned"),
    pytest.param(500, 30, True, id="500-site-problem"),
    pytest.param(600, 7200, True, id="600-grid-wide-problem"),
    pytest.param(700, 7200, True, id="700-transient-problem"),
    pytest.param(None, 30, True, id="no-message-quick-is-a-silent-fizzle"),
    pytest.param(None, FIZZLE - 1, True, id="no-message-just-before-fizzle-seconds"),
    pytest.param(None, FIZZLE, False, id="no-message-at-fizzle-seconds-just-ended"),
    pytest.param(None, 7200, False, id="no-message-after-hours-just-ended"),
])
def test_is_abort(code, lived, expected):
    assert is_abort(code, 1000.0, 1000.0 + lived, FIZZLE) is expected


@pytest.mark.parametrize("code, lived, last_abort_before, last_abort_after", [
    pytest.param(500, 60, None, 1060.0, id="first-abort-sets-last-abort"),
    pytest.param(200, 60, None, None, id="completed-leaves-no-abort"),
    pytest.param(200, 60, 500.0, 500.0, id="completed-keeps-earlier-abort"),
    pytest.param(None, 60, 500.0, 1060.0, id="silent-fizzle-moves-last-abort"),
    pytest.param(700, 60, 5000.0, 5000.0, id="older-abort-reported-late-does-not-move-it-back"),
])
def test_record_outcome_last_abort(code, lived, last_abort_before, last_abort_after):
    history = OutcomeHistory(last_abort_at=last_abort_before)
    after = record_outcome(history, 1000.0, 1000.0 + lived, code, FIZZLE)
    assert after.last_abort_at == last_abort_after
    assert after.recent[-1] == Outcome(1000.0, 1000.0 + lived, code)
    assert history.recent == ()  # the input is not changed


def test_record_outcome_keeps_only_recent():
    history = OutcomeHistory()
    for index in range(30):
        history = record_outcome(history, float(index), float(index) + 1000, 200, FIZZLE, keep=5)
    assert [o.started_at for o in history.recent] == [25.0, 26.0, 27.0, 28.0, 29.0]


BACKOFF = 100
ABORT_AT = 10_000.0


@pytest.mark.parametrize("now, young_started_at, expected", [
    pytest.param(ABORT_AT + 50, [], ABORT_AT + BACKOFF, id="inside-plain-backoff"),
    pytest.param(ABORT_AT + BACKOFF, [], None, id="plain-backoff-over"),
    pytest.param(ABORT_AT + 150, [ABORT_AT - 5000], None,
                 id="old-machine-does-not-extend"),
    pytest.param(ABORT_AT + 150, [ABORT_AT + 120], ABORT_AT + BACKOFF + FIZZLE,
                 id="young-machine-extends-by-fizzle-seconds"),
    pytest.param(ABORT_AT + 50, [ABORT_AT - 530], ABORT_AT + BACKOFF,
                 id="young-machine-ages-out-before-plain-end"),
    pytest.param(ABORT_AT + 150, [ABORT_AT - 400], ABORT_AT + 200,
                 id="backoff-ends-when-last-young-machine-ages-out"),
    pytest.param(ABORT_AT + BACKOFF + FIZZLE, [ABORT_AT + 650], None,
                 id="extension-never-longer-than-fizzle-seconds"),
    pytest.param(ABORT_AT + 50, [ABORT_AT + 10, ABORT_AT + 20], ABORT_AT + 20 + FIZZLE,
                 id="several-young-machines-the-youngest-counts"),
])
def test_backoff_until(now, young_started_at, expected):
    assert backoff_until(ABORT_AT, BACKOFF, FIZZLE, young_started_at, now) == expected


def test_no_abort_no_backoff():
    assert backoff_until(None, BACKOFF, FIZZLE, [ABORT_AT], ABORT_AT) is None


# The space's part (Vac's pollFactories): another factory's machine before fizzle, its age unknown here.

@pytest.mark.parametrize("now, expected", [
    pytest.param(ABORT_AT + 50, ABORT_AT + BACKOFF + FIZZLE, id="inside-the-plain-backoff-it-extends"),
    pytest.param(ABORT_AT + 150, ABORT_AT + BACKOFF + FIZZLE, id="past-the-plain-backoff-it-holds"),
    pytest.param(ABORT_AT + BACKOFF + FIZZLE, None, id="never-longer-than-fizzle-seconds"),
])
def test_a_young_machine_elsewhere_extends_the_backoff_until_the_space_says_otherwise(now, expected):
    assert backoff_until(ABORT_AT, BACKOFF, FIZZLE, [], now, young_elsewhere=True) == expected
    assert backoff_until(None, BACKOFF, FIZZLE, [], now, young_elsewhere=True) is None, "no abort, no backoff"


def test_the_latest_abort_anywhere_in_the_space_is_the_last_abort():
    here = OutcomeHistory(last_abort_at=ABORT_AT, recent=(Outcome(ABORT_AT - 10, ABORT_AT, 300),))
    merged = with_space({"alpha": here, "beta": here, "gamma": here}, {
        "alpha": {"last_abort_at": ABORT_AT + 30, "factory": "f2.example.org", "before_fizzle": 0},
        "beta": {"last_abort_at": ABORT_AT - 30, "factory": "f3.example.org", "before_fizzle": 2},
        "delta": {"last_abort_at": ABORT_AT, "factory": "f3.example.org", "before_fizzle": 0},
        "epsilon": {"last_abort_at": None, "factory": None, "before_fizzle": 1}})
    assert merged["alpha"] == OutcomeHistory(ABORT_AT + 30, here.recent, "f2.example.org", False)
    assert merged["beta"] == OutcomeHistory(ABORT_AT, here.recent, None, True), "the abort here is later"
    assert merged["gamma"] is here
    assert merged["delta"] == OutcomeHistory(ABORT_AT, (), "f3.example.org", False), "a type only seen elsewhere"
    assert merged["epsilon"] == OutcomeHistory(None, (), None, True)
