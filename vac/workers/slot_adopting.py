"""ADOPTING: what a slot's predecessor left (unfinished records, labelled containers), taken over one by one."""

from __future__ import annotations

import dataclasses
import logging

from vac.machine.joboutputs import SHUTDOWN_BY_FACTORY
from vac.machine.layout import MachinePaths, indexed_machines
from vac.machine.prepare import read_terms
from vac.runtimes.base import ContainerRuntimeError
from vac.workers import slot_rules, slot_steps
from vac.workers.held_machine import Machine
from vac.workers.job_runner import JobResult
from vac.workers.slot_rules import Adopt
from vac.vocabulary.slot_states import SlotState

log = logging.getLogger(__name__)
# How long an unavailable engine may delay a start before the machine fails.
START_DEADLINE_SECONDS = 300.0


class AdoptingSteps:
    """SlotMachine's ADOPTING state (see machine_run.py)."""

    def _submit_scan(self) -> None:
        # A slot whose index names a machine is about to supervise it with an engine client of its own:
        # the scan runs in its thread and makes that client. Otherwise in a forked child: an idle slot
        # then never holds an engine client (Docker's connection pool) of its own.
        self.jobs.submit("scan", slot_steps.scan, self.runtime, self.factory_name, self.slot,
                         self.state_dir, fork=not self._indexed_machines())

    def _indexed_machines(self) -> list[str]:
        """The machines the slot's index names (none if it has no complete index or cannot be read)."""
        try:
            return indexed_machines(self.state_dir, self.slot) or []
        except OSError as error:
            self._log(logging.WARNING, "cannot read its index of unfinished machines: %s", error)
            return []

    def _on_scan(self, result: JobResult) -> None:
        if isinstance(result.error, (ContainerRuntimeError, OSError)):
            self._retry("scan", result.error)
            return
        if result.error is not None:
            raise result.error
        self._succeeded()
        self.error = None
        plan = result.value
        # A slot with nothing to take over has nothing to say at INFO: with
        # hundreds of slots that line is noise, and each costs the slot memory.
        log.log(logging.INFO if plan.machines or plan.orphans else logging.DEBUG,
                "slot %02d: %d machine(s) to take over, %d container(s) that no record owns",
                self.slot, len(plan.machines), len(plan.orphans))
        if plan.orphans:
            self.orphans = plan.orphans
            self._submit_orphans()
        self.backlog = list(plan.machines)
        self._next_adoption()

    def _submit_orphans(self) -> None:
        for handle in self.orphans:
            log.warning("slot %02d: removing container %s of machine %s: no unfinished record owns it",
                        self.slot, handle.name, handle.machine_uuid)
        self._submit("orphans", slot_steps.remove_containers, self.runtime, self.orphans)

    def _on_orphans(self, result: JobResult) -> None:
        if isinstance(result.error, ContainerRuntimeError):
            self._retry("orphans", result.error)
        elif result.error is not None:
            raise result.error
        else:
            self.orphans = ()

    def _next_adoption(self) -> None:
        """Take over the next machine a predecessor left, or become IDLE."""
        if not self.backlog:
            self.machine = None
            self._set_state(SlotState.IDLE)
            return
        adoption = self.backlog.pop(0)
        record = adoption.record
        paths = MachinePaths.for_machine(self.state_dir, record.machine_uuid)
        self.machine = m = Machine(record.machine_uuid, paths, read_terms(paths), record.shutdown_time,
                                   record=record, handle=adoption.container, cpu_seconds=record.cpu_seconds or 0.0)
        if m.terms is not None:
            m.terms = m.terms.with_shutdown_at(record.shutdown_time)
        self._log(logging.INFO, "taking it over: %s (recorded %s, container %s)", adoption.action.value,
                  record.state, adoption.container.state.value if adoption.container else "none")
        if adoption.action is Adopt.CLEAN:
            self._clean()
        elif adoption.action is Adopt.FINALISE:
            started = slot_rules.adopted_start(record, adoption.container)
            if started is not None and record.started is None:
                # Its worker died before it recorded the start: the engine's time (or when the start was
                # asked for, if the container is gone) makes it accounted like any other.
                self._log(logging.INFO, "its start was not recorded; it started at %.3f", started)
                m.record = dataclasses.replace(record, started=float(started))
                self._save_record(m)
            self._finish(None)
        elif adoption.action is Adopt.FAIL_TO_START:
            self._fail_to_start("its slot worker ended before the container was started")
        elif adoption.action is Adopt.START:
            m.start_deadline = self.clock() + START_DEADLINE_SECONDS
            self._set_state(SlotState.STARTING)
            self._submit_start()
        else:
            self._enter_running(adopted=True)
            if adoption.action is Adopt.STOP:
                self._stop(None)
            elif adoption.action is Adopt.END_EXTRA:
                self._stop(SHUTDOWN_BY_FACTORY)

