"""RUNNING: the container waited for, its CPU sampled, its limits kept, and the root's requests about it."""

from __future__ import annotations

import dataclasses
import logging

from vac.ipc import messages
from vac.machine import mjf
from vac.machine.joboutputs import EXCEEDED_WALLCLOCK, JoboutputsDirectory, ShutdownMessage
from vac.runtimes.base import ContainerGone, ContainerNotStarted, ContainerRuntimeError
from vac.vocabulary.labels import shown_id
from vac.workers import slot_rules, slot_steps
from vac.workers.held_machine import Machine
from vac.workers.job_runner import JobResult
from vac.vocabulary.slot_states import MachineState, SlotState, machine_state

log = logging.getLogger(__name__)

FIRST_STATS_DELAY_SECONDS = 1.0
STATS_INTERVAL_SECONDS = 5.0
# While the engine does not answer, a running slot's CPU sample is its probe of
# the engine, asked this often: the slot reports its machine supervised again
# within about this long of the engine's return, not up to a whole interval.
ENGINE_PROBE_SECONDS = 1.0
# CPU samples reach the record this often, so a restarted worker keeps most of them.
RECORD_CPU_INTERVAL_SECONDS = 60.0


class RunningSteps:
    """SlotMachine's RUNNING state, and EndMachine and LowerShutdown from the root (see machine_run.py)."""

    def _enter_running(self, adopted: bool) -> None:
        m = self.machine
        now = self.clock()
        state = machine_state(m.record.state)
        if state is MachineState.PREPARING:
            # A container exists, so the machine got past PREPARING whatever its record says.
            self._record_state(m, MachineState.STARTING)
            state = MachineState.STARTING
        if state is MachineState.STARTING:
            self._record_state(m, MachineState.RUNNING, container_id=m.handle.id,
                             started=float(m.handle.started_at or now))
        try:
            m.watch = self._watch_factory(m.paths.joboutputs)
        except OSError as error:
            # The heartbeat check and the final read do not depend on the watch.
            self._log(logging.WARNING, "not watching joboutputs: %s", error)
        m.next_stats_at = now + FIRST_STATS_DELAY_SECONDS
        m.cpu_saved_at = now
        self._log(logging.INFO, "%s container %s, shutdown at %d", "adopted" if adopted else "started",
                  shown_id(m.handle.id), m.shutdown_at)
        self._set_state(SlotState.STOPPING if state is MachineState.STOPPING else SlotState.RUNNING)
        self._submit_wait()
        if m.end_request is not None and self.state is SlotState.RUNNING:
            self._stop(m.end_request)

    def _submit_wait(self) -> None:
        # A wait left over from the previous machine is let run out; its result submits this one.
        if not self.jobs.running("wait"):
            self._submit("wait", slot_steps.wait, self.runtime, self.machine.handle)

    def _wants_wait(self) -> bool:
        return (self._container_live(self.machine) and not self.jobs.running("wait") and "wait" not in self.retries)

    def _on_wait(self, result: JobResult) -> None:
        if self.state not in (SlotState.RUNNING, SlotState.STOPPING):
            return  # a re-check after the stop's deadline found the end first
        error = result.error
        if isinstance(error, (ContainerGone, ContainerNotStarted)):
            self._succeeded()
            self._log(logging.WARNING, "%s: finishing it", error)
            self._finish(None)
        elif isinstance(error, ContainerRuntimeError):
            self._retry("wait", error)
        elif error is not None:
            raise error
        elif result.value is None:
            self._succeeded()
            self._submit_wait()
        else:
            self._succeeded()
            self._log(logging.INFO, "the container exited with code %d%s", result.value.exit_code,
                      " (killed for lack of memory)" if result.value.oom_killed else "")
            self._finish(result.value)

    def _on_stats(self, result: JobResult) -> None:
        m = self.machine
        if self.state not in (SlotState.RUNNING, SlotState.STOPPING):
            return  # too late: the outcome is being fixed
        if isinstance(result.error, ContainerRuntimeError):
            self._log(logging.DEBUG, "no CPU sample: %s", result.error)
            if self.unavailable is not None and m.next_stats_at is not None:
                m.next_stats_at = min(m.next_stats_at, self.clock() + ENGINE_PROBE_SECONDS)
            return
        if result.error is not None:
            raise result.error
        # The wait that failed in an outage may, once retried, block for a whole
        # chunk: a CPU sample is what tells a running slot the engine is back.
        self._succeeded()
        m.cpu_seconds = max(m.cpu_seconds, result.value.cpu_seconds)
        if result.value.sampled_at is not None and (m.record.last_seen or 0.0) < result.value.sampled_at:
            # Evidence of life, should its end never be seen; stored with the CPU figure.
            m.record = dataclasses.replace(m.record, last_seen=result.value.sampled_at)
        now = self.clock()
        if now - m.cpu_saved_at >= RECORD_CPU_INTERVAL_SECONDS:
            m.cpu_saved_at = now
            m.record = dataclasses.replace(m.record, cpu_seconds=m.cpu_seconds)
            self._save_record(m)
            # The root answers the space's machines queries with it.
            self._report()

    def _check_limits(self, m: Machine, now: float) -> None:
        if slot_rules.wall_limit_reached(now, m.shutdown_at):
            self._log(logging.INFO, "reached its shutdown time %d", m.shutdown_at)
            self._stop(EXCEEDED_WALLCLOCK)
            return
        terms = m.terms
        if terms is None or not terms.heartbeat_file or terms.heartbeat_seconds <= 0:
            return
        if m.heartbeat_check_at is not None and now < m.heartbeat_check_at:
            return
        try:
            with JoboutputsDirectory(m.paths.joboutputs) as joboutputs:
                age = joboutputs.heartbeat_age(terms.heartbeat_file, now)
        except OSError as error:
            self._log(logging.WARNING, "cannot look at heartbeat file %s: %s", terms.heartbeat_file, error)
            age = None
        args = (now, m.started_at, terms.fizzle_seconds, terms.heartbeat_file, terms.heartbeat_seconds, age)
        verdict = slot_rules.heartbeat_verdict(*args)
        if verdict is not None:
            self._log(logging.INFO, "heartbeat file %s: %s", terms.heartbeat_file, verdict.text)
            self._stop(verdict)
        else:
            m.heartbeat_check_at = slot_rules.next_heartbeat_check(*args)

    # ------------------------------------------------------------ the root's requests

    def _is_current(self, uuid: str, what: str) -> bool:
        if self.machine is not None and self.machine.uuid == uuid:
            return True
        log.warning("slot %02d: ignoring %s for machine %s, which is not in this slot", self.slot, what, uuid)
        return False

    def _on_end_machine(self, msg: messages.EndMachine) -> None:
        if not self._is_current(msg.uuid, "EndMachine"):
            return
        message = ShutdownMessage(msg.code, msg.text)
        if self.state in (SlotState.PREPARING, SlotState.STARTING):
            self._log(logging.INFO, "asked to end (%s) while %s", message.line(), self.state.value)
            self.machine.end_request = message
        elif self.state is SlotState.RUNNING:
            self._log(logging.INFO, "asked to end: %s", message.line())
            self._stop(message)
        else:
            self._log(logging.INFO, "asked to end while %s: it is ending already", self.state.value)

    def _on_lower_shutdown(self, msg: messages.LowerShutdown) -> None:
        if not self._is_current(msg.uuid, "LowerShutdown"):
            return
        m = self.machine
        if msg.shutdown_at >= m.shutdown_at or self.state not in (
                SlotState.PREPARING, SlotState.STARTING, SlotState.RUNNING):
            return
        m.shutdown_at = int(msg.shutdown_at)
        if m.terms is not None:
            m.terms = m.terms.with_shutdown_at(m.shutdown_at)
        if self.state is not SlotState.PREPARING:
            # While PREPARING the job writes the MJF; _on_prepare lowers them afterwards.
            self._apply_shutdown_time(m)
        self._report()

    def _apply_shutdown_time(self, m: Machine) -> None:
        # The limit is kept from m.shutdown_at whatever the disk does; the files tell the payload and a successor.
        m.record = dataclasses.replace(m.record, shutdown_time=m.shutdown_at)
        self._save_record(m)
        try:
            mjf.rewrite_shutdown_time(m.paths, m.shutdown_at)
        except OSError as error:
            self._retry("shutdown_time", error, m)

