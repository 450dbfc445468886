"""The root's factory: the one object its loop and the control commands talk to (no I/O).

It routes the workers' reports to the slot table, the helper handshakes
(helper_handshakes.py) and the counters (factory_counters.py), asks the placer
(placement.py) to fill free slots, and carries out operators' commands. The
root sends the messages tick() returns.
"""

import collections
import dataclasses
import logging
import os
import random
import time

from vac.accounting import apel
from vac.config.model import DEFAULT_FIZZLE_SECONDS
from vac.config.settings import changed_restart_only, keep_restart_only
from vac.ipc import messages
from vac.machine import mjf
from vac.machine.layout import machine_name
from vac.space import status as space_status
from vac.space import view as space_view
from vac.supervisor import aborts, scheduler, scheduler_inputs
from vac.supervisor.factory_counters import FactoryCounters
from vac.supervisor.mjf_handshake import MJF, MjfHandshake
from vac.supervisor.helper_handshakes import (CVMFS_KEEPER, PIPE_FETCHER, VACQUERY, KeeperHandshake,
                                              PipeFetcherHandshake, ReaperHandshake, VacqueryHandshake)
from vac.supervisor.placement import Placer
from vac.supervisor.slot_table import SlotTable
from vac.vocabulary.slot_ids import slot_id, slot_number

log = logging.getLogger(__name__)

FINISHED_REMEMBERED = 4096
# mb_per_processor is in MiB, as Vac reads it; VacQuery answers bytes_per_processor.
BYTES_PER_MB = 1024 * 1024


class Factory:
    """Placements, outcomes and backoff of one factory, fed by the root's loop."""

    def __init__(self, config, *, factory_name, rng=None, clock=time.time,
                 load_average=lambda: os.getloadavg()[0], mjf_child=False):
        self.config = config
        self.factory_name = factory_name
        self.table = SlotTable(config.settings.slots)
        self.histories = {}
        self.paused = set()
        self.clock = clock
        self.placer = Placer(factory_name=factory_name, rng=rng or random.Random(), load_average=load_average)
        self.pipes = PipeFetcherHandshake()
        self.keeper = KeeperHandshake()
        self.vacquery = VacqueryHandshake()
        self.reaper = ReaperHandshake()
        # Whether the tree runs an mjf child, which serves Machine/Job Features over HTTP.
        self.mjf = MjfHandshake(mjf_child)
        # Totals since this root started, for the metrics exporter.
        self.counters = FactoryCounters(clock())
        # Problems of the last refused reload, shown in status until one succeeds.
        self.config_problems = []
        # Settings a reload changed that take effect only when vacd restarts.
        self.restart_needed = []
        self._lowered = {}        # uuid -> shutdown time we asked its slot to lower to
        self._finished_uuids = collections.deque(maxlen=FINISHED_REMEMBERED)
        self._outbox = []         # (child id, message) queued by operators' commands
        self._drain_requested = False
        self._drain_deadline = None
        self._ended_by_drain = set()
        self.last_outcomes = {}   # slot -> the last finished machine's outcome
        self.machinetypes = config.machinetypes

    # What the parts hold, under the names the root, the commands and the metrics read.

    last_refusal = property(lambda self: self.placer.last_refusal)
    unavailable_repositories = property(lambda self: self.keeper.unavailable)
    pipe_reports = property(lambda self: self.pipes.reports)
    pipe_machinetypes = property(lambda self: self.pipes.machinetypes)
    counting_since = property(lambda self: self.counters.counting_since)
    started_total = property(lambda self: self.counters.started_total)
    finished_total = property(lambda self: self.counters.finished_total)
    wall_limit_kills = property(lambda self: self.counters.wall_limit_kills)
    placements_total = property(lambda self: self.counters.placements_total)
    refusals_total = property(lambda self: self.counters.refusals_total)

    # Reports from the workers.

    def on_message(self, child_id, msg):
        slot = slot_number(child_id)
        if isinstance(msg, messages.StateReport) and slot is not None:
            self.counters.count_start(slot, msg.state, msg.detail.get("machine"))
            self.table.report(slot, msg.state, msg.detail.get("machine"), msg.detail.get("error"),
                              msg.detail.get("rejected"))
            self.placer.changed = True
        elif isinstance(msg, messages.StateReport) and child_id == CVMFS_KEEPER:
            self.keeper.on_report(msg)
            self.placer.changed = True
        elif isinstance(msg, messages.StateReport) and child_id == VACQUERY:
            self.vacquery.on_state(msg)
        elif isinstance(msg, messages.SpaceStatus):
            self.vacquery.on_space_status(msg)
            self.placer.changed = True
        elif isinstance(msg, messages.StateReport) and child_id == PIPE_FETCHER:
            self.pipes.on_state(msg)
        elif isinstance(msg, messages.StateReport) and child_id == MJF:
            self.mjf.on_report(msg)
            self.placer.changed = True
        elif isinstance(msg, messages.MachineFinished):
            if slot is not None:
                self.last_outcomes[slot] = {"machine": msg.uuid, "machinetype": msg.machinetype,
                                            "code": msg.code, "text": msg.text,
                                            "started_at": msg.started_at, "ended_at": msg.ended_at,
                                            "processors": msg.processors, "cpu_seconds": msg.cpu_seconds,
                                            "machine_name": machine_name(self.factory_name, slot)}
            self._finished(msg)
        elif isinstance(msg, messages.PipeMachinetypes):
            if self.pipes.take_report(msg, self.config):
                self.machinetypes = self.pipes.effective_machinetypes(self.config)
                self.placer.changed = True

    def _finished(self, msg):
        # A worker that dies between its finished marker and its next record
        # write reports the machine again: count each machine once.
        if msg.uuid in self._finished_uuids:
            return
        self._finished_uuids.append(msg.uuid)
        self.counters.count_finished(msg)
        machinetype = self.machinetypes.get(msg.machinetype)
        fizzle = machinetype.fizzle_seconds if machinetype else DEFAULT_FIZZLE_SECONDS
        history = self.histories.get(msg.machinetype, aborts.OutcomeHistory())
        self.histories[msg.machinetype] = aborts.record_outcome(
            history, msg.started_at, msg.ended_at, msg.code, fizzle)
        abort = aborts.is_abort(msg.code, msg.started_at, msg.ended_at, fizzle)
        log.info("machine %s (%s) finished: %s %s%s", msg.uuid, msg.machinetype,
                 msg.code if msg.code is not None else "no message", msg.text,
                 " (abort: the machinetype backs off)" if abort else "")
        self._lowered.pop(msg.uuid, None)
        self.placer.changed = True

    def on_child_exit(self, child_id):
        slot = slot_number(child_id)
        if slot is not None:
            self.table.worker_gone(slot)
            self.placer.changed = True
        elif child_id == MJF:
            self.mjf.on_exit()

    # Decisions.

    def tick(self, may_start):
        """Messages to send now: placements for free slots, lowered shutdown times, the helpers' news."""
        now = self.clock()
        out, self._outbox = self._outbox, []
        out.extend(self._lower_shutdown_times())
        out.extend(self._drain_ends(now))
        out.extend(self.pipes.outgoing(self.config))
        out.extend(self.keeper.outgoing(scheduler_inputs.needed_repositories(self.machinetypes)))
        out.extend(self.vacquery.outgoing(self.local_report, self.config.settings.vacmon_hostport, now))
        if (may_start and self.table.free_slots() and self.placer.due(now)
                and self.placer.adoption_over(self.table)):
            out.extend(self.placer.place(
                now, config=self.config, machinetypes=self.machinetypes, table=self.table,
                draining=self.draining, paused=self.paused, histories=self.space_histories(),
                space_hs06=self.space_hs06(), unavailable_repositories=self.unavailable_repositories,
                counters=self.counters, mjf_http_url=self.mjf.url, mjf_http_unavailable=self.mjf.why_not))
        settings = self.config.settings
        out.extend(self.reaper.outgoing(now, self.table,
                                        apel.sync_site(settings.gocdb_sitename, settings.hs06_per_processor)))
        return out

    def local_statuses(self):
        """What this factory runs per machinetype, as VacQuery answers it."""
        return space_status.local_statuses(
            factory_name=self.factory_name, machinetypes=self.machinetypes, machines=self.table.machines(),
            outcomes=self.last_outcomes.values(),
            hs06_per_processor=self.config.settings.hs06_per_processor_or_default,
            bytes_per_processor=self.config.settings.mb_per_processor * BYTES_PER_MB, now=self.clock())

    def local_report(self):
        """What this factory answers the space with: (machinetype statuses, machine statuses, factory status)."""
        settings = self.config.settings
        factory = space_status.local_factory(
            factory_name=self.factory_name, machines=self.table.machines(),
            total_processors=settings.total_processors, hs06_per_processor=settings.hs06_per_processor_or_default)
        return self.local_statuses(), self.machine_statuses(space_status.MAX_ANSWER_DATAGRAMS), factory

    def machine_statuses(self, cap=None):
        """One machine_status per slot (the first `cap`; None: every slot)."""
        held = dict(self.table.machines())
        slots = [{"slot": entry.slot, "name": machine_name(self.factory_name, entry.slot), "state": entry.state,
                  "machine": held.get(entry.slot)} for entry in self.table.entries.values()]
        return space_status.local_machines(
            factory_name=self.factory_name, slots=slots, outcomes=self.last_outcomes,
            machinetypes=self.machinetypes, hs06_per_processor=self.config.settings.hs06_per_processor_or_default,
            cap=cap)

    def space_hs06(self):
        """HS06 per machinetype the other factories of the space run now (as they last answered)."""
        return self.vacquery.space_hs06(self.factory_name, self.clock())

    def space_histories(self):
        """Each machinetype's aborts here with the latest the space reports, and its young machines there."""
        return aborts.with_space(self.histories, self.vacquery.space_aborts(self.factory_name, self.clock()))

    def space_status(self):
        """For operators: the factories asked, each one's last answer, and the HS06 they add."""
        return {"polled": list(self.vacquery.polled), "answers": dict(self.vacquery.answers),
                "hs06": self.space_hs06()}

    def space_view(self):
        """`vac space`: one row per factory of the space, this one first; the silent ones with why."""
        statuses, _, factory = self.local_report()
        handshake = self.vacquery
        return space_view.space_view(
            space=self.config.settings.vac_space, factory_name=self.factory_name, local_statuses=statuses,
            local_factory=factory, answers=handshake.answers, polled=handshake.polled, silent=handshake.silent,
            poll=dict(handshake.poll, request_done=handshake.request_done), now=self.clock())

    def space_machines(self):
        """`vac machines --space`: this factory's machines, then those the last poll for machines returned."""
        handshake = self.vacquery
        return space_view.space_machines(
            factory_name=self.factory_name, local_machines=self.machine_statuses(), machines=handshake.machines,
            silent=handshake.machines_poll.get("silent", {}), left_out=handshake.machines_poll.get("left_out", 0),
            poll={**{key: handshake.machines_poll.get(key) for key in ("started_at", "ended_at", "request")},
                  "request_done": handshake.request_done})

    def request_space_poll(self, machines):
        """Ask vacquery for a fresh poll (with every machine of the space); the number its answer will carry."""
        number, out = self.vacquery.request(machines, self.clock())
        self._outbox.extend(out)
        return number

    def _lower_shutdown_times(self):
        shutdown_time = self.config.settings.shutdown_time
        if shutdown_time is None:
            return []
        out = []
        now = self.clock()
        for slot, machine in self.table.machines():
            uuid = machine["uuid"]
            if self._lowered.get(uuid) == shutdown_time:
                continue
            # Not below now + the notice announced as grace_secs: sent once per global value.
            new_time = mjf.lowered_shutdown_time(machine["shutdown_at"], shutdown_time, now)
            if new_time is not None:
                self._lowered[uuid] = shutdown_time
                out.append((slot_id(slot), messages.LowerShutdown(uuid=uuid, shutdown_at=new_time)))
        return out

    def next_deadline(self):
        """The wall-clock time tick() next has something to decide, or None."""
        times = self.placer.wake_times()
        if self._drain_deadline is not None:
            times.append(self._drain_deadline)
        for deadline in (self.reaper.next_at(), self.vacquery.next_deadline()):
            if deadline is not None:
                times.append(deadline)
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
        self.placer.changed = True
        log.warning("draining%s", f": running machines end in {deadline_seconds:.0f} s"
                    if deadline_seconds is not None else "")

    def undrain(self):
        self._drain_requested = False
        self._drain_deadline = None
        self.placer.changed = True
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
        self.placer.changed = True
        return self.paused

    def resume(self, machinetype):
        self.paused.discard(machinetype)
        self.placer.changed = True
        return self.paused

    def pipe_status(self):
        """Each pipe's freshness and what it yields, for status."""
        return self.pipes.status(self.config)

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
        self.pipes.reloaded(config)
        self.machinetypes = new = self.pipes.effective_machinetypes(config)
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
        self.placer.changed = True
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
            self.space_histories(), running, now)
