"""The control commands: an explicit registry, one small handler each.

A handler's docstring is its help text. Handlers read or change the root's
in-memory state only; none runs anything a client sends.
"""

import dataclasses
import math
import time

from vac.space import rounds
from vac.vocabulary.child_states import ChildState
from vac.vocabulary.slot_ids import slot_id


class CommandFailed(Exception):
    """The command was understood but cannot be done; the text says why."""


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    handler: object
    schema: dict
    mutating: bool
    streams: bool = False
    errors: tuple = (CommandFailed,)

    @property
    def help(self):
        return (self.handler.__doc__ or "").strip()


COMMANDS = {}
# Problems listed per pipe and for the configuration in a status reply.
STATUS_PROBLEMS_SHOWN = 20
INT, STR, NUMBER, BOOL = (int,), (str,), (int, float), (bool,)


def command(name, *, mutating=False, streams=False, **schema):
    """Register a handler; schema: arg name -> (types, required, default)."""

    def register(handler):
        COMMANDS[name] = Command(name, handler, schema, mutating, streams)
        return handler

    return register


@dataclasses.dataclass
class Context:
    """What handlers act on: the root and its factory."""
    root: object
    factory: object


# Reading.

@command("status")
def status(ctx, args):
    """Factory summary: slots by state, processors, machinetypes, helpers, problems, pipes, space."""
    root, factory = ctx.root, ctx.factory
    settings = factory.config.settings
    held = factory.table.running(settings.hs06_per_processor)
    return {
        "state": root.state.value,
        "degraded": root.tree.degraded,
        "draining": factory.draining,
        "summary": root.summary(),
        "slots": root.counts(),
        "processors": {"total": settings.total_processors,
                       "used": sum(m.processors for m in held)},
        "machinetypes": machinetypes(ctx, args),
        "helpers": {leaf.id: _child(leaf) for leaf in root.tree.leaves.values()
                    if leaf.spec.role != "slot"},
        "config_problems": capped(factory.config_problems),
        "config_problems_total": len(factory.config_problems),
        "restart_needed": list(factory.restart_needed),
        "pipes": {prefix: dict(pipe, problems=capped(pipe["problems"], pipe["problems_total"]))
                  for prefix, pipe in factory.pipe_status().items()},
        "space": factory.space_status(),
        "last_refusal": factory.last_refusal.text if factory.last_refusal else None,
        "uptime_seconds": time.monotonic() - root.started_at if root.started_at else 0,
    }


@command("slots")
def slots(ctx, args):
    """Every slot: state, machine, machinetype, container, started, wall limit, restarts."""
    return [_slot(ctx, n) for n in sorted(ctx.factory.table.entries)]


@command("slot", slot=(INT, True, None))
def slot(ctx, args):
    """One slot in detail."""
    return _slot(ctx, _slot_number(ctx, args["slot"]))


@command("machinetypes")
def machinetypes(ctx, args):
    """Machinetypes: share, running machines and processors, backoff, paused, pipe."""
    factory = ctx.factory
    backoff = factory.backoff()
    running = {}
    for _, machine in factory.table.machines():
        entry = running.setdefault(machine["machinetype"], {"machines": 0, "processors": 0})
        entry["machines"] += 1
        entry["processors"] += machine["processors"]
    return {name: {"target_share": mt.target_share,
                   "running": running.get(name, {}).get("machines", 0),
                   "processors": running.get(name, {}).get("processors", 0),
                   "backoff_until": backoff.get(name),
                   "paused": name in factory.paused,
                   "pipe": mt.pipe}
            for name, mt in sorted(factory.machinetypes.items())}


@command("machines")
def machines(ctx, args):
    """This factory's machines, one per slot, as VacQuery answers a machines query."""
    return [dataclasses.asdict(machine) for machine in ctx.factory.machine_statuses()]


@command("space")
def space(ctx, args):
    """The space: each factory's answer (age, processors, HS06, machines, last abort) and the silent ones."""
    _space_of(ctx)
    return ctx.factory.space_view()


@command("space_machines")
def space_machines(ctx, args):
    """Every machine of the space, as the last poll that asked for machines found them."""
    _space_of(ctx)
    return ctx.factory.space_machines()


@command("space_poll", machines=(BOOL, False, False))
def space_poll(ctx, args):
    """Ask the space again now (machines=true: every machine too); `space` shows it once request_done reaches
    the request returned, within wait_seconds."""
    settings = _space_of(ctx)
    if "vacquery" not in ctx.root.live:
        raise CommandFailed("vacquery is not running now: no poll can be made (vac status shows why)")
    return {"request": ctx.factory.request_space_poll(args["machines"]),
            "wait_seconds": rounds.longest_wait(settings.udp_timeout_seconds)}


@command("watch", streams=True)
def watch(ctx, args):
    """A stream of state-change events until the client disconnects."""
    return {"watching": True}


# Changing.

@command("drain", mutating=True, deadline=(NUMBER, False, None))
def drain(ctx, args):
    """Start no new machines; with deadline=SECONDS, end running ones then (100 message)."""
    deadline = args["deadline"]
    # NaN compares false with everything: it would end every machine at once.
    if deadline is not None and not (math.isfinite(deadline) and deadline >= 0):
        raise CommandFailed(f"deadline must be a finite number of seconds, 0 or more, not {deadline}")
    ctx.factory.drain(deadline)
    return {"draining": True, "deadline": deadline}


@command("undrain", mutating=True)
def undrain(ctx, args):
    """Start machines again after a drain."""
    ctx.factory.undrain()
    return {"draining": ctx.factory.draining}


@command("stop-machine", mutating=True, slot=(INT, True, None),
         reason=(STR, False, "Shutdown requested by the factory"))
def stop_machine(ctx, args):
    """End the machine in a slot gracefully, with a 100 shutdown_message giving the reason."""
    number = _slot_number(ctx, args["slot"])
    reason = args["reason"].replace("\n", " ")[:200]
    uuid = ctx.factory.stop_machine(number, reason)
    if uuid is None:
        raise CommandFailed(f"slot {number} holds no machine")
    return {"slot": number, "machine": uuid, "reason": reason}


@command("reset-slot", mutating=True, slot=(INT, True, None))
def reset_slot(ctx, args):
    """Clear a FATAL slot so its worker starts again."""
    number = _slot_number(ctx, args["slot"])
    leaf = ctx.root.tree.leaves[slot_id(number)]
    if leaf.state is not ChildState.FATAL:
        raise CommandFailed(f"slot {number} is {leaf.state.value}, not fatal")
    ctx.root.reset(slot_id(number))
    return {"slot": number, "state": leaf.state.value}


@command("pause", mutating=True, machinetype=(STR, True, None))
def pause(ctx, args):
    """Start no new machines of a machinetype (running ones continue)."""
    return {"paused": sorted(ctx.factory.pause(_machinetype(ctx, args["machinetype"])))}


@command("resume", mutating=True, machinetype=(STR, True, None))
def resume(ctx, args):
    """Start machines of a paused machinetype again."""
    return {"paused": sorted(ctx.factory.resume(_machinetype(ctx, args["machinetype"])))}


@command("reload", mutating=True)
def reload(ctx, args):
    """Re-read the configuration files (as SIGHUP does)."""
    ctx.root.request_reload()
    return {"reloading": True}


@command("shutdown", mutating=True)
def shutdown(ctx, args):
    """Stop vacd in order; running containers are left running."""
    ctx.root.request_stop()
    return {"stopping": True}


@command("help")
def help_(ctx, args):
    """Every command with its arguments and whether it changes the factory."""
    return {name: {"help": c.help, "args": sorted(c.schema), "mutating": c.mutating}
            for name, c in sorted(COMMANDS.items())}


# Helpers.

def capped(problems, total=None):
    """The first STATUS_PROBLEMS_SHOWN problems, then "and M more" if there were more.

    A pipe of ~1 MB can hold tens of thousands of problems; a status reply must fit a frame."""
    total = len(problems) if total is None else total
    shown = [str(problem) for problem in problems[:STATUS_PROBLEMS_SHOWN]]
    if total > len(shown):
        shown.append(f"and {total - len(shown)} more")
    return shown


def _space_of(ctx):
    """The settings of a factory that belongs to a space, or CommandFailed."""
    settings = ctx.factory.config.settings
    if not settings.vac_space:
        raise CommandFailed("this factory belongs to no space: vac_space is not set")
    return settings


def _slot_number(ctx, number):
    if number not in ctx.factory.table.entries:
        raise CommandFailed(f"no slot {number}; this factory has slots 0 to "
                            f"{len(ctx.factory.table.entries) - 1}")
    return number


def _machinetype(ctx, name):
    if name not in ctx.factory.machinetypes:
        raise CommandFailed(f"no machinetype {name!r}")
    return name


def _child(leaf):
    return {"state": leaf.state.value, "pid": leaf.pid, "starts": leaf.starts,
            "failed_starts": leaf.failed_starts,
            "last_exit": str(leaf.last_exit) if leaf.last_exit else None}


def _slot(ctx, number):
    entry = ctx.factory.table.entries[number]
    leaf = ctx.root.tree.leaves[slot_id(number)]
    machine = entry.machine or entry.pending
    now = time.time()
    return {
        "slot": number,
        "state": entry.state,
        "worker": _child(leaf),
        "restarts": max(leaf.starts - 1, 0),
        "machine": machine.get("uuid") if machine else None,
        "machinetype": machine.get("machinetype") if machine else None,
        "processors": machine.get("processors") if machine else None,
        "container_id": machine.get("container_id") if machine else None,
        "started_at": machine.get("started_at") if machine else None,
        "elapsed_seconds": now - machine["started_at"] if machine else None,
        "shutdown_at": machine.get("shutdown_at") if machine else None,
        "error": entry.error,
        "last_outcome": ctx.factory.last_outcomes.get(number),
    }
