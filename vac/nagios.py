"""`vac check`: a Nagios/NRPE verdict on the factory, decided purely from `status`.

Rules, worst first (every rule that holds is named in the text):
  CRITICAL  the factory is degraded (a helper gave up: nothing new starts);
            the configuration has problems (a reload was refused);
            a slot is FATAL (only `vac reset-slot` brings it back).
  WARNING   a slot worker waits in restart backoff; a helper is not running;
            vacd is stopping; the factory is draining; a pipe is stale (its
            refresh failed and the last good copy is in use), has no document,
            or is still unfetched 300 s after start; no machine has
            run for `idle_warning_seconds` while slots are idle and the factory
            is not draining (the text gives the last reason nothing started).
  UNKNOWN   vacd does not answer, refuses, or answers something unreadable.
Perfdata: slot counts by state, processors used (0..total) and total, and
running machines per machinetype (`running_NAME`).
"""

import re

from vac.proctitle import format_elapsed

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
IDLE_WARNING_SECONDS = 3600.0
# A pipe's first fetch may take a while (retries, a slow server) before it counts as missing.
PIPE_GRACE_SECONDS = 300.0
SLOT_STATES = ("slots", "running", "idle", "backoff", "fatal")
# The worker states `status` counts as backoff (root.counts): waiting to be started again.
BACKOFF_STATES = ("backoff", "stopped", "exited")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def evaluate(status, slots=None, now=0.0, idle_warning_seconds=IDLE_WARNING_SECONDS):
    """(Nagios exit code, one line of text with perfdata) for a `status` result.

    `slots` (the `slots` result, optional) names the slots concerned and tells
    when the last machine ended; `now` is the wall-clock time.
    """
    criticals, warnings = _criticals(status, slots), _warnings(status, slots, now,
                                                               idle_warning_seconds)
    code = CRITICAL if criticals else WARNING if warnings else OK
    text = "; ".join(criticals + warnings + [_summary(status)])
    return code, f"VAC {LABELS[code]} - {_clean(text)} | {perfdata(status)}"


def unknown(reason):
    """The verdict when vacd cannot be asked: UNKNOWN with the reason."""
    return UNKNOWN, f"VAC UNKNOWN - {_clean(reason)}"


def perfdata(status):
    """Nagios perfdata: `label=value;warn;crit;min;max`, space-separated."""
    counts = status.get("slots", {})
    processors = status.get("processors", {})
    items = [f"{name}={counts.get(name, 0)};;;" for name in SLOT_STATES]
    items.append(f"processors_used={processors.get('used', 0)};;;0;{processors.get('total', 0)}")
    items.append(f"processors_total={processors.get('total', 0)};;;")
    for name, machinetype in sorted(status.get("machinetypes", {}).items()):
        items.append(f"running_{_LABEL_UNSAFE.sub('_', name)}={machinetype.get('running', 0)};;;")
    return " ".join(items)


def _criticals(status, slots):
    reasons = []
    if status.get("degraded"):
        reasons.append("factory DEGRADED: no new machines start")
    problems = status.get("config_problems") or []
    if problems:
        # The reply lists the first problems only, then "and M more".
        total = status.get("config_problems_total", len(problems))
        reasons.append(f"{_count(total, 'configuration problem')}: {problems[0]}")
    fatal = status.get("slots", {}).get("fatal", 0)
    if fatal:
        reasons.append(f"{_slots_named(slots, ('fatal',), fatal)} FATAL (vac reset-slot)")
    return reasons


def _warnings(status, slots, now, idle_warning_seconds):
    reasons = []
    counts = status.get("slots", {})
    if counts.get("backoff"):
        reasons.append(f"{_slots_named(slots, BACKOFF_STATES, counts['backoff'])} in restart backoff")
    for name, helper in sorted(status.get("helpers", {}).items()):
        if helper.get("state") not in ("running", "starting"):
            reasons.append(f"helper {name} {helper.get('state')}")
    if status.get("state") == "stopping":
        reasons.append("vacd is stopping")
    if status.get("draining"):
        reasons.append("draining")
    uptime = status.get("uptime_seconds") or 0.0
    for prefix, pipe in sorted((status.get("pipes") or {}).items()):
        reason = _pipe_problem(pipe, uptime)
        if reason:
            reasons.append(f"pipe {prefix} {reason}")
    idle_for = _idle_for(status, slots, now)
    if idle_for is not None and idle_for >= idle_warning_seconds:
        reason = (f"no machine running for {format_elapsed(idle_for)} with "
                  f"{_count(counts.get('idle', 0), 'slot')} idle")
        if status.get("last_refusal"):
            reason += f" ({status['last_refusal']})"
        reasons.append(reason)
    return reasons


def _pipe_problem(pipe, uptime):
    if pipe.get("stale"):
        return f"stale: {pipe.get('error')}"
    if pipe.get("fetched_at") is None and (pipe.get("error") != "not fetched yet"
                                           or uptime >= PIPE_GRACE_SECONDS):
        return f"has no document: {pipe.get('error')}"
    return None


def _idle_for(status, slots, now):
    """Seconds the factory has run no machine with slots idle, or None if that does not hold."""
    counts = status.get("slots", {})
    if (counts.get("running", 0) or not counts.get("idle", 0) or status.get("draining")
            or status.get("state") not in ("running", "starting")):
        return None
    # Idle since vacd started or since the last machine ended, whichever is later.
    since = now - (status.get("uptime_seconds") or 0.0)
    for slot in slots or ():
        outcome = slot.get("last_outcome") or {}
        if outcome.get("ended_at"):
            since = max(since, outcome["ended_at"])
    return max(now - since, 0.0)


def _summary(status):
    counts = status.get("slots", {})
    processors = status.get("processors", {})
    text = ", ".join(f"{counts.get(name, 0)} {name}" for name in SLOT_STATES[1:4])
    if counts.get("fatal"):
        text += f", {counts['fatal']} fatal"
    return (f"{_count(counts.get('slots', 0), 'slot')}: {text}; "
            f"{processors.get('used', 0)}/{processors.get('total', 0)} processors used")


def _slots_named(slots, states, count):
    """'slots 3, 5' when the slots result tells which, else '2 slots'."""
    numbers = [s["slot"] for s in slots or () if (s.get("worker") or {}).get("state") in states]
    if len(numbers) != count:
        return _count(count, "slot")
    return ("slot " if len(numbers) == 1 else "slots ") + ", ".join(map(str, numbers))


def _count(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _clean(text):
    # One line, and no '|': Nagios takes everything after the first '|' as perfdata.
    return " ".join(str(text).split()).replace("|", "/")
