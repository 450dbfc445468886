"""VacQuery, as Vac speaks it: JSON datagrams over UDP between the factories of a space.

A factory asks each other factory for its machinetypes (machinetypes_query,
with a cookie derived from a fresh salt and the factory's name); each
answers with one machinetype_status datagram per machinetype, naming how
many there are, so the asker knows when it has them all. The scheduler adds
the HS06 the other factories run per machinetype to its own (INTERFACES.md
section 7). Queries of every kind, the parts every answer shares and the
machinetype_status live here; machine_status.py and factory_status.py hold
the other two answers. Pure functions: encoding, and decoding that checks
every field it uses, so a confused or hostile peer yields None, never an
exception.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing

VACQUERY_VERSION = "01.03"
PORT = 995
# What Vac reads of one datagram; ours stay below it.
MAX_DATAGRAM = 10240
MAX_TEXT = 256
MACHINETYPES_QUERY = "machinetypes_query"
MACHINETYPE_STATUS = "machinetype_status"
MACHINES_QUERY = "machines_query"
MACHINE_STATUS = "machine_status"
FACTORY_QUERY = "factory_query"
FACTORY_STATUS = "factory_status"
# The `method` of Vac's older queries, and the query each one is.
LEGACY_METHODS = {"machinetypes": MACHINETYPES_QUERY, "machines": MACHINES_QUERY, "factories": FACTORY_QUERY}
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_MACHINETYPE = re.compile(r"[a-z0-9-]{1,64}")
# Bounds of what a peer may claim: a count (also a time in seconds) is an
# exact integer in a float, HS06 beyond any space that exists, and no more
# machinetypes than a datagram each could be waited for.
MAX_COUNT = 2**53 - 1
MAX_HS06 = 1e9
MAX_MACHINETYPES = 1000
# One query is answered with at most this many datagrams (the first machinetypes
# or slots, and the answer says so): with the rate limits of the vacquery child it
# bounds what a spoofed query can make a factory send (README: the space).
MAX_ANSWER_DATAGRAMS = 64
NOT_AN_ANSWER = "not an answer"
# Each count of what runs, with the spellings Vac has used for it, newest first.
_RUNNING_COUNTS = {"running_machines": ("running_machines",),
                   "running_processors": ("running_processors", "running_cpus"),
                   "num_before_fizzle": ("num_before_fizzle",)}
# Optional figures Vac 03.01 adds: typed and bounded when present.
_OPTIONAL_COUNTS = ("bytes_per_processor", "max_wallclock_seconds", "max_processors")
_OMITTED_WHEN_NONE = _OPTIONAL_COUNTS + ("fqan",)


@dataclasses.dataclass(frozen=True)
class Query:
    message_type: str
    space: str
    cookie: str


@dataclasses.dataclass(frozen=True)
class MachinetypeStatus:
    """What one factory runs of one machinetype."""
    factory: str
    machinetype: str
    num_machinetypes: int
    running_hs06: float
    running_machines: int
    running_processors: int
    num_before_fizzle: int
    shutdown_message: str | None = None
    shutdown_time: int | None = None
    shutdown_machine: str | None = None
    # What Vac 03.01 adds: memory per processor, and (optional) the
    # machinetype's accounting FQAN, longest wallclock and most processors.
    bytes_per_processor: int | None = None
    fqan: str | None = None
    max_wallclock_seconds: int | None = None
    max_processors: int | None = None


def cookie(salt: bytes, factory: str) -> str:
    """The cookie a query to `factory` carries, and its answers must carry back."""
    return hashlib.sha256(salt + factory.encode()).hexdigest()


# The `method` Vac's client adds beside message_type, for factories older still.
_METHOD_OF = {MACHINES_QUERY: "machines", FACTORY_QUERY: "factories"}


def query(kind: str, space: str, query_cookie: str, daemon_version: str) -> bytes:
    """A query of `kind` as Vac's client sends it (machines and factory queries also name their `method`)."""
    message = {"message_type": kind, "vac_version": daemon_version, "daemon_version": daemon_version,
               "vacquery_version": f"VacQuery {VACQUERY_VERSION}", "space": space, "cookie": query_cookie}
    if kind in _METHOD_OF:
        message["method"] = _METHOD_OF[kind]
    return dumps(message)


def machinetypes_query(space: str, query_cookie: str, daemon_version: str) -> bytes:
    return query(MACHINETYPES_QUERY, space, query_cookie, daemon_version)


def parse_query(data: bytes) -> Query | None:
    """A query of any type, or None for anything that is not one.

    Vac's older clients name the query by `method` only ("machinetypes",
    "machines", "factories"), newer ones by `message_type`, some by both:
    message_type, when it names a query, is what is asked.
    """
    message = loads(data)
    if message is None:
        return None
    kind, space, query_cookie = (message.get(k) for k in ("message_type", "space", "cookie"))
    if not (short_text(kind) and kind.endswith("_query")):
        method = message.get("method")
        kind = LEGACY_METHODS.get(method) if isinstance(method, str) else None
    if kind is None or not (short_text(space) and short_text(query_cookie)):
        return None
    return Query(kind, space, query_cookie)


def site_of(space: str, gocdb_sitename: str | None) -> str:
    """The site Vac names in its answers: the GOCDB name, else the space without its first label."""
    if gocdb_sitename:
        return gocdb_sitename
    return space.split(".", 1)[1] if "." in space else space


def reply_fields(message_type: str, *, space: str, site: str, query_cookie: str, daemon_version: str,
                 now: int) -> dict:
    """What every answer repeats, whatever its type (the factory comes with the status)."""
    return {"message_type": message_type, "vac_version": daemon_version, "daemon_version": daemon_version,
            "vacquery_version": f"VacQuery {VACQUERY_VERSION}", "cookie": query_cookie, "space": space,
            "site": clip(site), "time_sent": now}


def machinetype_statuses(statuses: list[MachinetypeStatus], *, space: str, site: str, query_cookie: str,
                         daemon_version: str, now: int) -> list[bytes]:
    """The answer to a machinetypes_query: one datagram per machinetype."""
    out = []
    for status in statuses:
        message = dataclasses.asdict(status)
        message.update(reply_fields(MACHINETYPE_STATUS, space=space, site=site, query_cookie=query_cookie,
                                    daemon_version=daemon_version, now=now))
        message.update({
            "num_machinetypes": len(statuses),
            # Vac's older name of the same figure.
            "running_cpus": status.running_processors,
            "shutdown_message": clip(status.shutdown_message),
            "shutdown_machine": clip(status.shutdown_machine), "fqan": clip(status.fqan)})
        # Vac leaves out what a machinetype does not have, rather than sending null.
        for key in _OMITTED_WHEN_NONE:
            if message[key] is None:
                del message[key]
        out.append(dumps(message))
    return out


def parse_machinetype_status(data: bytes, space: str) -> tuple[str, MachinetypeStatus] | None:
    """(cookie, status) of a machinetype_status of `space`, or None for anything else.

    The caller checks the cookie against the one it sent to that factory.
    """
    answer = read_machinetype_status(data, space)
    return None if isinstance(answer, str) else answer


def read_machinetype_status(data: bytes, space: str) -> tuple[str, MachinetypeStatus] | str:
    """(cookie, status) of a machinetype_status of `space`, or why it is not one.

    Accepted as Vac sends it: counts as whole-number floats (Vac sums
    allocated_cpu as floats: "running_processors": 8.0), the deprecated
    running_cpus when running_processors is missing, and missing optional
    keys (counts of what runs default to 0, shutdown_* to None). Every field
    present is typed and bounded; one bad field rejects this datagram only.
    The reason starts with NOT_AN_ANSWER for datagrams of another type or space.
    """
    header = read_header(data, MACHINETYPE_STATUS, space)
    if isinstance(header, str):
        return header
    m, factory, answer_cookie = header
    machinetype = m.get("machinetype")
    if not is_machinetype(machinetype):
        return "machinetype is not a machinetype name"
    num_machinetypes = as_count(m.get("num_machinetypes"))
    if num_machinetypes is None or not 1 <= num_machinetypes <= MAX_MACHINETYPES:
        return f"num_machinetypes is not a count from 1 to {MAX_MACHINETYPES}"
    counts = {}
    for key, spellings in _RUNNING_COUNTS.items():
        values = [(k, as_count(m[k])) for k in spellings if m.get(k) is not None]
        for spelling, value in values:
            if value is None:
                return f"{spelling} is not a whole number from 0 to {MAX_COUNT}"
        counts[key] = values[0][1] if values else 0
    hs06 = as_number(m.get("running_hs06"), MAX_HS06)
    if hs06 is None:
        return f"running_hs06 is not a number from 0 to {MAX_HS06:g}"
    message, machine = m.get("shutdown_message"), m.get("shutdown_machine")
    if not (optional_text(message) and optional_text(machine)):
        return "shutdown_message or shutdown_machine is not text"
    time_ = m.get("shutdown_time")
    if time_ is not None:
        time_ = as_count(time_)
        if time_ is None:
            return "shutdown_time is not a time"
    for key in _OPTIONAL_COUNTS:
        if m.get(key) is not None:
            counts[key] = as_count(m[key])
            if counts[key] is None:
                return f"{key} is not a whole number from 0 to {MAX_COUNT}"
    if not optional_text(m.get("fqan")):
        return "fqan is not text"
    return answer_cookie, MachinetypeStatus(
        factory=factory, machinetype=machinetype, num_machinetypes=num_machinetypes, running_hs06=hs06,
        shutdown_message=message, shutdown_time=time_, shutdown_machine=machine, fqan=m.get("fqan"), **counts)


def read_header(data: bytes, message_type: str, space: str) -> tuple[dict, str, str] | str:
    """(message, factory, cookie) of an answer of `message_type` in `space`, or why it is not one.

    The reason starts with NOT_AN_ANSWER for datagrams of another type or space.
    """
    m = loads(data)
    if m is None:
        return f"{NOT_AN_ANSWER}: not a JSON object of at most {MAX_DATAGRAM} bytes"
    if m.get("message_type") != message_type or m.get("space") != space:
        return f"{NOT_AN_ANSWER}: another message type or space"
    factory, answer_cookie = m.get("factory"), m.get("cookie")
    if not (isinstance(factory, str) and _NAME.fullmatch(factory)):
        return "factory is not a host name"
    if not short_text(answer_cookie):
        return "cookie is missing or too long"
    return m, factory, answer_cookie


def is_machinetype(value) -> bool:
    return isinstance(value, str) and _MACHINETYPE.fullmatch(value) is not None


def as_number(value, maximum: float) -> float | None:
    """A finite number from 0 to `maximum` (int or float, never a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value <= maximum else None


@functools.cache
def _field_checks(cls):
    """{field: (its type, a check of a value)} of a status class, made once: resolving the
    annotations, and walking a union's options, on every check was most of its cost."""
    return {name: (kind, _check_of(kind)) for name, kind in typing.get_type_hints(cls).items()}


def from_plain(cls, mapping):
    """The status dataclass `cls` rebuilt from its plain map, every field typed and bounded; ValueError if not.

    How the vacquery child and the root check each other's statuses on decode.
    """
    if not isinstance(mapping, dict):
        raise ValueError(f"{cls.__name__}: a {type(mapping).__name__}, not a map")
    checks = _field_checks(cls)
    if mapping.keys() != checks.keys():
        raise ValueError(f"{cls.__name__}: fields {sorted(map(str, mapping))[:40]} do not match {sorted(checks)}")
    for name, (kind, check) in checks.items():
        if not check(mapping[name]):
            raise ValueError(f"{cls.__name__}.{name}: {mapping[name]!r:.80} is not {kind}")
    return cls(**mapping)


def as_plain(status) -> dict:
    """A status dataclass as its plain map (from_plain's inverse): its fields are plain values, so no copy is made."""
    return {name: getattr(status, name) for name in _field_checks(type(status))}


def _check_of(kind):
    """A function telling whether a value fits `kind`: None, int, float, str or a union of them."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = tuple(_check_of(option) for option in typing.get_args(kind))
        return lambda value: any(check(value) for check in options)
    if kind is type(None):
        return lambda value: value is None
    if kind is int:
        return lambda value: as_count(value) is not None and isinstance(value, int)
    if kind is float:
        return lambda value: as_number(value, MAX_COUNT) is not None
    if kind is str:
        return lambda value: isinstance(value, str) and len(value) <= 4 * MAX_TEXT
    return lambda value: False


def dumps(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"a VacQuery datagram of {len(data)} bytes is over {MAX_DATAGRAM}")
    return data


def loads(data: bytes) -> dict | None:
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


def short_text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def optional_text(value) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 4 * MAX_TEXT)


def as_count(value) -> int | None:
    """A whole number from 0 to MAX_COUNT, given as an int or a whole-number float (as Vac sums them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def clip(text: str | None, longest: int = MAX_TEXT) -> str | None:
    return None if text is None else text[:longest]
