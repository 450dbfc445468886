"""What `vac` prints: each control command's result as text for people, or as JSON (pure).

Every function takes the result and the wall-clock `now`; none reads the clock.
"""

import datetime
import json
import re

from vac.proctitle import format_elapsed
from vac.vocabulary.labels import shown_id

LAST_WIDTH = 48            # the slots table's LAST column; `vac slot N` shows it whole
EVENT_VALUE_WIDTH = 100    # one event field in `vac watch`
# Worker states in which the slot's own report is out of date: the worker is not there.
WORKER_ABSENT = ("backoff", "fatal", "stopped", "exited", "stopping")


# C0 and C1 controls and DEL, and the invisible marks that reorder text
# (bidirectional overrides and isolates): none of them reaches a terminal raw.
_UNSAFE_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# Building blocks.

def terminal_safe(text):
    """`text` with every control character but newline written as an escape (\\x1b, \\u202e).

    Much of what vac shows came from outside (a pipe server's reason phrase, a
    machine's shutdown_message): an escape sequence in it must not act on the
    operator's terminal.
    """
    return _UNSAFE_RE.sub(_escape, text)


def _escape(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def table(headers, rows):
    """Rows under headers, columns left-aligned and separated by two spaces."""
    cells = [list(map(str, headers))] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def block(pairs):
    """'key:  value' lines with the values aligned."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}}  {_cell(value)}" for key, value in pairs)


def relative(at, now):
    """'in 2m', 'in 45s', '1h05m ago' for a wall-clock time; '-' for none."""
    if at is None:
        return "-"
    seconds = int(round(at - now))
    amount = _rough(abs(seconds))
    return "now" if amount == "0s" else f"in {amount}" if seconds > 0 else f"{amount} ago"


def duration(seconds):
    """H:MM:SS, or '-' for none."""
    return "-" if seconds is None else format_elapsed(seconds)


def timestamp(at, tz=None):
    """A wall-clock time as YYYY-MM-DD HH:MM:SS in `tz` (default local), or '-'."""
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S")


def to_json(result, lines=False):
    """JSON for tooling: indented, or one compact line each with lines=True."""
    if lines:
        return json.dumps(result, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return json.dumps(result, sort_keys=True, default=_jsonable, indent=2)


# The reading commands.

def status(result, now):
    """The `status` block."""
    counts, processors = result["slots"], result["processors"]
    state = result["state"] + (" DEGRADED" if result["degraded"] else "")
    pairs = [
        ("state", f"{state}, up {duration(result.get('uptime_seconds'))}"),
        ("slots", result["summary"]),
        ("processors", f"{processors['used']} of {processors['total']} in use"),
        ("draining", "yes" if result["draining"] else "no"),
        ("machinetypes", ", ".join(_machinetype_brief(n, m, now)
                                   for n, m in sorted(result["machinetypes"].items())) or "none"),
        ("helpers", ", ".join(f"{n} {h['state']}" for n, h in sorted(result["helpers"].items()))
         or "none"),
        ("pipes", "; ".join(_pipe_brief(p, pipe, now)
                            for p, pipe in sorted(result["pipes"].items())) or "none"),
    ]
    if counts.get("fatal"):
        pairs.append(("attention", f"{counts['fatal']} fatal slot(s): see vac slots, "
                                   "then vac reset-slot N"))
    if result.get("last_refusal") and not counts.get("running"):
        pairs.append(("not starting", result["last_refusal"]))
    problems = result.get("config_problems") or []
    total = result.get("config_problems_total", len(problems))
    pairs.append(("config", f"{total} problem(s), running configuration kept"
                  if problems else "ok"))
    if result.get("restart_needed"):
        pairs.append(("restart needed for", ", ".join(result["restart_needed"])))
    return "\n".join([block(pairs)] + [f"  {problem}" for problem in problems])


def slots(result, now):
    """The slots table."""
    rows = [[s["slot"], slot_state(s), s["machinetype"] or "-", (s["machine"] or "-")[:8],
             duration(s["elapsed_seconds"]),
             duration(s["shutdown_at"] - now) if s["shutdown_at"] else "-",
             s["restarts"], _shorten(last(s), LAST_WIDTH)]
            for s in result]
    return table(["SLOT", "STATE", "MACHINETYPE", "MACHINE", "ELAPSED", "WALL-LEFT",
                  "RESTARTS", "LAST"], rows)


def slot(result, now, tz=None):
    """One slot in detail."""
    worker = result["worker"]
    outcome = result.get("last_outcome")
    started, shutdown = result["started_at"], result["shutdown_at"]
    pairs = [
        ("slot", result["slot"]),
        ("state", slot_state(result)),
        ("worker", f"{worker['state']}, pid {worker['pid'] or '-'}, {worker['starts']} start(s), "
                   f"{worker['failed_starts']} failed, last exit {worker['last_exit'] or '-'}"),
        ("restarts", result["restarts"]),
        ("machine", result["machine"] or "-"),
        ("machinetype", result["machinetype"] or "-"),
        ("processors", result["processors"] or "-"),
        ("container", shown_id(result["container_id"] or "-")),
        ("started", "-" if started is None else
         f"{timestamp(started, tz)} ({duration(result['elapsed_seconds'])} ago)"),
        ("shutdown", "-" if shutdown is None else
         f"{timestamp(shutdown, tz)} ({duration(shutdown - now)} left)"),
        ("error", result["error"] or "-"),
        ("last machine", "-" if not outcome else
         f"{outcome['code']} {outcome['text']} ({outcome['machinetype']} "
         f"{outcome['machine'][:8]}, ended {relative(outcome['ended_at'], now)})"),
    ]
    return block(pairs)


def machinetypes(result, now):
    """The machinetypes table."""
    rows = [[name, _number(mt["target_share"]), mt["running"], mt["processors"],
             relative(mt["backoff_until"], now), "yes" if mt["paused"] else "no",
             mt["pipe"] or "-"]
            for name, mt in sorted(result.items())]
    return table(["NAME", "SHARE", "RUNNING", "PROCS", "BACKOFF", "PAUSED", "PIPE"], rows)


def commands(result, now=None):
    """The daemon's commands, for `vac help`."""
    rows = [[name, " ".join(c["args"]) or "-", "yes" if c["mutating"] else "no", c["help"]]
            for name, c in sorted(result.items())]
    return table(["COMMAND", "ARGS", "CHANGES", "WHAT IT DOES"], rows)


def slot_state(entry):
    """What a slot is doing: its worker's state when the worker is absent, else its own."""
    worker_state = (entry.get("worker") or {}).get("state")
    return worker_state if worker_state in WORKER_ABSENT else entry["state"]


def last(entry):
    """A slot's current error, else its last machine's shutdown code and text, else '-'."""
    if entry.get("error"):
        return f"error: {entry['error']}"
    outcome = entry.get("last_outcome")
    return f"{outcome['code']} {outcome['text']}" if outcome else "-"


# The changing commands.

def reply(command, result, now=None):
    """One line saying what a changing command did."""
    if command == "drain":
        deadline = result.get("deadline")
        return "draining: no new machines start" + (
            f"; running machines end in {duration(deadline)}" if deadline is not None else "")
    if command == "undrain":
        return ("still draining: draining = yes in the configuration" if result["draining"]
                else "not draining: new machines start again")
    if command == "stop-machine":
        return (f"slot {result['slot']}: machine {result['machine']} asked to stop "
                f"({result['reason']})")
    if command == "reset-slot":
        return f"slot {result['slot']} reset: its worker is {result['state']}"
    if command in ("pause", "resume"):
        return "paused machinetypes: " + (", ".join(result["paused"]) or "none")
    if command == "reload":
        return "reload requested: see vac status for the outcome"
    if command == "shutdown":
        return "vacd is stopping; running containers are left running"
    return to_json(result)


# Events.

def event(item, tz=None):
    """One `vac watch` line: time, event, child, then the other fields as key=value."""
    fields = dict(item)
    at = fields.pop("t", None)
    name = fields.pop("event", "?")
    words = [datetime.datetime.fromtimestamp(at, tz).strftime("%H:%M:%S") if at else "--:--:--",
             name]
    if "child" in fields:
        words.append(str(fields.pop("child")))
    if name == "state":
        words.append(str(fields.pop("state", "?")))
        fields = _state_detail(fields.pop("detail", None) or {}) | fields
    words += [f"{key}={_event_value(value)}" for key, value in sorted(fields.items())
              if value is not None]
    return " ".join(words)


def _state_detail(detail):
    """A slot's report, flattened to what a person follows: machinetype, machine, error."""
    flat = {key: value for key, value in detail.items() if key not in ("machine", "slot")}
    machine = detail.get("machine")
    if isinstance(machine, dict):
        flat["machinetype"] = machine.get("machinetype")
        flat["machine"] = (machine.get("uuid") or "")[:8] or None
    return flat


def _event_value(value):
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = value if isinstance(value, str) else to_json(value, lines=True)
    if isinstance(value, str) and (not value or any(c.isspace() or c == "=" for c in value)):
        text = json.dumps(value)
    return _shorten(text, EVENT_VALUE_WIDTH)


# Pieces.

def _machinetype_brief(name, mt, now):
    notes = [f"{mt['running']} running"]
    if mt["backoff_until"] is not None:
        notes.append(f"backoff ends {relative(mt['backoff_until'], now)}")
    if mt["paused"]:
        notes.append("paused")
    return f"{name} ({', '.join(notes)})"


def _pipe_brief(prefix, pipe, now):
    if pipe["fetched_at"] is None:
        return f"{prefix} no document: {pipe['error']}"
    state = f"stale ({pipe['error']})" if pipe["stale"] else "fresh"
    return (f"{prefix} {state}, fetched {relative(pipe['fetched_at'], now)}, "
            f"{len(pipe['machinetypes'])} machinetype(s)")


def _rough(seconds):
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value):
    return "-" if value is None else " ".join(str(value).split())


def _shorten(text, width):
    return text if len(text) <= width else text[:width - 1] + "…"


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
