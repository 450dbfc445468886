"""What the vacquery child tells the root after each poll of the space: built from a Poll, checked on decode.

factories: name -> {"answered_at": its wall-clock time, "machinetypes":
{machinetype: MACHINETYPE_FIGURES}, "factory": FactoryStatus as a map or
None, "short": what it left unanswered}, for each factory that answered;
silent: name -> why it did not; machines: name -> rows of MACHINE_FIELDS,
only when the poll asked for them (at most MAX_SPACE_MACHINES in all, the
number left out in machines_left_out). The root checks every field again
(check()), so a confused child fails, never the root.
"""

from __future__ import annotations

import dataclasses
import math

from vac.space import protocol
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus

# What the root keeps of each machinetype another factory runs.
MACHINETYPE_FIGURES = ("running_hs06", "running_machines", "running_processors", "num_before_fizzle",
                       "shutdown_message", "shutdown_time", "shutdown_machine")
MACHINE_FIELDS = tuple(field.name for field in dataclasses.fields(MachineStatus))
# Machines one report carries at most, so it stays far inside a frame
# (30 factories of 64 slots fit); the rest are counted, not sent.
MAX_SPACE_MACHINES = 2048
# Factories and machinetypes per factory one report carries at most.
MAX_FACTORIES = 4096
MAX_NAME = 260
MAX_REASON = 300


@dataclasses.dataclass(frozen=True)
class Figures:
    """One machinetype of another factory, as the root keeps it (checked with protocol.from_plain)."""
    running_hs06: float
    running_machines: int
    running_processors: int
    num_before_fizzle: int
    shutdown_message: str | None
    shutdown_time: int | None
    shutdown_machine: str | None


def figures(status: MachinetypeStatus) -> dict:
    return {name: getattr(status, name) for name in MACHINETYPE_FIGURES}


def answer(machinetypes: dict[str, MachinetypeStatus], factory: FactoryStatus | None, short: list[str],
           answered_at: float) -> dict:
    """One factory's entry of `factories`."""
    return {"answered_at": answered_at,
            "machinetypes": {name: figures(status) for name, status in sorted(machinetypes.items())},
            "factory": dataclasses.asdict(factory) if factory is not None else None, "short": short}


def machine_rows(statuses: list[MachineStatus]) -> list[list]:
    return [[getattr(status, name) for name in MACHINE_FIELDS] for status in statuses]


def machines_of(rows: list[list]) -> list[dict]:
    """Rows back as MachineStatus maps, for operators."""
    return [dict(zip(MACHINE_FIELDS, row)) for row in rows]


def check(factories: dict, silent: dict, machines: dict, machines_left_out: int) -> None:
    """Raise ValueError unless the report has the shape and bounds the module docstring gives."""
    if len(factories) > MAX_FACTORIES or len(silent) > MAX_FACTORIES:
        raise ValueError(f"more than {MAX_FACTORIES} factories")
    for name, entry in factories.items():
        _name(name)
        if not isinstance(entry, dict) or set(entry) != {"answered_at", "machinetypes", "factory", "short"}:
            raise ValueError(f"factory {name!r:.80}: not an answer")
        if not _time(entry["answered_at"]):
            raise ValueError(f"factory {name!r:.80}: answered_at is not a time")
        if not isinstance(entry["machinetypes"], dict) or len(entry["machinetypes"]) > protocol.MAX_MACHINETYPES:
            raise ValueError(f"factory {name!r:.80}: machinetypes is not a map of at most "
                             f"{protocol.MAX_MACHINETYPES}")
        for machinetype, values in entry["machinetypes"].items():
            if not protocol.is_machinetype(machinetype):
                raise ValueError(f"factory {name!r:.80}: {machinetype!r:.80} is not a machinetype name")
            protocol.from_plain(Figures, values)
        if entry["factory"] is not None:
            protocol.from_plain(FactoryStatus, entry["factory"])
        _texts(entry["short"], f"factory {name!r:.80}: short")
    for name, reason in silent.items():
        _name(name)
        _texts([reason], f"silent {name!r:.80}")
    if not isinstance(machines_left_out, int) or machines_left_out < 0:
        raise ValueError("machines_left_out is not a count")
    if sum(len(rows) for rows in machines.values() if isinstance(rows, list)) > MAX_SPACE_MACHINES:
        raise ValueError(f"more than {MAX_SPACE_MACHINES} machines")
    for name, rows in machines.items():
        _name(name)
        if not isinstance(rows, list):
            raise ValueError(f"machines of {name!r:.80}: not a list")
        for row in rows:
            if not isinstance(row, list) or len(row) != len(MACHINE_FIELDS):
                raise ValueError(f"machines of {name!r:.80}: a row of the wrong shape")
            protocol.from_plain(MachineStatus, dict(zip(MACHINE_FIELDS, row)))


def _name(name) -> None:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME):
        raise ValueError(f"{name!r:.80} is not a factory name")


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _texts(values, what) -> None:
    if not isinstance(values, list) or len(values) > 8 or not all(
            isinstance(text, str) and len(text) <= MAX_REASON for text in values):
        raise ValueError(f"{what}: not a few short texts")
