"""What this factory tells the space, and what the space adds to its scores (pure).

local_statuses(), local_machines() and local_factory() turn the root's slot
table and last outcomes into the machinetype_status, machine_status and
factory_status answers; space_hs06() and space_aborts() turn what the other
factories answered recently into the HS06 the scheduler adds per
machinetype, and the aborts and young machines that hold a machinetype back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vac.space import machine_status
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MAX_ANSWER_DATAGRAMS, MachinetypeStatus, clip

# A factory that has not answered for this long no longer counts.
STALE_SECONDS = 150.0
# Vac's default, for a machinetype no longer configured.
DEFAULT_FIZZLE_SECONDS = 600
# shutdown_message codes from here up are aborts, wherever in the space (INTERFACES.md §6, §9).
FIRST_ABORT_CODE = 300
# The vocabulary's slot states as Vac names the state of a slot's machine.
_VAC_STATES = {"preparing": machine_status.STARTING, "starting": machine_status.STARTING,
               "running": machine_status.RUNNING, "stopping": machine_status.RUNNING,
               "finishing": machine_status.SHUT_DOWN, "cleaning": machine_status.SHUT_DOWN,
               "idle": machine_status.SHUT_DOWN}


def shutdown_message(outcome: Mapping, fizzle_seconds: float) -> str | None:
    """How a finished machine's end is told to the space: its shutdown_message, or
    Vac's 300 for a machine that ended without one before fizzle_seconds."""
    if outcome.get("code") is not None:
        return clip(f"{outcome['code']} {outcome['text']}")
    started_at = outcome.get("started_at")
    if started_at is not None and outcome["ended_at"] - started_at < fizzle_seconds:
        return f"300 Vac detects fizzle after {int(outcome['ended_at'] - started_at)} seconds"
    return None


def local_machines(*, factory_name: str, slots: Iterable[Mapping], outcomes: Mapping[int, Mapping],
                   machinetypes: Mapping, hs06_per_processor: float,
                   cap: int | None = MAX_ANSWER_DATAGRAMS) -> list[MachineStatus]:
    """One status per slot, as a machines_query is answered (the first `cap` slots; None: all, for operators).

    slots: {"slot", "name", "state", "machine"} in slot order, machine as the
    slot table holds it (None when empty); outcomes: slot -> its last finished
    machine ({machine, machinetype, code, text, started_at, ended_at, processors, cpu_seconds}).
    An empty slot is answered "Shut down" with the last machine it held, as Vac does.
    """
    slots = list(slots)[:cap]
    out = []
    for slot in slots:
        machine, outcome = slot["machine"], outcomes.get(slot["slot"])
        common = {"factory": factory_name, "num_machines": len(slots), "machine": slot["name"]}
        if machine is not None:
            config = machinetypes.get(machine["machinetype"])
            started, seen = machine.get("started_at"), machine.get("heartbeat_at")
            cpu = float(machine.get("cpu_seconds") or 0.0)
            out.append(MachineStatus(
                **common, state=_VAC_STATES.get(slot["state"], machine_status.UNKNOWN),
                machine_model=getattr(config, "machine_model", None), uuid=machine["uuid"],
                created_time=_time(machine.get("created_at", started)), started_time=_time(started),
                heartbeat_time=_time(seen), num_processors=machine["processors"], cpu_seconds=cpu,
                cpu_percentage=_percentage(cpu, started, seen),
                hs06=hs06_per_processor * machine["processors"], machinetype=machine["machinetype"],
                fqan=getattr(config, "accounting_fqan", None)))
        elif outcome is not None:
            config = machinetypes.get(outcome["machinetype"])
            fizzle = getattr(config, "fizzle_seconds", DEFAULT_FIZZLE_SECONDS)
            processors = outcome.get("processors")
            out.append(MachineStatus(
                **common, state=machine_status.SHUT_DOWN, machine_model=getattr(config, "machine_model", None),
                uuid=outcome["machine"], started_time=_time(outcome.get("started_at")),
                heartbeat_time=_time(outcome["ended_at"]), num_processors=processors,
                cpu_seconds=float(outcome.get("cpu_seconds") or 0.0),
                cpu_percentage=_percentage(outcome.get("cpu_seconds") or 0.0, outcome.get("started_at"),
                                           outcome["ended_at"]),
                hs06=hs06_per_processor * processors if processors is not None else None,
                machinetype=outcome["machinetype"], shutdown_message=shutdown_message(outcome, fizzle),
                shutdown_time=_time(outcome["ended_at"]), fqan=getattr(config, "accounting_fqan", None)))
        else:
            out.append(MachineStatus(**common, state=machine_status.SHUT_DOWN))
    return out


def local_factory(*, factory_name: str, machines: Iterable[tuple[int, dict]], total_processors: int,
                  hs06_per_processor: float) -> FactoryStatus:
    """What this factory runs and could run, for factory_status (the vacquery child adds the host's figures)."""
    held = [machine for _, machine in machines]
    processors = sum(machine["processors"] for machine in held)
    return FactoryStatus(
        factory=factory_name, running_processors=processors, running_machines=len(held),
        running_hs06=hs06_per_processor * processors, max_processors=total_processors,
        max_machines=total_processors, max_hs06=hs06_per_processor * total_processors)


def _time(value) -> int | None:
    return None if value is None else int(value)


def _percentage(cpu_seconds: float, started_at: float | None, until: float | None) -> float:
    """CPU time as a percentage of one processor's over the machine's life so far (0 until it has one)."""
    if started_at is None or until is None or until <= started_at:
        return 0.0
    return round(100.0 * cpu_seconds / (until - started_at), 2)


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
        fizzle = getattr(machinetypes.get(name), "fizzle_seconds", DEFAULT_FIZZLE_SECONDS)
        message = shutdown_message(outcome, fizzle)
        if name in held and message is not None and (
                name not in last or outcome["ended_at"] > last[name]["ended_at"]):
            last[name] = dict(outcome, message=message)
    statuses = []
    for name in sorted(held):
        running = held[name]
        config = machinetypes.get(name)
        fizzle = getattr(config, "fizzle_seconds", DEFAULT_FIZZLE_SECONDS)
        outcome = last.get(name)
        statuses.append(MachinetypeStatus(
            factory=factory_name, machinetype=name, num_machinetypes=len(held),
            running_hs06=sum(hs06_per_processor * m["processors"] for m in running),
            running_machines=len(running),
            running_processors=sum(m["processors"] for m in running),
            num_before_fizzle=sum(1 for m in running if now < m["started_at"] + fizzle),
            shutdown_message=outcome["message"] if outcome else None,
            shutdown_time=int(outcome["ended_at"]) if outcome else None,
            shutdown_machine=outcome.get("machine_name") if outcome else None,
            bytes_per_processor=bytes_per_processor, fqan=getattr(config, "accounting_fqan", None),
            max_wallclock_seconds=getattr(config, "max_wallclock_seconds", None),
            max_processors=getattr(config, "max_processors", None)))
    return statuses


def abort_code(message: str | None) -> int | None:
    """The code a shutdown_message starts with ("300 Nothing to do" -> 300), or None."""
    code = message.split(" ", 1)[0] if isinstance(message, str) else ""
    return int(code) if code.isdigit() and len(code) <= 3 else None


def space_aborts(factories: Mapping[str, dict], *, now: float, exclude: Iterable[str] = ()) -> dict[str, dict]:
    """Per machinetype, what the other factories reported within STALE_SECONDS (Vac's pollFactories).

    {"last_abort_at", "factory", "message"}: the latest shutdown_time of a
    shutdown_message with a code from FIRST_ABORT_CODE up, and where;
    "before_fizzle": how many machines of the type they run before fizzle.
    An abort time is taken no later than the answer that told it, so a
    factory whose clock runs ahead cannot stretch the backoff.
    """
    skip = set(exclude)
    out: dict[str, dict] = {}
    for name, answer in sorted(factories.items()):
        if name in skip or now - answer["answered_at"] > STALE_SECONDS:
            continue
        for machinetype, figures in answer["machinetypes"].items():
            entry = out.setdefault(machinetype, {"last_abort_at": None, "factory": None, "message": None,
                                                 "before_fizzle": 0})
            entry["before_fizzle"] += figures.get("num_before_fizzle", 0)
            code, at = abort_code(figures.get("shutdown_message")), figures.get("shutdown_time")
            if code is None or code < FIRST_ABORT_CODE or at is None:
                continue
            at = min(float(at), answer["answered_at"])
            if entry["last_abort_at"] is None or at > entry["last_abort_at"]:
                entry.update(last_abort_at=at, factory=name, message=figures["shutdown_message"])
    return out


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
