"""When a machine ended, as far as anyone saw: the engine's word, or the last evidence of its life (pure).

Accounting must never state more than was observed. A machine whose end
nobody saw (its container removed while no vacd ran, or one the engine
reports with a finish time it cannot know) is taken to have ended at the
last sign of its life, never after its shutdown time plus the stop grace and
never before its start; the record then says the end was estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from vac.runtimes.base import ExitInfo

# Docker's code for a container whose exit it did not see: after a restart of
# dockerd, a container that exited while the engine was down is reported
# with this code and the time of the engine's restore as its finish.
ENGINE_LOST_EXIT_CODE = 255
# How much later than the last evidence of life an exit with that code may
# be stamped and still be believed: more than the slot's 5 s between CPU
# samples plus a slow answer, far less than an engine's restart.
ENGINE_LOST_MARGIN_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class MachineEnd:
    """The end to record, whether it was estimated, and why (for the log)."""
    ended: float
    estimated: bool
    why: str


def engine_lost_the_exit(exit_info: ExitInfo, last_evidence: float | None) -> bool:
    """True if the engine's finish time is its restore time rather than the container's exit.

    Exit code 255 stamped well after the last evidence of the machine's life:
    either the container died unseen while the engine was down, or it exited
    with 255 itself while nobody watched; either way the time is not known.
    """
    return (exit_info.exit_code == ENGINE_LOST_EXIT_CODE and exit_info.finished_at is not None
            and last_evidence is not None
            and exit_info.finished_at > last_evidence + ENGINE_LOST_MARGIN_SECONDS)


def decide_end(*, started: float | None, exit_info: ExitInfo | None, evidence: Iterable[float | None],
               shutdown_time: float, stop_grace: float, now: float) -> MachineEnd:
    """The end of a machine: the engine's finish time if it saw one, else the last evidence of life.

    `evidence` are times the machine was seen alive (CPU samples, its files'
    modification times); None entries are ignored. An estimate lies between
    the start and `shutdown_time + stop_grace` (and `now`).
    """
    seen = [float(moment) for moment in evidence if moment is not None]
    last_evidence = max(seen) if seen else None
    if started is None:
        # It never ran: its end is accounted nowhere, only shown.
        finished = exit_info.finished_at if exit_info is not None and exit_info.finished_at else now
        return MachineEnd(float(finished), False, "never started")
    if exit_info is not None and exit_info.finished_at:
        if not engine_lost_the_exit(exit_info, last_evidence if last_evidence is not None else started):
            return MachineEnd(float(exit_info.finished_at), False, "the engine's finish time")
        why = (f"the engine reports exit code {exit_info.exit_code} at {exit_info.finished_at:.0f}, "
               f"long after the last evidence of life")
    else:
        why = "nobody saw it end (its container was gone)"
    latest = min(now, shutdown_time + stop_grace)
    if exit_info is not None and exit_info.finished_at:
        latest = min(latest, exit_info.finished_at)
    ended = max(float(started), min(last_evidence if last_evidence is not None else started, latest))
    return MachineEnd(ended, True, why)
