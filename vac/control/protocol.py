"""The control protocol: length-prefixed msgpack maps over a Unix stream socket.

Request: {"v": 1, "id": int, "command": str, "args": {...}}.
Reply:   {"v": 1, "id": int, "ok": true, "result": ...}
      or {"v": 1, "id": int, "ok": false, "error": str, "code": str}.
A `watch` request is answered once, then by {"v": 1, "id": int, "event": {...}}
frames until the client disconnects. Encoding and checking are pure.
"""

from vac.ipc.framing import encode_frame

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 4 * 1024 * 1024

# Error codes clients can act on.
DENIED = "denied"
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
FAILED = "failed"
TOO_LARGE = "too_large"        # the reply would exceed MAX_REPLY_BYTES
FELL_BEHIND = "fell_behind"    # a watcher that left too many events unread, dropped


class BadRequest(ValueError):
    """A request that is not of the protocol's form; the text says why."""


def check_request(obj):
    """(id, command, args) of a decoded request, or BadRequest."""
    if not isinstance(obj, dict):
        raise BadRequest(f"a request is a map, not {type(obj).__name__}")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise BadRequest(f"protocol version {obj.get('v')!r}, expected {VERSION}")
    request_id = obj.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise BadRequest("id must be an integer")
    command = obj.get("command")
    if not isinstance(command, str) or not command:
        raise BadRequest("command must be a non-empty string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("args must be a map")
    extra = set(obj) - {"v", "id", "command", "args"}
    if extra:
        raise BadRequest(f"unknown request fields: {sorted(map(str, extra))}")
    return request_id, command, args


def request_frame(request_id, command, args=None):
    return encode_frame({"v": VERSION, "id": request_id, "command": command, "args": args or {}},
                        MAX_REQUEST_BYTES)


def reply_frame(request_id, result):
    return encode_frame({"v": VERSION, "id": request_id, "ok": True, "result": result},
                        MAX_REPLY_BYTES)


def error_frame(request_id, code, text):
    return encode_frame({"v": VERSION, "id": request_id, "ok": False, "code": code,
                         "error": text}, MAX_REPLY_BYTES)


def event_frame(request_id, event):
    return encode_frame({"v": VERSION, "id": request_id, "event": event}, MAX_REPLY_BYTES)


def check_args(schema, args):
    """The args with defaults filled in, or BadRequest; schema: name -> (types, required, default)."""
    unknown = set(args) - set(schema)
    if unknown:
        raise BadRequest(f"unknown arguments: {sorted(map(str, unknown))}")
    checked = {}
    for name, (types, required, default) in schema.items():
        if name not in args:
            if required:
                raise BadRequest(f"missing argument {name!r}")
            checked[name] = default
            continue
        value = args[name]
        if isinstance(value, bool) and bool not in types:
            raise BadRequest(f"{name} must be {_names(types)}, not a boolean")
        if not isinstance(value, types):
            raise BadRequest(f"{name} must be {_names(types)}, not {type(value).__name__}")
        checked[name] = value
    return checked


def _names(types):
    return " or ".join(t.__name__ for t in types)
