"""STOPPING → FINISHING → CLEANING: the container ended, the outcome fixed and reported, what is left removed."""

from __future__ import annotations

import logging

from vac.ipc import messages
from vac.machine.joboutputs import FAILED_TO_START, ShutdownMessage
from vac.machine.scratch import ScratchError
from vac.runtimes.base import ContainerGone, ContainerRuntimeError, ExitInfo
from vac.workers import finishing, slot_rules, slot_steps
from vac.workers.held_machine import Machine
from vac.workers.job_runner import JobResult
from vac.vocabulary.slot_states import MachineState, SlotState, machine_state

log = logging.getLogger(__name__)


class EndingSteps:
    """SlotMachine's STOPPING, FINISHING and CLEANING states (see machine_run.py)."""

    def _stop(self, message: ShutdownMessage | None) -> None:
        """End the running container: SIGTERM, grace, SIGKILL; write `message` unless it has one."""
        m = self.machine
        m.stop_grace = slot_rules.stop_grace_seconds(message) if message is not None else slot_rules.END_GRACE_SECONDS
        # The engine first: a full or failing state disk must not hold back the limit.
        self._submit_stop()
        self._set_state(SlotState.STOPPING)
        if message is not None:
            finishing.write_message_if_none(m.paths, message)
        if machine_state(m.record.state) is not MachineState.STOPPING:
            self._record_state(m, MachineState.STOPPING)
        m.next_stats_at = self.clock()   # a last CPU sample while the engine still has one

    def _submit_stop(self) -> None:
        m = self.machine
        if not self.jobs.running("stop"):
            self._submit("stop", slot_steps.stop, self.runtime, m.handle, m.stop_grace)

    def _on_stop(self, result: JobResult) -> None:
        error = result.error
        if self.state is not SlotState.STOPPING or isinstance(error, ContainerGone):
            return  # the wait learns how it ended
        if isinstance(error, ContainerRuntimeError):
            self._retry("stop", error)
            return
        if error is not None:
            raise error
        self._succeeded()
        if "wait" in self.retries:
            # The container has exited: learn it now rather than after the wait's backoff.
            del self.retries["wait"]
            self._submit_wait()

    def _on_recheck(self, result: JobResult) -> None:
        if self.state is not SlotState.STOPPING:
            return  # the wait learnt the end first
        error = result.error
        if isinstance(error, ContainerGone):
            self._succeeded()
            self._log(logging.WARNING, "%s: finishing it", error)
            self._finish(None)
        elif isinstance(error, ContainerRuntimeError):
            self._log(logging.WARNING, "the engine did not say how the container stands (%s): asking again at "
                      "the next deadline", error)
        elif error is not None:
            raise error
        elif result.value is None:
            self._succeeded()
            self._log(logging.ERROR, "the container still runs after SIGKILL: asking again at the next deadline")
        else:
            self._succeeded()
            self._log(logging.INFO, "the engine says the container exited with code %d: finishing it",
                      result.value.exit_code)
            self._finish(result.value)

    # ------------------------------------------------------------ FINISHING

    def _fail_to_start(self, reason: str) -> None:
        m = self.machine
        self._log(logging.ERROR, "failed to start: %s", reason)
        m.fallback = FAILED_TO_START
        if m.record is None:
            # Not even its directory and record could be made: nothing to finalise on disk.
            now = self.clock()
            self._send_finished(m, FAILED_TO_START.code, FAILED_TO_START.text, m.started_at, now, 0.0)
            self._done()
            return
        finishing.write_message_if_none(m.paths, FAILED_TO_START)
        self._finish(None)

    def _finish(self, exit_info: ExitInfo | None) -> None:
        m = self.machine
        m.exit_info = exit_info
        if m.watch is not None:
            m.watch.close()
            m.watch = None
        for name in ("wait", "stop", "start", "shutdown_time"):
            self.retries.pop(name, None)
        self._set_state(SlotState.FINISHING)
        self._submit_finish()

    def _submit_finish(self) -> None:
        m = self.machine
        self._submit("finish", slot_steps.finish, self.runtime, m.paths, m.record, m.terms, m.handle, m.exit_info,
                     m.cpu_seconds, self.clock(), m.fallback)

    def _on_finish(self, result: JobResult) -> None:
        m = self.machine
        if isinstance(result.error, (ContainerRuntimeError, OSError)):
            self._retry("finish", result.error)
            return
        if result.error is not None:
            raise result.error
        self._succeeded()
        self.error = None
        m.record = record = result.value
        self._send_finished(m, record.shutdown_code, record.shutdown_text or "", m.started_at, record.ended,
                            record.cpu_seconds or 0.0)
        self._record_state(m, MachineState.CLEANING)
        self._clean()

    def _send_finished(self, m: Machine, code: int | None, text: str, started: float, ended: float,
                       cpu_seconds: float) -> None:
        self._log(logging.INFO, "finished: %s %s", code, text)
        self._send(messages.MachineFinished(
            uuid=m.uuid, machinetype=m.machinetype, started_at=float(started), ended_at=float(ended), code=code,
            text=text, processors=m.processors, cpu_seconds=float(cpu_seconds)))

    # ------------------------------------------------------------ CLEANING

    def _clean(self) -> None:
        self._set_state(SlotState.CLEANING)
        self._submit_clean()

    def _submit_clean(self) -> None:
        m = self.machine
        self._submit("clean", slot_steps.clean, self.runtime, self.factory_name, self.slot, m.paths, m.terms,
                     m.handle)

    def _on_clean(self, result: JobResult) -> None:
        m = self.machine
        if isinstance(result.error, ContainerRuntimeError):
            self._retry("clean", result.error)
            return
        if isinstance(result.error, (ScratchError, OSError)):
            # Left for the reaper: a busy mount must not keep the slot from new machines.
            self._log(logging.ERROR, "cannot destroy its scratch space: %s", result.error)
        elif result.error is not None:
            raise result.error
        else:
            self._succeeded()
        if machine_state(m.record.state) is MachineState.CLEANING:
            self._record_state(m, MachineState.DONE)
        self._log(logging.INFO, "cleaned up; its directory stays")
        self._done()

    def _done(self) -> None:
        m = self.machine
        if m is not None and m.watch is not None:
            m.watch.close()
        self.machine = None
        self._next_adoption()
