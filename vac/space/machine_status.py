"""machine_status: one datagram per slot of a factory, the answer to a machines_query (pure).

A factory answers with one datagram per slot, each naming how many there
are (num_machines), so the asker knows when it has them all. An empty slot
is answered too, as Vac does: "Shut down", with the last machine it held, if
any. Decoding checks every field, typed and bounded, and accepts what Vac
sends (whole-number floats, the older num_cpus, optional keys missing).
"""

from __future__ import annotations

import dataclasses

from vac.space import protocol
from vac.space.protocol import MAX_COUNT, MAX_HS06, as_count, as_number, clip, optional_text, short_text

# No factory has more slots than this: more announced is not an answer.
MAX_MACHINES = 4096
# Vac's words for the state of a slot's machine (its VacState).
UNKNOWN, SHUT_DOWN, STARTING, RUNNING = "Unknown", "Shut down", "Starting", "Running"
# Vac leaves out what a machine does not have, rather than sending null.
_OMITTED_WHEN_NONE = ("fqan",)
# The longest text of each field an answer carries: a host name, Vac's state
# words, a model, a uuid, a machinetype name, and the texts.
_CLIPPED = {"machine": 253, "state": 16, "machine_model": 32, "uuid": 64, "machinetype": 64,
            "shutdown_message": protocol.MAX_TEXT, "fqan": protocol.MAX_TEXT}


@dataclasses.dataclass(frozen=True)
class MachineStatus:
    """One slot of one factory and the machine in it (or the last one it held)."""
    factory: str
    num_machines: int
    machine: str
    state: str
    machine_model: str | None = None
    uuid: str | None = None
    created_time: int | None = None
    started_time: int | None = None
    heartbeat_time: int | None = None
    num_processors: int | None = None
    cpu_seconds: float = 0.0
    cpu_percentage: float = 0.0
    hs06: float | None = None
    machinetype: str | None = None
    shutdown_message: str | None = None
    shutdown_time: int | None = None
    fqan: str | None = None


def machine_statuses(statuses: list[MachineStatus], *, space: str, site: str, query_cookie: str,
                     daemon_version: str, now: int) -> list[bytes]:
    """The answer to a machines_query: one datagram per slot, num_machines saying how many."""
    out = []
    for status in statuses:
        message = dataclasses.asdict(status)
        message.update(protocol.reply_fields(protocol.MACHINE_STATUS, space=space, site=site,
                                             query_cookie=query_cookie, daemon_version=daemon_version, now=now))
        message.update({
            "num_machines": len(statuses),
            # Vac's older name of the same figure.
            "num_cpus": status.num_processors,
            **{key: clip(message[key], longest) for key, longest in _CLIPPED.items()}})
        for key in _OMITTED_WHEN_NONE:
            if message[key] is None:
                del message[key]
        out.append(protocol.dumps(message))
    return out


def read_machine_status(data: bytes, space: str) -> tuple[str, MachineStatus] | str:
    """(cookie, status) of a machine_status of `space`, or why it is not one.

    The reason starts with NOT_AN_ANSWER for datagrams of another type or space.
    """
    header = protocol.read_header(data, protocol.MACHINE_STATUS, space)
    if isinstance(header, str):
        return header
    m, factory, answer_cookie = header
    num_machines = as_count(m.get("num_machines"))
    if num_machines is None or not 1 <= num_machines <= MAX_MACHINES:
        return f"num_machines is not a count from 1 to {MAX_MACHINES}"
    machine, state = m.get("machine"), m.get("state")
    if not (short_text(machine) and short_text(state)):
        return "machine or state is not a short text"
    fields = {}
    for key in ("machine_model", "uuid", "shutdown_message", "fqan"):
        if not optional_text(m.get(key)):
            return f"{key} is not text"
        fields[key] = m.get(key)
    machinetype = m.get("machinetype")
    if machinetype is not None and not protocol.is_machinetype(machinetype):
        return "machinetype is not a machinetype name"
    for key in ("created_time", "started_time", "heartbeat_time", "shutdown_time"):
        if m.get(key) is not None:
            fields[key] = as_count(m[key])
            if fields[key] is None:
                return f"{key} is not a time"
    # Both spellings are checked when present; the newer counts.
    for key in ("num_cpus", "num_processors"):
        if m.get(key) is not None:
            fields["num_processors"] = as_count(m[key])
            if fields["num_processors"] is None:
                return f"{key} is not a whole number from 0 to {MAX_COUNT}"
    for key, maximum in (("cpu_seconds", MAX_COUNT), ("cpu_percentage", MAX_COUNT), ("hs06", MAX_HS06)):
        if m.get(key) is not None:
            fields[key] = as_number(m[key], maximum)
            if fields[key] is None:
                return f"{key} is not a number from 0 to {maximum:g}"
    return answer_cookie, MachineStatus(factory=factory, num_machines=num_machines, machine=machine, state=state,
                                        machinetype=machinetype, **fields)
