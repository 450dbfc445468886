"""What this factory tells the space, and what the space adds to its scores (pure).

local_statuses() turns the root's slot table and last outcomes into the
machinetype_status answers; space_hs06() sums what the other factories
answered recently into the HS06 the scheduler adds per machinetype.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vac.space.protocol import MachinetypeStatus

# A factory that has not answered for this long no longer counts.
STALE_SECONDS = 150.0


def local_statuses(*, factory_name: str, machinetypes: Mapping, machines: Iterable[tuple[int, dict]],
                   outcomes: Iterable[dict], hs06_per_processor: float, bytes_per_processor: int,
                   now: float) -> list[MachinetypeStatus]:
    """One status per machinetype: what runs of it here and how its last machine ended.

    machines: (slot, machine summary) of the slot table; outcomes: the last
    finished machine of each slot ({machinetype, code, text, ended_at, machine_name}).
    """
    held: dict[str, list[dict]] = {name: [] for name in machinetypes}
    for _, machine in machines:
        held.setdefault(machine["machinetype"], []).append(machine)
    last: dict[str, dict] = {}
    for outcome in outcomes:
        name = outcome.get("machinetype")
        if name in held and outcome.get("code") is not None and (
                name not in last or outcome["ended_at"] > last[name]["ended_at"]):
            last[name] = outcome
    statuses = []
    for name in sorted(held):
        running = held[name]
        config = machinetypes.get(name)
        fizzle = getattr(config, "fizzle_seconds", 600)
        outcome = last.get(name)
        statuses.append(MachinetypeStatus(
            factory=factory_name, machinetype=name, num_machinetypes=len(held),
            running_hs06=sum(hs06_per_processor * m["processors"] for m in running),
            running_machines=len(running),
            running_processors=sum(m["processors"] for m in running),
            num_before_fizzle=sum(1 for m in running if now < m["started_at"] + fizzle),
            shutdown_message=f"{outcome['code']} {outcome['text']}" if outcome else None,
            shutdown_time=int(outcome["ended_at"]) if outcome else None,
            shutdown_machine=outcome.get("machine_name") if outcome else None,
            bytes_per_processor=bytes_per_processor, fqan=getattr(config, "accounting_fqan", None),
            max_wallclock_seconds=getattr(config, "max_wallclock_seconds", None),
            max_processors=getattr(config, "max_processors", None)))
    return statuses


def space_hs06(factories: Mapping[str, dict], *, now: float, exclude: Iterable[str] = ()) -> dict[str, float]:
    """HS06 per machinetype that the other factories reported within STALE_SECONDS."""
    skip = set(exclude)
    totals: dict[str, float] = {}
    for name, answer in factories.items():
        if name in skip or now - answer["answered_at"] > STALE_SECONDS:
            continue
        for machinetype, figures in answer["machinetypes"].items():
            totals[machinetype] = totals.get(machinetype, 0.0) + figures["running_hs06"]
    return totals
