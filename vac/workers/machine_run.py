"""The slot's lifecycle as one explicit state machine: events in, effects out.

SlotMachine reacts to the root's messages (on_message), to the results of
the blocking steps it started as jobs (on_jobs, steps in slot_steps.py), to
joboutputs changes (on_watch) and to time (tick). It never blocks.

One state drives it: the slot's SlotState (`self.state`), set only by
_set_state. The machine's MachineState is what its record keeps of that state
for a successor: each change reaches the record (by _record_state, or by the
prepare and finish steps themselves) before the slot reports the state that
follows, and it is read back only when a worker adopts what a crashed one
left. Here are the rules every state shares: reporting, deadlines, the
dispatch of results (RESULT_HANDLERS), the stale-result rule (_is_stale) and
the retry rule (_retry, _run_retry). The states' own steps are in
slot_adopting.py (ADOPTING), slot_starting.py (IDLE, PREPARING, STARTING),
slot_running.py (RUNNING) and slot_ending.py (STOPPING, FINISHING, CLEANING).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

from vac.ipc import messages
from vac.machine.joboutputs import SHUTDOWN_MESSAGE_NAME
from vac.machine.prepare import prepare_machine
from vac.machine.record import write_record
from vac.proctitle import format_elapsed
from vac.runtimes.base import DEFAULT_ENGINE_TIMEOUT_SECONDS, ContainerHandle, ContainerRuntimeError
from vac.vocabulary.slot_states import MachineState, SlotState, check_transition, machine_state
from vac.workers import finishing, slot_rules, slot_steps
from vac.workers.held_machine import Machine
from vac.workers.job_runner import JobResult
from vac.workers.slot_adopting import AdoptingSteps
from vac.workers.slot_ending import EndingSteps
from vac.workers.slot_running import STATS_INTERVAL_SECONDS, RunningSteps
from vac.workers.slot_starting import StartingSteps
from vac.workers.watch import ANY_NAME, JoboutputsWatch

log = logging.getLogger(__name__)

# Jobs of the slot itself, not of the machine in it: their results are never stale.
SLOT_JOBS = ("scan", "orphans")


class SlotMachine(AdoptingSteps, StartingSteps, RunningSteps, EndingSteps):
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
        # Steps waiting to be tried again: name -> (when, the machine it was for).
        self.retries: dict[str, tuple[float, Machine | None]] = {}
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
        """Results of finished jobs, each to its handler; those of a machine no longer here are dropped."""
        for result in results:
            if self._is_stale(result):
                self._drop_stale(result)
            else:
                RESULT_HANDLERS[result.name](self, result)

    def on_watch(self) -> None:
        """joboutputs changed: note a new shutdown_message, look at the heartbeat file again."""
        m = self.machine
        if m is None or m.watch is None:
            return
        names = m.watch.changed()
        if SHUTDOWN_MESSAGE_NAME in names or ANY_NAME in names:
            reading = finishing.read_message(m.paths)
            if reading.message is not None and reading.message.line() != m.seen_message:
                m.seen_message = reading.message.line()
                self._log(logging.INFO, "the machine wrote shutdown_message %r", m.seen_message)
        if m.terms is not None and (m.terms.heartbeat_file in names or ANY_NAME in names):
            m.heartbeat_check_at = None

    def tick(self) -> float | None:
        """Act on what is due now; return when something next falls due (None: nothing is timed)."""
        now = self.clock()
        for name, (due, machine) in list(self.retries.items()):
            if now >= due:
                del self.retries[name]
                self._run_retry(name, machine)
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
            self._submit("recheck", slot_steps.recheck, self.runtime, m.handle)
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

    # ------------------------------------------------------------ jobs, stale results and retries

    def _submit(self, name: str, call: Callable[..., Any], *args: Any) -> None:
        """Start job `name`; its result carries the machine it is for (see _is_stale)."""
        token = self.machine.uuid if self.machine is not None and name not in SLOT_JOBS else None
        self.jobs.submit(name, call, *args, token=token)

    def _is_stale(self, result: JobResult) -> bool:
        """The stale-result rule: a result for a machine that is no longer in the slot is not acted on."""
        return result.token is not None and (self.machine is None or result.token != self.machine.uuid)

    def _drop_stale(self, result: JobResult) -> None:
        """Drop a stale result; the current machine's stop or wait that waited for it to end starts now."""
        log.debug("slot %02d: dropping the %s result of machine %s", self.slot, result.name, result.token)
        if result.name == "stop" and self.state is SlotState.STOPPING:
            self._submit_stop()
        elif result.name == "wait" and self._wants_wait():
            self._submit_wait()

    def _retry(self, name: str, error: Exception, machine: Machine | None = None) -> None:
        """The retry rule: step `name` again after a backoff (1, 2, 4 … 30 s); engine errors make the slot
        unavailable. `machine` binds the step to the machine it was for (record, shutdown_time)."""
        delay = slot_rules.retry_delay(self.failures)
        self.failures += 1
        if isinstance(error, ContainerRuntimeError):
            self.unavailable = str(error)
        else:
            self.error = f"{name}: {error}"
        due = self.clock() + delay
        self.retries[name] = (due, machine)
        # A step that failed and waits to be tried again is progress: its deadline counts from the retry.
        self.progress_at = max(self.progress_at, due)
        self._log(logging.WARNING, "%s failed: %s; trying again in %.0f s", name, error, delay)
        self._report()

    def _run_retry(self, name: str, machine: Machine | None) -> None:
        """Try step `name` again (the retry rule's second half)."""
        if name == "record":
            # Its latest record, even once the slot has moved on.
            self._save_record(machine)
        elif name == "shutdown_time":
            if machine is self.machine:
                self._apply_shutdown_time(machine)
        else:
            RETRIED_STEPS[name](self)

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
            self._retry("record", error, m)

    def _record_state(self, m: Machine, new_state: MachineState, **changes: Any) -> None:
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
            self.retries = {name: (min(due, now), machine) for name, (due, machine) in self.retries.items()}
            self._report()


# The explicit dispatch: which step of which state takes each job's result.
RESULT_HANDLERS: dict[str, Callable[[SlotMachine, JobResult], None]] = {
    "scan": SlotMachine._on_scan,            # ADOPTING
    "orphans": SlotMachine._on_orphans,
    "prepare": SlotMachine._on_prepare,      # PREPARING
    "create": SlotMachine._on_create,        # STARTING
    "start": SlotMachine._on_start,
    "wait": SlotMachine._on_wait,            # RUNNING, STOPPING
    "stats": SlotMachine._on_stats,
    "stop": SlotMachine._on_stop,            # STOPPING
    "recheck": SlotMachine._on_recheck,
    "finish": SlotMachine._on_finish,        # FINISHING
    "clean": SlotMachine._on_clean,          # CLEANING
}

# The steps the retry rule repeats by submitting them again ("record" and
# "shutdown_time" are repeated for their machine by _run_retry).
RETRIED_STEPS: dict[str, Callable[[SlotMachine], None]] = {
    "scan": SlotMachine._submit_scan,
    "orphans": SlotMachine._submit_orphans,
    "start": SlotMachine._submit_start,
    "wait": SlotMachine._submit_wait,
    "stop": SlotMachine._submit_stop,
    "finish": SlotMachine._submit_finish,
    "clean": SlotMachine._submit_clean,
}
