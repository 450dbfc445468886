"""Typed messages between the root and its children.

On the wire a message is the msgpack array ``[version, tag, {field: value}]``.
encode() and decode() are pure and check the version, the tag and every
field's type, so a confused or hostile peer yields an error, never a crash.
"""

import dataclasses
import types
import typing

from vac.ipc.framing import IpcError

PROTOCOL_VERSION = 1


class MalformedMessage(IpcError):
    """A frame that decodes but is not a valid message of this protocol."""


class UnknownMessage(MalformedMessage):
    """A well-formed message whose tag this side does not know."""


_REGISTRY = {}


def message(tag):
    """Class decorator: register a frozen dataclass as message `tag`."""

    def register(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        if tag in _REGISTRY:
            raise ValueError(f"message tag {tag!r} registered twice")
        cls.TAG = tag
        hints = typing.get_type_hints(cls)
        cls._FIELD_TYPES = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        _REGISTRY[tag] = cls
        return cls

    return register


def encode(msg):
    """Return the plain wire object of message `msg`."""
    fields = {name: getattr(msg, name) for name in msg._FIELD_TYPES}
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
    for name, kind in expected.items():
        if not _conforms(fields[name], kind):
            raise MalformedMessage(f"{tag}.{name}: {fields[name]!r} is not {kind}")
    return cls(**fields)


def _conforms(value, kind):
    """True if `value` fits the (simple) annotation `kind`."""
    origin = typing.get_origin(kind)
    # `int | None` is a types.UnionType, `Optional[int]` a typing.Union.
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, option) for option in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (dict, list):
        return isinstance(value, origin)
    return isinstance(value, kind)


# Child to root.

@message("ready")
class Ready:
    """The child finished initialising; counts as its first heartbeat."""
    child_id: str
    pid: int


@message("heartbeat")
class Heartbeat:
    """The child's main loop is alive."""
    child_id: str
    seq: int


@message("state")
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


@message("end_machine")
class EndMachine:
    """Root to slot: end the running machine; `code` and `text` go to shutdown_message."""
    uuid: str
    code: int
    text: str


@message("lower_shutdown")
class LowerShutdown:
    """Root to slot: a global shutdown_time lowers the running machine's shutdown time."""
    uuid: str
    shutdown_at: int


@message("machine_finished")
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


@message("local_status")
class LocalStatus:
    """Root to vacquery: what this factory runs per machinetype, [MachinetypeStatus as a map]."""
    statuses: list


@message("space_status")
class SpaceStatus:
    """Vacquery to root: what the other factories answered in one round.

    factories: {name: {"answered_at": unix time, "machinetypes": {machinetype:
    {"running_hs06", "running_machines", "running_processors"}}}}; polled: every name asked.
    """
    factories: dict
    polled: list


@message("pipe_list")
class PipeList:
    """Root to fetcher: the Vacuum Pipes to keep fetched, [{prefix, url}]."""
    pipes: list


@message("pipe_document")
class PipeDocument:
    """Fetcher to root: the document to use for a pipe (None if there is none)."""
    prefix: str
    url: str
    document: bytes | None
    fetched_at: float | None
    stale: bool
    error: str | None


# Root and the reaper.

@message("live_set")
class LiveSet:
    """Root to reaper: every slot's state and machine, [{slot, state, uuid, settled}], as the
    root knew them at wall-clock time `made_at` (reaper_rules: nothing younger is judged on it)."""
    made_at: float
    slots: list


# Root and the metrics exporter.

@message("metrics_snapshot")
class MetricsSnapshot:
    """Root to metrics exporter: the factory's state as plain data (supervisor/metrics_snapshot.py)."""
    snapshot: dict
