"""`vac space` and `vac machines [--space]`: the space as vacd's vacquery child last polled it, or polls it now.

A fresh poll is asked of vacd (space_poll) and waited for: `space` (or
space_machines) is read again until it carries the poll's request number,
within the time vacd says the poll can take. The rendering is pure.
"""

from __future__ import annotations

import time

from vac.cli_render import relative, table

# How often a fresh poll's outcome is looked for, and the slack on vacd's own estimate.
POLL_LOOK_SECONDS = 0.25
POLL_SLACK_SECONDS = 2.0
MESSAGE_WIDTH = 40


def add_parsers(sub, json_flag):
    space = sub.add_parser("space", parents=[json_flag], help="each factory of the space: answer, use, last abort",
                           description="One line per factory of the space, this one first, and the factories "
                                       "that did not answer with why (as the last poll found them).")
    space.add_argument("--fresh", action="store_true",
                       help="poll the space now and wait for it (at most a few udp_timeout_seconds)")
    machines = sub.add_parser("machines", parents=[json_flag], help="this factory's machines, or the space's",
                              description="One line per slot, as VacQuery's machine_status tells it.")
    machines.add_argument("--space", action="store_true",
                          help="every machine of the space: polls the space for its machines now")
    machines.add_argument("--cached", action="store_true",
                          help="with --space: show the last poll for machines, without polling")


def fetch(client, command, *, fresh, machines=False, clock=time.monotonic, sleep=time.sleep):
    """The result of `command`, after a fresh poll if asked; (result, why it is not fresh or None)."""
    if not fresh:
        return client.request(command), None
    asked = client.request("space_poll", machines=machines)
    deadline = clock() + asked["wait_seconds"] + POLL_SLACK_SECONDS
    while True:
        result = client.request(command)
        if (result["poll"].get("request_done") or 0) >= asked["request"]:
            return result, None
        if clock() >= deadline:
            return result, (f"vacquery did not finish the poll within {asked['wait_seconds'] + POLL_SLACK_SECONDS:g}"
                            " s: this is what the last one found")
        sleep(POLL_LOOK_SECONDS)


def render_space(result, now):
    """The `vac space` table, then the factories that did not answer."""
    rows = []
    for row in result["factories"]:
        rows.append([row["factory"] + (" *" if row["this_factory"] else ""),
                     _age(row["age_seconds"]), f"{row['processors_used']}/{_or_dash(row['processors_total'])}",
                     f"{row['hs06']:g}",
                     " ".join(f"{name}={count}" for name, count in row["machines"].items()) or "-",
                     _abort(row["last_abort"], now)])
    poll = result["poll"]
    head = (f"space {result['space']}: " + (f"polled {relative(poll['ended_at'], now)}"
                                           if poll.get("ended_at") else "not polled yet") + "; * is this factory")
    lines = [head, table(["FACTORY", "AGE", "PROCESSORS", "HS06", "MACHINES", "LAST ABORT"], rows)]
    if result["silent"]:
        lines.append("not answering:")
        for quiet in result["silent"]:
            last = quiet["last_answered_at"]
            since = "" if last is None else (
                f"; last answer {relative(last, now)}"
                + (" (still counted)" if quiet["still_counted"] else " (no longer counted)"))
            lines.append(f"  {quiet['factory']}: {quiet['reason']}{since}")
    return "\n".join(lines)


def render_machines(result, now):
    """The machines table: one line per slot, of this factory or of every factory that answered."""
    machines = result["machines"] if isinstance(result, dict) else result
    rows = [[m["factory"], m["machine"], m["state"], m["machinetype"] or "-", _or_dash(m["num_processors"]),
             f"{m['cpu_percentage']:g}", relative(m["started_time"], now), relative(m["heartbeat_time"], now),
             _shorten(m["shutdown_message"] or "-", MESSAGE_WIDTH)]
            for m in machines]
    lines = [table(["FACTORY", "MACHINE", "STATE", "MACHINETYPE", "PROCS", "CPU%", "STARTED", "HEARTBEAT",
                    "SHUTDOWN MESSAGE"], rows)]
    if isinstance(result, dict):
        if result["machines_left_out"]:
            lines.append(f"and {result['machines_left_out']} more machines not shown (a poll keeps at most "
                         "2048 of other factories)")
        lines.extend(f"not answering: {quiet['factory']}: {quiet['reason']}" for quiet in result["silent"])
    return "\n".join(lines)


def _abort(abort, now):
    if abort is None:
        return "-"
    text = _shorten(abort["message"], MESSAGE_WIDTH)
    return f"{abort['machinetype']} {text} ({relative(abort['time'], now)})"


def _age(seconds):
    return "-" if seconds is None else f"{int(seconds)}s"


def _or_dash(value):
    return "-" if value is None else value


def _shorten(text, width):
    return text if len(text) <= width else text[:width - 1] + "…"
