"""The space as operators see it: one row per factory, and every machine (pure).

Built from this factory's own statuses and the other factories' latest
answers, for `vac space` and `vac machines --space`. A factory that did not
answer the last poll is shown with why, and with its last answer while that
still counts (STALE_SECONDS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from vac.space import report
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus
from vac.space.status import FIRST_ABORT_CODE, STALE_SECONDS, abort_code


def factory_row(name: str, figures: Mapping[str, Mapping], factory: Mapping | None, answered_at: float | None,
                now: float) -> dict:
    """One factory: age of its answer, processors used and in all, HS06, machines by machinetype, last abort."""
    used = factory["running_processors"] if factory else sum(f["running_processors"] for f in figures.values())
    hs06 = factory["running_hs06"] if factory else sum(f["running_hs06"] for f in figures.values())
    aborts = [(f["shutdown_time"], machinetype, f) for machinetype, f in figures.items()
              if (abort_code(f.get("shutdown_message")) or 0) >= FIRST_ABORT_CODE and f.get("shutdown_time")]
    last = max(aborts, key=lambda abort: abort[:2], default=None)
    return {
        "factory": name, "answered_at": answered_at,
        "age_seconds": None if answered_at is None else max(now - answered_at, 0.0),
        "processors_used": used, "processors_total": factory.get("max_processors") if factory else None,
        "hs06": hs06,
        "machines": {machinetype: f["running_machines"] for machinetype, f in sorted(figures.items())
                     if f["running_machines"]},
        "last_abort": None if last is None else {
            "machinetype": last[1], "message": last[2]["shutdown_message"], "time": last[0],
            "machine": last[2].get("shutdown_machine")},
    }


def space_view(*, space: str, factory_name: str, local_statuses: Iterable[MachinetypeStatus],
               local_factory: FactoryStatus, answers: Mapping[str, dict], polled: Iterable[str],
               silent: Mapping[str, str], poll: Mapping, now: float) -> dict:
    """`vac space`: this factory first, then each factory asked, the silent ones apart with why."""
    here = factory_row(factory_name, {s.machinetype: report.figures(s) for s in local_statuses},
                       dataclasses.asdict(local_factory), now, now)
    rows, quiet = [dict(here, this_factory=True)], []
    for name in polled:
        answer = answers.get(name)
        counted = answer is not None and now - answer["answered_at"] <= STALE_SECONDS
        if name in silent:
            quiet.append({"factory": name, "reason": silent[name],
                          "last_answered_at": answer["answered_at"] if answer else None, "still_counted": counted})
        if answer is not None and name not in silent:
            rows.append(dict(factory_row(name, answer["machinetypes"], answer["factory"], answer["answered_at"],
                                         now), this_factory=False, short=list(answer["short"])))
    return {"space": space, "factory": factory_name, "poll": dict(poll), "stale_seconds": STALE_SECONDS,
            "factories": rows, "silent": quiet}


def space_machines(*, factory_name: str, local_machines: Iterable[MachineStatus], machines: Mapping[str, list],
                   silent: Mapping[str, str], left_out: int, poll: Mapping) -> dict:
    """`vac machines --space`: every machine of this factory, then of each factory that answered the poll."""
    listed = [dataclasses.asdict(machine) for machine in local_machines]
    for name, rows in sorted(machines.items()):
        listed.extend(report.machines_of(rows))
    return {"factory": factory_name, "poll": dict(poll), "machines": listed, "machines_left_out": left_out,
            "silent": [{"factory": name, "reason": reason} for name, reason in sorted(silent.items())]}
