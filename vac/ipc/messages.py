"""Typed messages between the root and its children.

On the wire a message is the msgpack array ``[version, tag, {field: value}]``.
encode() and decode() are pure and check the version, the tag, every field's
type and its bounds (string lengths, list and map sizes, nesting, plain data
only), so a confused or hostile peer yields an error, never a crash, and a
sender learns of a message it cannot send before anything is written.
"""

import dataclasses
import functools
import math
import types
import typing

from vac.config import plain
from vac.config.values import BadValue
from vac.ipc.framing import IpcError, Unencodable
from vac.space import protocol, report
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus

PROTOCOL_VERSION = 1

# What any field may hold unless its message declares tighter bounds: room for
# everything vac sends (a configuration value is at most 64 Ki characters,
# config.values.MAX_VALUE_CHARS), small enough that no message makes the root walk or keep more than that.
MAX_TEXT_CHARS = 64 * 1024      # characters of one string, bytes of one binary value
MAX_ITEMS = 64 * 1024           # entries of one list or map
MAX_DEPTH = 8                   # lists and maps nested inside one field
MAX_ID_CHARS = 64               # child ids, state names, machine uuids
# What msgpack carries: anything beyond is refused before it reaches the encoder.
INT_RANGE = (-2**63, 2**64 - 1)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The limits of one field: longest string or bytes, largest list or map, deepest nesting."""
    max_chars: int = MAX_TEXT_CHARS
    max_items: int = MAX_ITEMS
    max_depth: int = MAX_DEPTH


DEFAULT_BOUNDS = Bounds()
ID = Bounds(max_chars=MAX_ID_CHARS)


class MalformedMessage(IpcError):
    """A frame that decodes but is not a valid message of this protocol."""


class UnknownMessage(MalformedMessage):
    """A well-formed message whose tag this side does not know."""


_REGISTRY = {}


def message(tag, **bounds):
    """Class decorator: register a frozen dataclass as message `tag`.

    `bounds` maps field names to Bounds; other fields get DEFAULT_BOUNDS.
    """

    def register(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        if tag in _REGISTRY:
            raise ValueError(f"message tag {tag!r} registered twice")
        cls.TAG = tag
        hints = typing.get_type_hints(cls)
        cls._FIELD_TYPES = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        unknown = set(bounds) - set(cls._FIELD_TYPES)
        if unknown:
            raise ValueError(f"message {tag!r}: bounds for unknown fields {sorted(unknown)}")
        cls._FIELD_BOUNDS = {name: bounds.get(name, DEFAULT_BOUNDS) for name in cls._FIELD_TYPES}
        # Made here, when the module is imported (in the root, before it forks): a child that
        # made them on its first message would keep its own copies, in pages of its own.
        cls._FIELD_CHECKS = {name: _check_of(kind) for name, kind in cls._FIELD_TYPES.items()}
        _REGISTRY[tag] = cls
        return cls

    return register


def encode(msg):
    """Return the plain wire object of message `msg`, or raise Unencodable.

    The same checks as decode() run here, so a message the peer would refuse
    (and fail us for) is never sent: the sender gets the error instead.
    """
    fields = {name: getattr(msg, name) for name in msg._FIELD_TYPES}
    problem = _fields_problem(type(msg), fields)
    if problem is not None:
        raise Unencodable(f"{msg.TAG}.{problem}")
    return [PROTOCOL_VERSION, msg.TAG, fields]


def decode(obj):
    """Return the message the wire object `obj` carries, or raise."""
    if not isinstance(obj, list) or len(obj) != 3:
        raise MalformedMessage(f"expected [version, tag, fields], got {type(obj).__name__}")
    version, tag, fields = obj
    # True and 1.0 compare equal to 1, yet are not this protocol's version.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise MalformedMessage(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if not isinstance(tag, str) or not isinstance(fields, dict):
        raise MalformedMessage("tag must be a string and fields a map")
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise UnknownMessage(f"unknown message type {tag!r}")
    expected = cls._FIELD_TYPES
    if set(fields) != set(expected):
        raise MalformedMessage(
            f"{tag}: fields {sorted(map(str, fields))} do not match {sorted(expected)}")
    problem = _fields_problem(cls, fields)
    if problem is not None:
        raise MalformedMessage(f"{tag}.{problem}")
    return cls(**fields)


def _fields_problem(cls, fields):
    """'field: why' for the first field of `fields` that message `cls` refuses, or None."""
    for name, check in cls._FIELD_CHECKS.items():
        value = fields[name]
        if not check(value):
            return f"{name}: {_shown(value)} is not {cls._FIELD_TYPES[name]}"
        problem = _plain_problem(value, cls._FIELD_BOUNDS[name], 0)
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _plain_problem(value, bounds, depth):
    """Why `value` is not plain data within `bounds`, or None (pure, bounded recursion).

    Strings and maps of the exact types come first: the messages of a
    machine's life hold hundreds of them, in the root and in its slot.
    """
    kind = type(value)
    if kind is str:
        if len(value) > bounds.max_chars or not value.isascii():
            return _value_problem(value, bounds, depth)
        return None
    if kind is dict:
        if depth >= bounds.max_depth or len(value) > bounds.max_items:
            return _value_problem(value, bounds, depth)
        for key, item in value.items():
            if type(key) is not str or len(key) > bounds.max_chars or not key.isascii():
                problem = _value_problem(key, bounds, depth + 1, map_key=True)
                if problem is not None:
                    return problem
            problem = _plain_problem(item, bounds, depth + 1)
            if problem is not None:
                return problem
        return None
    return _value_problem(value, bounds, depth)


def _value_problem(value, bounds, depth, map_key=False):
    """_plain_problem for every kind of value; with map_key, `value` is a map's key."""
    if map_key and not isinstance(value, (str, bytes)):
        # The receiving side decodes with strict map keys: strings (or bytes) only.
        return f"a map key of type {type(value).__name__}"
    if value is None or isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            return f"integer {value} is beyond 64 bits"
        return None
    if isinstance(value, str):
        if len(value) > bounds.max_chars:
            return f"a string of {len(value)} characters (at most {bounds.max_chars})"
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError as error:
                # A lone surrogate: no UTF-8 spelling exists for it.
                return f"a string that is not valid Unicode ({error.reason} at {error.start})"
        return None
    if isinstance(value, bytes):
        if len(value) > bounds.max_chars:
            return f"{len(value)} bytes (at most {bounds.max_chars})"
        return None
    if not isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__}, which is not plain data"
    if depth >= bounds.max_depth:
        return f"lists and maps nested deeper than {bounds.max_depth}"
    if len(value) > bounds.max_items:
        return f"a {type(value).__name__} of {len(value)} entries (at most {bounds.max_items})"
    if isinstance(value, dict):
        for key, item in value.items():
            # The receiving side decodes with strict map keys: strings (or bytes) only.
            if not isinstance(key, (str, bytes)):
                return f"a map key of type {type(key).__name__}"
            problem = (_plain_problem(key, bounds, depth + 1)
                       or _plain_problem(item, bounds, depth + 1))
            if problem is not None:
                return problem
        return None
    for item in value:
        problem = _plain_problem(item, bounds, depth + 1)
        if problem is not None:
            return problem
    return None


def _shown(value):
    """A short repr for an error message: a hostile value must not flood the log."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"


def _conforms(value, kind):
    """True if `value` fits the (simple) annotation `kind`."""
    return _check_of(kind)(value)


@functools.cache
def _check_of(kind):
    """A function telling whether a value fits `kind`, made once per annotation: looking into
    the annotation on every message was most of what an idle slot did for its heartbeat."""
    origin = typing.get_origin(kind)
    # `int | None` is a types.UnionType, `Optional[int]` a typing.Union.
    if origin in (typing.Union, types.UnionType):
        options = tuple(_check_of(option) for option in typing.get_args(kind))
        return lambda value: any(check(value) for check in options)
    if kind is type(None):
        return lambda value: value is None
    if kind is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if origin in (dict, list):
        return lambda value: isinstance(value, origin)
    return lambda value: isinstance(value, kind)


# Child to root.

@message("ready", child_id=ID)
class Ready:
    """The child finished initialising; counts as its first heartbeat."""
    child_id: str
    pid: int


@message("heartbeat", child_id=ID, state=ID)
class Heartbeat:
    """The child's main loop is alive; a slot worker adds its state and when that must change.

    deadline is a time.monotonic() value (one clock for every process of the
    host, unmoved by clock steps); None when nothing is due (idle, or a helper).
    """
    child_id: str
    seq: int
    state: str | None = None
    deadline: float | None = None

    def __post_init__(self):
        # The root does arithmetic with it: no NaN or infinity may reach its timers.
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise MalformedMessage(f"heartbeat.deadline: {self.deadline!r} is not a finite time")


@message("state", child_id=ID, state=ID)
class StateReport:
    """A change in what the child does: state name, free text, details."""
    child_id: str
    state: str
    detail: dict


# Root to child.

@message("stop")
class Stop:
    """Finish what is safe to finish and exit 0."""
    reason: str


# Root and slot workers: placing and ending machines.

@message("place")
class Place:
    """Root to slot: start this machine (uuid chosen by the root, all terms plain data)."""
    machine: dict


@message("end_machine", uuid=ID)
class EndMachine:
    """Root to slot: end the running machine; `code` and `text` go to shutdown_message."""
    uuid: str
    code: int
    text: str


@message("lower_shutdown", uuid=ID)
class LowerShutdown:
    """Root to slot: a global shutdown_time lowers the running machine's shutdown time."""
    uuid: str
    shutdown_at: int


@message("machine_finished", uuid=ID)
class MachineFinished:
    """Slot to root: a machine ended; its outcome feeds the scheduler's backoff."""
    uuid: str
    machinetype: str
    started_at: float
    ended_at: float
    code: int | None
    text: str
    processors: int
    cpu_seconds: float


# Root and the pipe fetcher.

@message("repositories")
class Repositories:
    """Root to keeper: the CernVM-FS repositories the machinetypes need now, [name]."""
    names: list


# Most VacMon destinations vacquery sends to (Vac's vacmon_hostport lists one or two).
MAX_VACMONS = 16


@message("local_status")
class LocalStatus:
    """Root to vacquery: what this factory answers the space with, as of `made_at` (its wall clock).

    statuses: [MachinetypeStatus as a map], one per machinetype; machines:
    [MachineStatus as a map], one per slot (at most the answer's cap);
    factory: FactoryStatus as a map, without the host's figures (vacquery
    reads those); vacmon: the "host:port" destinations of VacMon.
    """
    statuses: list
    machines: list
    factory: dict
    vacmon: list
    made_at: float

    def __post_init__(self):
        # vacquery answers other factories with these: each is rebuilt field by
        # field, so a status the root could not have meant fails here, not in a datagram.
        try:
            if len(self.statuses) > protocol.MAX_MACHINETYPES or len(self.machines) > protocol.MAX_ANSWER_DATAGRAMS:
                raise ValueError(f"{len(self.statuses)} machinetypes and {len(self.machines)} machines, more "
                                 f"than {protocol.MAX_MACHINETYPES} and {protocol.MAX_ANSWER_DATAGRAMS}")
            for status in self.statuses:
                protocol.from_plain(protocol.MachinetypeStatus, status)
            for status in self.machines:
                protocol.from_plain(MachineStatus, status)
            protocol.from_plain(FactoryStatus, self.factory)
            if len(self.vacmon) > MAX_VACMONS or not all(
                    isinstance(hostport, str) and 0 < len(hostport) <= 260 for hostport in self.vacmon):
                raise ValueError(f"vacmon is not a list of at most {MAX_VACMONS} host:port texts")
            if not math.isfinite(self.made_at):
                raise ValueError("made_at is not a finite time")
        except ValueError as error:
            raise MalformedMessage(f"local_status: {error}") from None


@message("space_status")
class SpaceStatus:
    """Vacquery to root: what the other factories answered in one poll (vac/space/report.py).

    factories, silent, machines, machines_left_out: as report.py gives them;
    polled: every name asked; request: the latest operator's request
    (SpaceRequest) this poll answers, None for a poll on vacquery's own
    schedule; started_at, ended_at: the poll's wall-clock times.
    """
    factories: dict
    polled: list
    silent: dict = dataclasses.field(default_factory=dict)
    machines: dict = dataclasses.field(default_factory=dict)
    machines_left_out: int = 0
    request: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0

    def __post_init__(self):
        # The root schedules with these figures and shows them to operators.
        try:
            report.check(self.factories, self.silent, self.machines, self.machines_left_out)
            if len(self.polled) > report.MAX_FACTORIES or not all(
                    isinstance(name, str) and 0 < len(name) <= report.MAX_NAME for name in self.polled):
                raise ValueError("polled is not a list of factory names")
            if not (math.isfinite(self.started_at) and math.isfinite(self.ended_at)):
                raise ValueError("the poll's times are not finite")
        except ValueError as error:
            raise MalformedMessage(f"space_status: {error}") from None


@message("space_request")
class SpaceRequest:
    """Root to vacquery: an operator asks for a fresh poll (with machines: every machine of the space too).

    `request` numbers it; the SpaceStatus of the poll that answers it carries the number back.
    """
    request: int
    machines: bool


@message("pipe_list")
class PipeList:
    """Root to fetcher: the Vacuum Pipes to keep fetched and what expanding them needs.

    pipes: [{"pipe": the [vacuum_pipe] section, "local": {name: options of a local
    [machinetype PREFIX-*]}}]; settings: the [settings]; all as config.plain.to_plain gives them.
    """
    pipes: list
    settings: dict


@message("pipe_machinetypes")
class PipeMachinetypes:
    """Fetcher to root: a pipe's machinetypes, expanded and checked by the fetcher.

    machinetypes: [to_plain(Machinetype)], rebuilt and checked again on decode;
    problems: the first problems as bounded text, problems_total: how many there were;
    usable: False when the pipe yields nothing (no document, or none usable as a whole).
    """
    prefix: str
    url: str
    usable: bool
    machinetypes: list
    problems: list
    problems_total: int
    fetched_at: float | None
    stale: bool
    error: str | None

    def __post_init__(self):
        # The fetcher parsed an untrusted document: the root takes nothing unchecked,
        # and a report that fails the check fails the fetcher, never the root.
        try:
            plain.machinetypes_from_plain(self.machinetypes, self.prefix)
            if len(self.problems) > plain.MAX_PROBLEMS_SENT:
                raise BadValue(f"{len(self.problems)} problems, more than {plain.MAX_PROBLEMS_SENT}")
            for text in (*self.problems, *([self.error] if self.error is not None else [])):
                plain.check_problem_text(text)
            if self.problems_total < len(self.problems):
                raise BadValue("problems_total is less than the problems sent")
        except BadValue as error:
            raise MalformedMessage(f"pipe_machinetypes for {self.prefix!r:.80}: {error}") from None


# Root and the reaper.

@message("live_set")
class LiveSet:
    """Root to reaper: every slot's state and machine, [{slot, state, uuid, settled}], as the
    root knew them at wall-clock time `made_at` (reaper_rules: nothing younger is judged on it)."""
    made_at: float
    slots: list


@message("apel_sync_site")
class ApelSyncSite:
    """Root to reaper, with each live set: the site whose daily APEL sync records the reaper writes, or None
    while outgoing records are off (gocdb_sitename and hs06_per_processor, which a reload may change)."""
    site: str | None


# Root and the metrics exporter.

@message("metrics_snapshot")
class MetricsSnapshot:
    """Root to metrics exporter: the factory's state as plain data (supervisor/metrics_snapshot.py)."""
    snapshot: dict
