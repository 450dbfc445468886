"""Which finished machines count as aborts, and the backoff they put on their machinetype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from vac.config.model import DEFAULT_FIZZLE_SECONDS

# shutdown_message codes from 300 up mean the machine found nothing useful to do
# or could not work here (INTERFACES.md §6); 100 and 200 are normal endings.
FIRST_ABORT_CODE = 300

# Enough finished machines per machinetype for a status display; the scheduler
# itself only needs the last abort time.
RECENT_OUTCOMES_KEPT = 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished machine: when it ran and its shutdown_message code (None: no message)."""
    started_at: float
    ended_at: float
    code: int | None


@dataclass(frozen=True, slots=True)
class OutcomeHistory:
    """A machinetype's last abort and its recently finished machines.

    With the space (with_space): `abort_elsewhere` names the factory whose
    abort is the last one when it is not this one, and `young_elsewhere` says
    a machine of the type is before fizzle on another factory.
    """
    last_abort_at: float | None = None
    recent: tuple[Outcome, ...] = ()
    abort_elsewhere: str | None = None
    young_elsewhere: bool = False


def is_abort(code: int | None, started_at: float, ended_at: float, fizzle_seconds: float) -> bool:
    """True if a machine that ended with this code (None: no message) counts as an abort."""
    if code is None:
        # A machine that vanished quickly without saying why is a silent fizzle;
        # one that ran past fizzle_seconds without a message just ended.
        return ended_at - started_at < fizzle_seconds
    return code >= FIRST_ABORT_CODE


def record_outcome(history: OutcomeHistory, started_at: float, ended_at: float,
                   code: int | None, fizzle_seconds: float,
                   keep: int = RECENT_OUTCOMES_KEPT) -> OutcomeHistory:
    """`history` with one more finished machine; an abort moves its last abort time forward."""
    last_abort_at = history.last_abort_at
    if is_abort(code, started_at, ended_at, fizzle_seconds):
        # Outcomes may be reported out of order (a slot worker restarting late):
        # the backoff runs from the latest abort, never from an older one.
        if last_abort_at is None or ended_at > last_abort_at:
            last_abort_at = ended_at
    recent = (history.recent + (Outcome(started_at, ended_at, code),))[-keep:] if keep > 0 else ()
    return OutcomeHistory(last_abort_at=last_abort_at, recent=recent)


def backoff_until(last_abort_at: float | None, backoff_seconds: float, fizzle_seconds: float,
                  running_started_at: Iterable[float], now: float, young_elsewhere: bool = False) -> float | None:
    """The time a machinetype leaves backoff, or None if it is not in backoff at `now`.

    `running_started_at` are the start times of that machinetype's running
    machines here; `young_elsewhere`, that another factory of the space runs
    one still before fizzle (its age unknown here).
    """
    if last_abort_at is None:
        return None
    plain_end = last_abort_at + backoff_seconds
    young = [started for started in running_started_at if now - started < fizzle_seconds]
    if not young and not young_elsewhere:
        return plain_end if now < plain_end else None
    # A machine of this type started after the abort may be about to fizzle too:
    # wait fizzle_seconds longer, but only while such a young machine exists.
    extended_end = plain_end + fizzle_seconds
    if now >= extended_end:
        return None
    if young_elsewhere:
        # The ages of another factory's machines are not known here: until the
        # extended end, or until a later answer of the space says none is young.
        return extended_end
    last_young_ages_at = max(young) + fizzle_seconds
    return min(extended_end, max(plain_end, last_young_ages_at))


def with_space(histories: Mapping[str, OutcomeHistory], space: Mapping[str, Mapping]) -> dict[str, OutcomeHistory]:
    """Each machinetype's history with what the other factories of the space said (Vac's pollFactories).

    space: machinetype -> {"last_abort_at", "factory", "before_fizzle"}: the
    latest abort another factory reported and how many machines of the type are
    before fizzle there. The latest abort anywhere is the type's last abort.
    """
    merged = dict(histories)
    for machinetype, elsewhere in space.items():
        history = merged.get(machinetype, OutcomeHistory())
        last_abort_at, abort_elsewhere = history.last_abort_at, None
        if elsewhere.get("last_abort_at") is not None and (
                last_abort_at is None or elsewhere["last_abort_at"] > last_abort_at):
            last_abort_at, abort_elsewhere = elsewhere["last_abort_at"], elsewhere["factory"]
        merged[machinetype] = OutcomeHistory(last_abort_at=last_abort_at, recent=history.recent,
                                             abort_elsewhere=abort_elsewhere,
                                             young_elsewhere=elsewhere.get("before_fizzle", 0) > 0)
    return merged


# What a restarted root reads back from the history to rebuild backoff: the
# outcomes of the last backoff_seconds + fizzle_seconds of the configured
# machinetypes, at least BACKOFF_MEMORY_FLOOR_SECONDS (machinetypes from
# pipes are not known before the loop starts), at most the ceiling, and no
# more than BACKOFF_MEMORY_ROWS machines (the newest, which hold the last aborts).
BACKOFF_MEMORY_FLOOR_SECONDS = 2 * 3600
BACKOFF_MEMORY_CEILING_SECONDS = 7 * 86400
BACKOFF_MEMORY_ROWS = 10000


def backoff_memory_seconds(machinetypes: Iterable[tuple[float, float]]) -> float:
    """How far back outcomes can still matter, given (backoff_seconds, fizzle_seconds) of each machinetype."""
    longest = max((backoff + fizzle for backoff, fizzle in machinetypes), default=0.0)
    return min(BACKOFF_MEMORY_CEILING_SECONDS, max(BACKOFF_MEMORY_FLOOR_SECONDS, float(longest)))


def rebuilt_histories(outcomes: Iterable[tuple[str, Outcome]],
                      fizzle_seconds: Mapping[str, float]) -> dict[str, OutcomeHistory]:
    """Each machinetype's history from remembered (machinetype, outcome) pairs, as if reported again.

    A machinetype missing from `fizzle_seconds` uses DEFAULT_FIZZLE_SECONDS,
    as an outcome reported for it would.
    """
    histories: dict[str, OutcomeHistory] = {}
    for machinetype, outcome in sorted(outcomes, key=lambda pair: pair[1].ended_at):
        histories[machinetype] = record_outcome(
            histories.get(machinetype, OutcomeHistory()), outcome.started_at, outcome.ended_at, outcome.code,
            fizzle_seconds.get(machinetype, DEFAULT_FIZZLE_SECONDS))
    return histories
