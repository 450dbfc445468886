"""The slot's lifecycle as an explicit state machine: events in, effects out.

SlotMachine reacts to the root's messages (on_message), to the results of
the blocking steps it started as jobs (on_jobs, steps in slot_jobs.py), to
joboutputs changes (on_watch) and to time (tick). It never blocks. Every
machine transition reaches the machine's record before it is reported, so a
worker started after a crash resumes from the records and the containers'
labels (adoption).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

from vac.ipc import messages
from vac.machine import mjf
from vac.machine.joboutputs import (EXCEEDED_WALLCLOCK, FAILED_TO_START, SHUTDOWN_BY_FACTORY,
                                    SHUTDOWN_MESSAGE_NAME, JoboutputsDirectory, ShutdownMessage)
from vac.machine.layout import MachinePaths
from vac.machine.prepare import BadTerms, MachineTerms, container_request, prepare_machine, read_terms
from vac.machine.record import MachineRecord, read_record, write_record
from vac.machine.scratch import ScratchError
from vac.machine.userdata import UserDataError
from vac.proctitle import format_elapsed
from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerNotStarted,
                               ContainerRuntimeError, ExitInfo, RuntimeUnavailable)
from vac.vocabulary.slot_states import MachineState, SlotState, check_transition, machine_state
from vac.workers import finalise, slot_jobs, slot_rules
from vac.workers.held_machine import Machine
from vac.workers.jobs import JobResult
from vac.workers.slot_rules import Adopt
from vac.workers.watch import ANY_NAME, JoboutputsWatch

log = logging.getLogger(__name__)

FIRST_STATS_DELAY_SECONDS = 1.0
STATS_INTERVAL_SECONDS = 5.0
# CPU samples reach the record this often, so a restarted worker keeps most of them.
RECORD_CPU_INTERVAL_SECONDS = 60.0
# How long an unavailable engine may delay a start before the machine fails.
START_DEADLINE_SECONDS = 300.0
FIRST_GENERATION = 1
# Expected failures of preparing a machine: each ends it as 700 Failed to start.
PREPARE_ERRORS = (UserDataError, ScratchError, OSError, ValueError)
# The engine timeout a slot assumes when it is not told (runtimes/docker.py's default).
DEFAULT_ENGINE_TIMEOUT_SECONDS = 30.0


class SlotMachine:
    """One slot: adoption, then IDLE → PREPARING → STARTING → RUNNING → STOPPING → FINISHING → CLEANING → IDLE."""

    def __init__(self, *, slot: int, factory_name: str, state_dir, runtime, jobs,
                 report: Callable[..., None], send: Callable[[Any], None], clock: Callable[[], float] = time.time,
                 watch_factory=JoboutputsWatch, prepare=prepare_machine,
                 engine_timeout: float = DEFAULT_ENGINE_TIMEOUT_SECONDS) -> None:
        self.slot = slot
        self.factory_name = factory_name
        self.state_dir = state_dir
        self.runtime = runtime
        self.jobs = jobs
        self._report_to_root = report
        self._send = send
        self.clock = clock
        self._watch_factory = watch_factory
        self._prepare = prepare
        self.engine_timeout = engine_timeout
        self.state = SlotState.ADOPTING
        self.state_since = clock()
        # The state's deadline counts from here: its start, or its last sign of
        # progress (a step retried, the engine asked again).
        self.progress_at = self.state_since
        self._overdue_noted: float | None = None
        self.machine: Machine | None = None
        self.backlog: list[slot_rules.Adoption] = []
        self.orphans: tuple[ContainerHandle, ...] = ()
        self.retries: dict[str, tuple[float, Callable[[], None]]] = {}
        self.unavailable: str | None = None   # the engine's error while it does not answer
        self.failures = 0                     # consecutive failed attempts, for the backoff
        self.error: str | None = None         # a problem the root should show (refused placement …)
        self._record_error = False            # self.error says a record could not be written
        self._last_report = None

    # ------------------------------------------------------------ what the root and ps see

    def reported_state(self) -> SlotState:
        return SlotState.UNAVAILABLE if self.unavailable is not None else self.state

    def detail(self) -> dict:
        """StateReport.detail: {slot, machine: None or Machine.summary(), error: None or text}."""
        machine = self.machine.summary() if self.machine is not None else None
        return {"slot": self.slot, "machine": machine, "error": self.unavailable or self.error}

    def _report(self, force: bool = False) -> None:
        state, detail = self.reported_state(), self.detail()
        if force or (state, detail) != self._last_report:
            self._last_report = (state, detail)
            self._report_to_root(state.value, **detail)

    def title(self, now: float) -> str:
        """The process title after 'vacd: ', e.g. 'slot 03 lhcb-dc-prod running 2:13:05'."""
        state = self.reported_state().value
        m = self.machine
        if m is None:
            # '-' holds the machinetype's place, so the columns of `ps` line up.
            return f"slot {self.slot:02d} - {state} {format_elapsed(now - self.state_since)}"
        since = m.started_at if self.state in (SlotState.RUNNING, SlotState.STOPPING) else self.state_since
        return f"slot {self.slot:02d} {m.machinetype} {state} {format_elapsed(now - since)}"

    def _set_state(self, state: SlotState) -> None:
        if state is not self.state:
            self.state = state
            self.state_since = self.progress_at = self.clock()
        self._report()

    def deadline(self) -> float | None:
        """When the slot's state must have changed (on self.clock), or None while nothing is due."""
        m = self.machine
        return slot_rules.state_deadline(self.state, self.progress_at, self.engine_timeout,
                                         shutdown_at=m.shutdown_at if m is not None else None,
                                         stop_grace=m.stop_grace if m is not None else 0.0)

    def progress(self) -> tuple[str, float | None]:
        """What heartbeats carry: the reported state and deadline() (on self.clock)."""
        return self.reported_state().value, self.deadline()

    def _log(self, level: int, text: str, *args: Any) -> None:
        uuid = self.machine.uuid if self.machine is not None else "-"
        log.log(level, "slot %02d machine %s: " + text, self.slot, uuid, *args)

    # ------------------------------------------------------------ events

    def start(self) -> None:
        """Begin by looking for what a predecessor left in this slot (ADOPTING)."""
        self._set_state(SlotState.ADOPTING)
        self._submit_scan()

    def fds(self) -> list:
        """What the loop selects on besides the channel."""
        fds = [self.jobs]
        if self.machine is not None and self.machine.watch is not None:
            fds.append(self.machine.watch)
        return fds

    def on_message(self, msg) -> None:
        """A message from the root."""
        if isinstance(msg, messages.Place):
            self._on_place(msg.machine)
        elif isinstance(msg, messages.EndMachine):
            self._on_end_machine(msg)
        elif isinstance(msg, messages.LowerShutdown):
            self._on_lower_shutdown(msg)
        else:
            log.warning("slot %02d: ignoring an unexpected %s message", self.slot, type(msg).__name__)

    def on_jobs(self, results: list[JobResult]) -> None:
        """Results of finished jobs; those of a machine no longer here are dropped."""
        for result in results:
            if result.token is not None and (self.machine is None or result.token != self.machine.uuid):
                log.debug("slot %02d: dropping the %s result of machine %s", self.slot, result.name, result.token)
                if result.name == "stop" and self.state is SlotState.STOPPING:
                    # The current machine's stop waited for this stale one to end.
                    self._submit_stop()
                elif result.name == "wait" and self._wants_wait():
                    self._submit_wait()
                continue
            getattr(self, f"_on_{result.name}")(result)

    def on_watch(self) -> None:
        """joboutputs changed: note a new shutdown_message, look at the heartbeat file again."""
        m = self.machine
        if m is None or m.watch is None:
            return
        names = m.watch.changed()
        if SHUTDOWN_MESSAGE_NAME in names or ANY_NAME in names:
            reading = finalise.read_message(m.paths)
            if reading.message is not None and reading.message.line() != m.seen_message:
                m.seen_message = reading.message.line()
                self._log(logging.INFO, "the machine wrote shutdown_message %r", m.seen_message)
        if m.terms is not None and (m.terms.heartbeat_file in names or ANY_NAME in names):
            m.heartbeat_check_at = None

    def tick(self) -> float | None:
        """Act on what is due now; return when something next falls due (None: nothing is timed)."""
        now = self.clock()
        for name, (due, call) in list(self.retries.items()):
            if now >= due:
                del self.retries[name]
                call()
        m = self.machine
        if m is not None and m.handle is not None and self.state is SlotState.RUNNING:
            self._check_limits(m, now)
        if self._container_live(m):
            if m.next_stats_at is not None and now >= m.next_stats_at and not self.jobs.running("stats"):
                m.next_stats_at = now + STATS_INTERVAL_SECONDS
                self._submit("stats", self.runtime.stats, m.handle)
        if self.state is not SlotState.RUNNING and slot_rules.is_overdue(self.deadline(), now):
            # RUNNING's deadline is the shutdown time, which _check_limits keeps.
            self._on_overdue(now)
        return self._next_wake(now)

    def _container_live(self, m: Machine | None) -> bool:
        return m is not None and m.handle is not None and self.state in (SlotState.RUNNING, SlotState.STOPPING)

    def _next_wake(self, now: float) -> float | None:
        """The next moment something can be done; never a past one, or the loop would spin."""
        times = [due for due, _ in self.retries.values()]
        m = self.machine
        if m is not None and m.handle is not None and self.state is SlotState.RUNNING:
            times.append(m.shutdown_at)
            if m.heartbeat_check_at is not None:
                times.append(m.heartbeat_check_at)
        # A sample due while one is under way waits for it: its result wakes the loop.
        if self._container_live(m) and m.next_stats_at is not None and not self.jobs.running("stats"):
            times.append(m.next_stats_at)
        deadline = self.deadline()
        if deadline is not None and deadline > now:
            # Past it, tick() has acted already, or only the supervisor can.
            times.append(deadline)
        return min(times) if times else None

    def _on_overdue(self, now: float) -> None:
        """The state's deadline has passed: ask the engine again, or repeat a step that is not under way."""
        m = self.machine
        deadline = self.deadline()
        if self.state is SlotState.STOPPING and not self.jobs.running("recheck"):
            self._log(logging.WARNING, "still stopping %.0f s after the stop was asked for: asking the engine how "
                      "the container stands, and killing it if it runs", now - self.state_since)
            self.progress_at = now
            self._submit("recheck", slot_jobs.recheck, self.runtime, m.handle)
            return
        steps = {SlotState.FINISHING: ("finish", self._submit_finish),
                 SlotState.CLEANING: ("clean", self._submit_clean)}
        name, submit = steps.get(self.state, (None, None))
        if name is not None and not self.jobs.running(name) and name not in self.retries:
            self._log(logging.WARNING, "still %s after its deadline with no %s under way: doing it again",
                      self.state.value, name)
            self.progress_at = now
            submit()
            return
        if self._overdue_noted != deadline:
            # The step's job does not return (a hung disk, a call stuck in the kernel): a
            # worker cannot cut it short, so its heartbeats say so and the supervisor restarts it.
            self._overdue_noted = deadline
            self._log(logging.ERROR, "still %s %.0f s after it began, past its deadline: a step does not return; "
                      "the supervisor restarts a worker stuck past its deadline", self.state.value,
                      now - self.state_since)

    # ------------------------------------------------------------ jobs and retries

    def _submit(self, name: str, call: Callable[..., Any], *args: Any) -> None:
        token = self.machine.uuid if self.machine is not None and name not in ("scan", "orphans") else None
        self.jobs.submit(name, call, *args, token=token)

    def _retry(self, name: str, error: Exception, call: Callable[[], None]) -> None:
        """Run `call` again after a backoff (1, 2, 4 … 30 s); engine errors make the slot unavailable."""
        delay = slot_rules.retry_delay(self.failures)
        self.failures += 1
        if isinstance(error, ContainerRuntimeError):
            self.unavailable = str(error)
        else:
            self.error = f"{name}: {error}"
        due = self.clock() + delay
        self.retries[name] = (due, call)
        # A step that failed and waits to be tried again is progress: its deadline counts from the retry.
        self.progress_at = max(self.progress_at, due)
        self._log(logging.WARNING, "%s failed: %s; trying again in %.0f s", name, error, delay)
        self._report()

    def _write(self, m: Machine) -> OSError | None:
        """Store the machine's record; the error if the disk refused it (full, failing)."""
        try:
            write_record(m.paths, m.record)
        except OSError as error:
            return error
        if self._record_error:
            self._record_error = False
            self.error = None
            self._report()
        return None

    def _save_record(self, m: Machine) -> None:
        """Store the machine's record; a refused write is reported and tried again, never a crash."""
        error = self._write(m)
        if error is not None:
            self._record_error = True
            # Bound to this machine: a retry writes its latest record, even once the slot has moved on.
            self._retry("record", error, lambda: self._save_record(m))

    def _transition(self, m: Machine, new_state: MachineState, **changes: Any) -> None:
        """The machine's record in `new_state`, kept in memory and stored (see _save_record)."""
        check_transition(machine_state(m.record.state), new_state)
        m.record = dataclasses.replace(m.record, state=new_state.value, **changes)
        self._save_record(m)

    def _succeeded(self) -> None:
        """A step worked: the engine answers and the backoff starts again from 1 s."""
        self.failures = 0
        if self.unavailable is not None:
            self.unavailable = None
            log.info("slot %02d: the container engine answers again", self.slot)
            # What waited out the outage need not wait out the rest of its backoff.
            now = self.clock()
            self.retries = {name: (min(due, now), call) for name, (due, call) in self.retries.items()}
            self._report()

    # ------------------------------------------------------------ ADOPTING

    def _submit_scan(self) -> None:
        # In a forked child: an idle slot then never holds a Docker client of its own.
        self.jobs.submit("scan", slot_jobs.scan, self.runtime, self.factory_name, self.slot,
                         self.state_dir, fork=True)

    def _on_scan(self, result: JobResult) -> None:
        if isinstance(result.error, (ContainerRuntimeError, OSError)):
            self._retry("scan", result.error, self._submit_scan)
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
        self._submit("orphans", slot_jobs.remove_containers, self.runtime, self.orphans)

    def _on_orphans(self, result: JobResult) -> None:
        if isinstance(result.error, ContainerRuntimeError):
            self._retry("orphans", result.error, self._submit_orphans)
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

    # ------------------------------------------------------------ IDLE → PREPARING

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
        self._submit("prepare", slot_jobs.prepare, terms, paths, record, now, self._prepare)

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
            finalise.write_message_if_none(m.paths, m.end_request)
            m.fallback = m.end_request
            self._finish(None)
            return
        try:
            m.request = container_request(m.terms, m.paths, list(result.value.tmp_binds), FIRST_GENERATION)
        except ValueError as error:
            self._fail_to_start(str(error))
            return
        self._transition(m, MachineState.STARTING, generation=FIRST_GENERATION)
        m.start_deadline = self.clock() + START_DEADLINE_SECONDS
        self._set_state(SlotState.STARTING)
        self._submit_start()

    # ------------------------------------------------------------ STARTING

    def _submit_start(self) -> None:
        """Create the container if there is none yet, else record that its start is asked for and start it."""
        m = self.machine
        if m.handle is None:
            self._submit("create", slot_jobs.create, self.runtime, m.request)
            return
        # Durably before the call: a worker killed while the engine starts the
        # container leaves its successor a start to account for.
        m.record = dataclasses.replace(m.record, start_requested=self.clock())
        error = self._write(m)
        if error is not None:
            if self.clock() < m.start_deadline:
                self._retry("start", error, self._submit_start)
            else:
                self._fail_to_start(f"its start cannot be recorded: {error}")
            return
        self._submit("start", slot_jobs.start, self.runtime, m.handle, self.state_dir, self.factory_name, m.record)

    def _start_failed(self, error: Exception | None) -> bool:
        """Handle a failed create or start (retry or fail the machine); False if it did not fail."""
        if isinstance(error, RuntimeUnavailable) and self.clock() < self.machine.start_deadline:
            self._retry("start", error, self._submit_start)
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

    # ------------------------------------------------------------ RUNNING

    def _enter_running(self, adopted: bool) -> None:
        m = self.machine
        now = self.clock()
        state = machine_state(m.record.state)
        if state is MachineState.PREPARING:
            # A container exists, so the machine got past PREPARING whatever its record says.
            self._transition(m, MachineState.STARTING)
            state = MachineState.STARTING
        if state is MachineState.STARTING:
            self._transition(m, MachineState.RUNNING, container_id=m.handle.id,
                             started=float(m.handle.started_at or now))
        try:
            m.watch = self._watch_factory(m.paths.joboutputs)
        except OSError as error:
            # The heartbeat check and the final read do not depend on the watch.
            self._log(logging.WARNING, "not watching joboutputs: %s", error)
        m.next_stats_at = now + FIRST_STATS_DELAY_SECONDS
        m.cpu_saved_at = now
        self._log(logging.INFO, "%s container %s, shutdown at %d", "adopted" if adopted else "started",
                  m.handle.id[:12], m.shutdown_at)
        self._set_state(SlotState.STOPPING if state is MachineState.STOPPING else SlotState.RUNNING)
        self._submit_wait()
        if m.end_request is not None and self.state is SlotState.RUNNING:
            self._stop(m.end_request)

    def _submit_wait(self) -> None:
        # A wait left over from the previous machine is let run out; its result submits this one.
        if not self.jobs.running("wait"):
            self._submit("wait", slot_jobs.wait, self.runtime, self.machine.handle)

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
            self._retry("wait", error, self._submit_wait)
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
            self._retry("shutdown_time", error, lambda: self._apply_shutdown_time(m) if m is self.machine else None)

    # ------------------------------------------------------------ STOPPING

    def _stop(self, message: ShutdownMessage | None) -> None:
        """End the running container: SIGTERM, grace, SIGKILL; write `message` unless it has one."""
        m = self.machine
        m.stop_grace = slot_rules.grace_seconds(message) if message is not None else slot_rules.END_GRACE_SECONDS
        # The engine first: a full or failing state disk must not hold back the limit.
        self._submit_stop()
        self._set_state(SlotState.STOPPING)
        if message is not None:
            finalise.write_message_if_none(m.paths, message)
        if machine_state(m.record.state) is not MachineState.STOPPING:
            self._transition(m, MachineState.STOPPING)
        m.next_stats_at = self.clock()   # a last CPU sample while the engine still has one

    def _submit_stop(self) -> None:
        m = self.machine
        if not self.jobs.running("stop"):
            self._submit("stop", slot_jobs.stop, self.runtime, m.handle, m.stop_grace)

    def _on_stop(self, result: JobResult) -> None:
        error = result.error
        if self.state is not SlotState.STOPPING or isinstance(error, ContainerGone):
            return  # the wait learns how it ended
        if isinstance(error, ContainerRuntimeError):
            self._retry("stop", error, self._submit_stop)
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
        finalise.write_message_if_none(m.paths, FAILED_TO_START)
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
        self._submit("finish", slot_jobs.finish, self.runtime, m.paths, m.record, m.terms, m.handle, m.exit_info,
                     m.cpu_seconds, self.clock(), m.fallback)

    def _on_finish(self, result: JobResult) -> None:
        m = self.machine
        if isinstance(result.error, (ContainerRuntimeError, OSError)):
            self._retry("finish", result.error, self._submit_finish)
            return
        if result.error is not None:
            raise result.error
        self._succeeded()
        self.error = None
        m.record = record = result.value
        self._send_finished(m, record.shutdown_code, record.shutdown_text or "", m.started_at, record.ended,
                            record.cpu_seconds or 0.0)
        self._transition(m, MachineState.CLEANING)
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
        self._submit("clean", slot_jobs.clean, self.runtime, self.factory_name, self.slot, m.paths, m.terms)

    def _on_clean(self, result: JobResult) -> None:
        m = self.machine
        if isinstance(result.error, ContainerRuntimeError):
            self._retry("clean", result.error, self._submit_clean)
            return
        if isinstance(result.error, (ScratchError, OSError)):
            # Left for the reaper: a busy mount must not keep the slot from new machines.
            self._log(logging.ERROR, "cannot destroy its scratch space: %s", result.error)
        elif result.error is not None:
            raise result.error
        else:
            self._succeeded()
        if machine_state(m.record.state) is MachineState.CLEANING:
            self._transition(m, MachineState.DONE)
        self._log(logging.INFO, "cleaned up; its directory stays")
        self._done()

    def _done(self) -> None:
        m = self.machine
        if m is not None and m.watch is not None:
            m.watch.close()
        self.machine = None
        self._next_adoption()
