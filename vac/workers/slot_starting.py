"""IDLE → PREPARING → STARTING: a placement checked, the machine prepared, its container created and started."""

from __future__ import annotations

import dataclasses
import logging
import os

from vac.machine.layout import MachinePaths
from vac.machine.prepare import BadTerms, MachineTerms, container_request
from vac.machine.record import MachineRecord, read_record
from vac.machine.scratch import ScratchError
from vac.machine.userdata import UserDataError
from vac.runtimes.base import ContainerRuntimeError, RuntimeUnavailable
from vac.workers import finishing, slot_steps
from vac.workers.held_machine import Machine
from vac.workers.job_runner import JobResult
from vac.workers.slot_adopting import START_DEADLINE_SECONDS
from vac.vocabulary.slot_states import MachineState, SlotState

log = logging.getLogger(__name__)

FIRST_GENERATION = 1
# Expected failures of preparing a machine: each ends it as 700 Failed to start.
PREPARE_ERRORS = (UserDataError, ScratchError, OSError, ValueError)


class StartingSteps:
    """SlotMachine's IDLE, PREPARING and STARTING states (see machine_run.py)."""

    def _refuse(self, why: str) -> None:
        log.error("slot %02d: refusing a placement: %s", self.slot, why)
        self.error = f"placement refused: {why}"
        # Always answered, so the root never waits for a placement that will not happen.
        self._report(force=True)

    def _on_place(self, spec: dict) -> None:
        if self.state is not SlotState.IDLE or self.unavailable is not None:
            self._refuse(f"the slot is {self.reported_state().value}, not idle")
            return
        try:
            terms = MachineTerms.from_spec(spec)
        except (BadTerms, ValueError) as error:
            self._refuse(str(error))
            return
        paths = MachinePaths.for_machine(self.state_dir, terms.uuid)
        if terms.slot != self.slot:
            self._refuse(f"machine {terms.uuid} is for slot {terms.slot}")
        elif os.path.realpath(terms.state_dir) != os.path.realpath(self.state_dir):
            self._refuse(f"machine {terms.uuid} is for state directory {terms.state_dir}, not {self.state_dir}")
        elif os.path.lexists(paths.root):
            self._refuse(f"machine {terms.uuid} already has a directory")
        else:
            self._place(terms, paths)

    def _place(self, terms: MachineTerms, paths: MachinePaths) -> None:
        self.error = None
        now = self.clock()
        self.machine = Machine(terms.uuid, paths, terms, terms.shutdown_at)
        record = MachineRecord(
            machine_uuid=terms.uuid, slot=self.slot, machine_name=terms.machine_name,
            machinetype=terms.machinetype_name, machine_model=terms.machinetype["machine_model"],
            processors=terms.processors, created=now, shutdown_time=terms.shutdown_at,
            state=MachineState.PREPARING.value)
        self._log(logging.INFO, "placed: %s on %d processor(s) until %d", terms.machinetype_name,
                  terms.processors, terms.shutdown_at)
        self._set_state(SlotState.PREPARING)
        self._submit("prepare", slot_steps.prepare, terms, paths, record, now, self._prepare, self.runtime)

    def _on_prepare(self, result: JobResult) -> None:
        m = self.machine
        m.record = read_record(m.paths)
        if isinstance(result.error, PREPARE_ERRORS):
            self._fail_to_start(str(result.error))
            return
        if result.error is not None:
            raise result.error
        if m.record is None:
            self._fail_to_start(f"its record {m.paths.record} cannot be read back")
            return
        if m.shutdown_at < m.record.shutdown_time:
            self._apply_shutdown_time(m)   # lowered while the MJF were being written
        if m.end_request is not None:
            self._log(logging.INFO, "ended before its container started: %s", m.end_request.line())
            finishing.write_message_if_none(m.paths, m.end_request)
            m.fallback = m.end_request
            self._finish(None)
            return
        try:
            m.request = container_request(m.terms, m.paths, list(result.value.tmp_binds), FIRST_GENERATION,
                                          result.value.urls)
        except ValueError as error:
            self._fail_to_start(str(error))
            return
        self._record_state(m, MachineState.STARTING, generation=FIRST_GENERATION)
        m.start_deadline = self.clock() + START_DEADLINE_SECONDS
        self._set_state(SlotState.STARTING)
        self._submit_start()

    # ------------------------------------------------------------ STARTING

    def _submit_start(self) -> None:
        """Create the container if there is none yet, else record that its start is asked for and start it."""
        m = self.machine
        if m.handle is None:
            self._submit("create", slot_steps.create, self.runtime, m.request)
            return
        # Durably before the call: a worker killed while the engine starts the
        # container leaves its successor a start to account for.
        m.record = dataclasses.replace(m.record, start_requested=self.clock())
        error = self._write(m)
        if error is not None:
            if self.clock() < m.start_deadline:
                self._retry("start", error)
            else:
                self._fail_to_start(f"its start cannot be recorded: {error}")
            return
        self._submit("start", slot_steps.start, self.runtime, m.handle, self.state_dir, self.factory_name, m.record)

    def _start_failed(self, error: Exception | None) -> bool:
        """Handle a failed create or start (retry or fail the machine); False if it did not fail."""
        if isinstance(error, RuntimeUnavailable) and self.clock() < self.machine.start_deadline:
            self._retry("start", error)
            return True
        if isinstance(error, ContainerRuntimeError):
            # The image is missing, the engine refused, or it stayed unavailable too long.
            self._fail_to_start(str(error))
            return True
        if error is not None:
            raise error
        return False

    def _on_create(self, result: JobResult) -> None:
        if self._start_failed(result.error):
            return
        self._succeeded()
        self.machine.handle = result.value
        self._submit_start()

    def _on_start(self, result: JobResult) -> None:
        if self._start_failed(result.error):
            return
        self._succeeded()
        self.machine.handle = result.value
        self._enter_running(adopted=False)

