"""The root's factory logic: which machine goes into which free slot.

Pure bookkeeping over the workers' reports plus calls to the scheduler; the
root calls it from its loop and sends the messages it returns. No I/O here
apart from reading the clock and load average it was given.
"""

import collections
import dataclasses
import logging
import os
import random
import time
import uuid as uuidlib

from vac.config import pipes, plain
from vac.config.settings import changed_restart_only, keep_restart_only
from vac.ipc import messages
from vac.machine.joboutputs import EXCEEDED_WALLCLOCK
from vac.machine.layout import machine_name
from vac.space import status as space_status
from vac.supervisor import aborts, scheduler, scheduler_inputs
from vac.supervisor.machine_spec import machine_spec
from vac.supervisor.slot_table import SlotTable
from vac.vocabulary.live_set import LIVE_SET_SECONDS
from vac.vocabulary.slot_ids import slot_id, slot_number
from vac.vocabulary.slot_states import SETTLED_STATES

log = logging.getLogger(__name__)

# The load average and the clock move without any report: look again this often.
RECONSIDER_SECONDS = 10.0
PIPE_FETCHER = "pipe-fetcher"
REAPER = "reaper"
CVMFS_KEEPER = "cvmfs-keeper"
VACQUERY = "vacquery"
NOT_ASKED = object()   # vacquery has not reported yet: send it nothing
FINISHED_REMEMBERED = 4096


class Factory:
    """Placements, outcomes and backoff of one factory, fed by the root's loop."""

    def __init__(self, config, *, factory_name, rng=None, clock=time.time,
                 load_average=lambda: os.getloadavg()[0]):
        self.config = config
        self.factory_name = factory_name
        self.table = SlotTable(config.settings.slots)
        self.histories = {}
        self.paused = set()
        self.unavailable_repositories = frozenset()
        self._keeper_watches = None    # the repositories the keeper last reported checking
        self._repositories_asked = None  # what we asked it for since that report
        self.space_answers = {}        # factory -> its latest answer (SpaceStatus.factories entry)
        self.space_polled = []         # the factories the last VacQuery round asked
        self._local_sent = NOT_ASKED   # the statuses last sent to vacquery
        self.rng = rng or random.Random()
        self.clock = clock
        self.load_average = load_average
        self.last_refusal = None
        # Problems of the last refused reload, shown in status until one succeeds.
        self.config_problems = []
        # Settings a reload changed that take effect only when vacd restarts.
        self.restart_needed = []
        self._retry_at = None
        self._waited_for_adoption = False
        self._reconsider_at = 0.0
        self._changed = True
        self._lowered = {}        # uuid -> shutdown time we asked its slot to lower to
        self._finished_uuids = collections.deque(maxlen=FINISHED_REMEMBERED)
        self._live_set_sent_at = None
        self._outbox = []         # (child id, message) queued by operators' commands
        self._drain_requested = False
        self._drain_deadline = None
        self._ended_by_drain = set()
        self.last_outcomes = {}   # slot -> the last finished machine's outcome
        self.pipe_reports = {}    # prefix -> the fetcher's latest PipeMachinetypes
        self.pipe_machinetypes = {}  # prefix -> {name: Machinetype} of a usable pipe
        self._send_pipe_list = False
        self.machinetypes = config.machinetypes
        # Totals since this root started, for the metrics exporter.
        self.counting_since = clock()
        self.started_total = collections.Counter()     # machinetype -> machines started
        self.finished_total = collections.Counter()    # (machinetype, code) -> machines finished
        self.wall_limit_kills = collections.Counter()  # machinetype -> ended at their wall limit
        self._counted_start = {}  # slot -> the machine last counted as started there
        self.placements_total = collections.Counter()  # machinetype -> placements sent
        # NoPlacementReason value -> scheduling passes that left free slots empty.
        self.refusals_total = collections.Counter()

    def _effective_machinetypes(self):
        return pipes.effective_machinetypes(
            self.config.machinetypes,
            [self.pipe_machinetypes[prefix] for prefix in sorted(self.pipe_machinetypes)])

    # Reports from the workers.

    def on_message(self, child_id, msg):
        slot = slot_number(child_id)
        if isinstance(msg, messages.StateReport) and slot is not None:
            self._count_start(slot, msg.state, msg.detail.get("machine"))
            self.table.report(slot, msg.state, msg.detail.get("machine"), msg.detail.get("error"),
                              msg.detail.get("rejected"))
            self._changed = True
        elif isinstance(msg, messages.StateReport) and child_id == CVMFS_KEEPER:
            repositories = msg.detail.get("repositories", {})
            self.unavailable_repositories = frozenset(
                name for name, check in repositories.items() if check.get("ok") is False)
            self._keeper_watches = sorted(repositories)
            self._repositories_asked = None
            self._changed = True
        elif isinstance(msg, messages.StateReport) and child_id == VACQUERY:
            # A (re)started vacquery has nothing to answer with yet.
            if msg.state == "waiting":
                self._local_sent = None
        elif isinstance(msg, messages.SpaceStatus):
            # A factory no longer listed is forgotten; one that did not answer
            # this round keeps its last answer until that grows stale.
            self.space_polled = list(msg.polled)
            self.space_answers = {name: answer for name, answer in {**self.space_answers, **msg.factories}.items()
                                  if name in self.space_polled}
            self._changed = True
        elif isinstance(msg, messages.StateReport) and child_id == PIPE_FETCHER:
            # A (re)started fetcher knows no pipes yet.
            self._send_pipe_list = msg.state == "waiting"
        elif isinstance(msg, messages.MachineFinished):
            if slot is not None:
                self.last_outcomes[slot] = {"machine": msg.uuid, "machinetype": msg.machinetype,
                                            "code": msg.code, "text": msg.text,
                                            "ended_at": msg.ended_at,
                                            "machine_name": machine_name(self.factory_name, slot)}
            self._finished(msg)
        elif isinstance(msg, messages.PipeMachinetypes):
            self._pipe_report(msg)

    def _pipe_report(self, msg):
        """Take in a pipe's machinetypes, expanded and checked by the fetcher (and on decode)."""
        pipe = self.config.vacuum_pipes.get(msg.prefix)
        if pipe is None or msg.url != pipe.url:
            # Sent before a reload changed the pipes; the fetcher has the new list.
            return
        previous = self.pipe_reports.get(msg.prefix)
        self.pipe_reports[msg.prefix] = msg
        if msg.stale:
            log.warning("pipe %s: refresh failed (%s); using the copy fetched at %d",
                        msg.prefix, msg.error, msg.fetched_at)
        if msg.usable:
            self.pipe_machinetypes[msg.prefix] = plain.machinetypes_from_plain(
                msg.machinetypes, msg.prefix)
        else:
            self.pipe_machinetypes.pop(msg.prefix, None)
        # A refetch of the same document says nothing new: only a change is logged.
        if previous is None or _pipe_outcome(previous) != _pipe_outcome(msg):
            _log_pipe_report(msg)
        self.machinetypes = self._effective_machinetypes()
        self._changed = True

    def _finished(self, msg):
        # A worker that dies between its finished marker and its next record
        # write reports the machine again: count each machine once.
        if msg.uuid in self._finished_uuids:
            return
        self._finished_uuids.append(msg.uuid)
        self.finished_total[(msg.machinetype, msg.code)] += 1
        if (msg.code, msg.text) == (EXCEEDED_WALLCLOCK.code, EXCEEDED_WALLCLOCK.text):
            self.wall_limit_kills[msg.machinetype] += 1
        machinetype = self.machinetypes.get(msg.machinetype)
        fizzle = machinetype.fizzle_seconds if machinetype else 600
        history = self.histories.get(msg.machinetype, aborts.OutcomeHistory())
        self.histories[msg.machinetype] = aborts.record_outcome(
            history, msg.started_at, msg.ended_at, msg.code, fizzle)
        abort = aborts.is_abort(msg.code, msg.started_at, msg.ended_at, fizzle)
        log.info("machine %s (%s) finished: %s %s%s", msg.uuid, msg.machinetype,
                 msg.code if msg.code is not None else "no message", msg.text,
                 " (abort: the machinetype backs off)" if abort else "")
        self._lowered.pop(msg.uuid, None)
        self._changed = True

    def _count_start(self, slot, state, machine):
        """Count a machine once, when its slot first reports it running."""
        if state != "running" or not machine or self._counted_start.get(slot) == machine.get("uuid"):
            return
        self._counted_start[slot] = machine.get("uuid")
        # A machine that started before this root did is one a new root adopts:
        # the root that started it counted it.
        if machine.get("started_at", 0) >= self.counting_since:
            self.started_total[machine.get("machinetype")] += 1

    def on_child_exit(self, child_id):
        slot = slot_number(child_id)
        if slot is not None:
            self.table.worker_gone(slot)
            self._changed = True

    # Decisions.

    def tick(self, may_start):
        """Messages to send now: placements for free slots, lowered shutdown times."""
        now = self.clock()
        out, self._outbox = self._outbox, []
        out.extend(self._lower_shutdown_times())
        out.extend(self._drain_ends(now))
        if self._send_pipe_list:
            self._send_pipe_list = False
            out.append((PIPE_FETCHER, pipe_list(self.config)))
        out.extend(self._repositories_to_watch())
        out.extend(self._local_status())
        if may_start and self.table.free_slots() and self._due(now) and self._adoption_over():
            out.extend(self._place(now))
        live_set = self._live_set(now)
        if live_set is not None:
            out.append((REAPER, live_set))
        return out

    def _adoption_over(self):
        """True once every slot has said what it holds: until then a placement could promise its processors twice."""
        adopting = self.table.still_adopting()
        if adopting and not self._waited_for_adoption:
            self._waited_for_adoption = True
            log.info("free slots wait until every slot has reported what it holds (%d still adopting)",
                     len(adopting))
        return not adopting

    def _repositories_to_watch(self):
        """Tell the keeper the repositories the machinetypes need, when its report shows others.

        Its list at start is the configuration's when the root started; reloads
        and Vacuum Pipes change what is needed, and a restarted keeper starts
        from that first list again.
        """
        needed = scheduler_inputs.needed_repositories(self.machinetypes)
        if self._keeper_watches is None or needed in (self._keeper_watches, self._repositories_asked):
            return []
        self._repositories_asked = needed
        log.info("cvmfs-keeper: asking it to watch %s", " ".join(needed) or "no repository")
        return [(CVMFS_KEEPER, messages.Repositories(names=needed))]

    def local_statuses(self):
        """What this factory runs per machinetype, as VacQuery answers it."""
        return space_status.local_statuses(
            factory_name=self.factory_name, machinetypes=self.machinetypes, machines=self.table.machines(),
            outcomes=self.last_outcomes.values(),
            hs06_per_processor=self.config.settings.hs06_per_processor_or_default, now=self.clock())

    def _local_status(self):
        """Send vacquery this factory's statuses when they changed (or it restarted)."""
        if self._local_sent is NOT_ASKED:
            return []
        statuses = [dataclasses.asdict(status) for status in self.local_statuses()]
        if statuses == self._local_sent:
            return []
        self._local_sent = statuses
        return [(VACQUERY, messages.LocalStatus(statuses=statuses))]

    def space_hs06(self):
        """HS06 per machinetype the other factories of the space run now (as they last answered)."""
        return space_status.space_hs06(self.space_answers, now=self.clock(), exclude=(self.factory_name,))

    def space_status(self):
        """For operators: the factories asked, each one's last answer, and the HS06 they add."""
        return {"polled": list(self.space_polled), "answers": dict(self.space_answers),
                "hs06": self.space_hs06()}

    def _live_set(self, now):
        """What every slot holds, for the reaper, every LIVE_SET_SECONDS whatever the slots do.

        A slot whose worker is gone or not in a settled state is marked so: the
        reaper leaves its containers alone. Stamped with `now`, so the reaper
        judges no container started after the root looked.
        """
        if self._live_set_sent_at is not None and now - self._live_set_sent_at < LIVE_SET_SECONDS:
            return None
        self._live_set_sent_at = now
        return messages.LiveSet(made_at=now, slots=[
            {"slot": e.slot, "state": e.state,
             "uuid": (e.machine or e.pending or {}).get("uuid"),
             "settled": e.worker_alive and e.state in SETTLED_STATES}
            for e in self.table.entries.values()])

    def _due(self, now):
        if self._changed or now >= self._reconsider_at:
            return True
        return self._retry_at is not None and now >= self._retry_at

    def _place(self, now):
        settings = self.config.settings
        factory = dataclasses.replace(scheduler_inputs.factory_capacity(settings), draining=self.draining)
        machinetypes = [scheduler_inputs.machinetype_demand(mt, paused=mt.name in self.paused)
                        for mt in self.machinetypes.values()]
        placements, refusal = scheduler.fill_free_slots(
            factory, machinetypes, self.table.running(settings.hs06_per_processor),
            self.histories, self.table.free_slots(), now=now,
            load_average=self.load_average(), rng=self.rng, space_hs06=self.space_hs06(),
            unavailable_repositories=self.unavailable_repositories)
        self._changed = False
        self._reconsider_at = now + RECONSIDER_SECONDS
        self._retry_at = refusal.retry_at if refusal is not None else None
        if refusal is not None and (self.last_refusal is None
                                    or refusal.reason != self.last_refusal.reason):
            log.info("free slots stay empty: %s", refusal.text)
        self.last_refusal = refusal
        if refusal is not None:
            self.refusals_total[refusal.reason.value] += 1
        out = []
        for slot, placement in placements:
            self.placements_total[placement.machinetype] += 1
            out.append((slot_id(slot), self._place_one(slot, placement, now)))
        return out

    def _place_one(self, slot, placement, now):
        machine_uuid = str(uuidlib.uuid4())
        machinetype = self.machinetypes[placement.machinetype]
        spec = machine_spec(
            uuid=machine_uuid, slot=slot, factory_name=self.factory_name,
            machine_name=machine_name(self.factory_name, slot), settings=self.config.settings,
            machinetype=machinetype, placement=placement, placed_at=now)
        self.table.placed(slot, {
            "uuid": machine_uuid, "machinetype": machinetype.name,
            "processors": placement.processors, "started_at": now,
            "shutdown_at": int(placement.shutdown_at), "superslot": placement.superslot,
            "container_id": None})
        log.info("slot %02d: placing %s machine %s on %d processor(s) until %d", slot,
                 machinetype.name, machine_uuid, placement.processors, placement.shutdown_at)
        return messages.Place(machine=spec)

    def _lower_shutdown_times(self):
        shutdown_time = self.config.settings.shutdown_time
        if shutdown_time is None:
            return []
        out = []
        for slot, machine in self.table.machines():
            uuid = machine["uuid"]
            if machine["shutdown_at"] > shutdown_time and self._lowered.get(uuid) != shutdown_time:
                self._lowered[uuid] = shutdown_time
                out.append((slot_id(slot), messages.LowerShutdown(uuid=uuid,
                                                                  shutdown_at=int(shutdown_time))))
        return out

    def next_deadline(self):
        """The wall-clock time tick() next has something to decide, or None."""
        times = [self._reconsider_at]
        if self._drain_deadline is not None:
            times.append(self._drain_deadline)
        if self._retry_at is not None:
            times.append(self._retry_at)
        if self._live_set_sent_at is not None:
            times.append(self._live_set_sent_at + LIVE_SET_SECONDS)
        return min(times)

    # Operators' commands.

    @property
    def draining(self):
        """Draining by the configuration (draining = yes) or by an operator."""
        return self.config.settings.draining or self._drain_requested

    def drain(self, deadline_seconds=None):
        """Start nothing new; with a deadline, end running machines when it passes."""
        self._drain_requested = True
        if deadline_seconds is not None:
            self._drain_deadline = self.clock() + deadline_seconds
        self._changed = True
        log.warning("draining%s", f": running machines end in {deadline_seconds:.0f} s"
                    if deadline_seconds is not None else "")

    def undrain(self):
        self._drain_requested = False
        self._drain_deadline = None
        self._changed = True
        log.warning("draining ended by an operator")

    def _drain_ends(self, now):
        if self._drain_deadline is None or now < self._drain_deadline:
            return []
        out = []
        for slot, machine in self.table.machines():
            if machine["uuid"] not in self._ended_by_drain:
                self._ended_by_drain.add(machine["uuid"])
                out.append((slot_id(slot), messages.EndMachine(
                    uuid=machine["uuid"], code=100, text="Shutdown requested by the factory")))
        return out

    def stop_machine(self, slot, reason):
        """Ask a slot to end its machine with a 100 message; its uuid, or None if it holds none."""
        machine = self.table.entries[slot].machine
        if machine is None:
            return None
        self._outbox.append((slot_id(slot), messages.EndMachine(
            uuid=machine["uuid"], code=100, text=reason)))
        return machine["uuid"]

    def pause(self, machinetype):
        self.paused.add(machinetype)
        self._changed = True
        return self.paused

    def resume(self, machinetype):
        self.paused.discard(machinetype)
        self._changed = True
        return self.paused

    def pipe_status(self):
        """Each pipe's freshness and what it yields, for status."""
        status = {}
        for prefix, pipe in self.config.vacuum_pipes.items():
            report = self.pipe_reports.get(prefix)
            status[prefix] = {
                "url": pipe.url,
                "fetched_at": report.fetched_at if report else None,
                "stale": report.stale if report else None,
                "error": report.error if report else "not fetched yet",
                "machinetypes": sorted(self.pipe_machinetypes.get(prefix, {})),
                "problems": list(report.problems) if report else [],
                "problems_total": report.problems_total if report else 0,
            }
        return status

    # Configuration.

    def apply_config(self, config):
        """Adopt a re-read configuration; running machines are left as they are.

        Settings that take effect only at a restart keep their running values
        (a slot refuses a machine for another state_dir, for one) and are named
        in `restart_needed` until a restart or a reload that restores them.
        """
        running = self.config.settings
        self.restart_needed = list(changed_restart_only(running, config.settings))
        if self.restart_needed:
            log.warning("restart needed for: %s; the running value(s) stay in use until vacd "
                        "restarts", ", ".join(self.restart_needed))
        config = dataclasses.replace(config, settings=keep_restart_only(running, config.settings))
        old = self.machinetypes
        self.config = config
        # A pipe dropped or moved adds nothing now; the others keep their machinetypes
        # until the fetcher, sent the new list below, expands them with the new options.
        for prefix in list(self.pipe_reports):
            pipe = config.vacuum_pipes.get(prefix)
            if pipe is None or pipe.url != self.pipe_reports[prefix].url:
                self.pipe_reports.pop(prefix)
                self.pipe_machinetypes.pop(prefix, None)
        self.machinetypes = new = self._effective_machinetypes()
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
        self._send_pipe_list = True
        self._changed = True
        log.info("configuration applied: machinetypes added %s, changed %s, removed %s; "
                 "running machines untouched", added or "none", changed or "none",
                 removed or "none")
        return {"added": added, "changed": changed, "removed": removed}

    # What operators see.

    def backoff(self):
        """Machinetype -> the time it leaves backoff, for those in backoff now."""
        now = self.clock()
        running = self.table.running(self.config.settings.hs06_per_processor)
        return scheduler.backoff_table(
            [scheduler_inputs.machinetype_demand(mt) for mt in self.machinetypes.values()],
            self.histories, running, now)


def pipe_list(config):
    """The PipeList for the fetcher: each pipe with the local options that take precedence."""
    return messages.PipeList(settings=plain.to_plain(config.settings), pipes=[
        {"pipe": plain.to_plain(pipe),
         "local": {name: plain.to_plain(options)
                   for name, options in config.machinetype_options.items()
                   if name.startswith(prefix + "-")}}
        for prefix, pipe in config.vacuum_pipes.items()])


def _pipe_outcome(msg):
    return (msg.usable, tuple(msg.problems), msg.problems_total,
            tuple(machinetype["name"] for machinetype in msg.machinetypes))


def _log_pipe_report(msg):
    if not msg.usable:
        log.error("pipe %s: %s; its machinetypes are not started", msg.prefix,
                  msg.problems[0] if msg.problems else f"no document ({msg.error})")
        return
    for problem in msg.problems:
        log.warning("pipe %s: %s", msg.prefix, problem)
    if msg.problems_total > len(msg.problems):
        log.warning("pipe %s: and %d more problem(s)", msg.prefix,
                    msg.problems_total - len(msg.problems))
    log.info("pipe %s: %d machinetype(s): %s", msg.prefix, len(msg.machinetypes),
             ", ".join(machinetype["name"] for machinetype in msg.machinetypes) or "none")
