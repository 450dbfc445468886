"""Pure restart decisions: restart or not, when, and whether to escalate.

Every function takes `now` (seconds, any monotonic origin) and returns plain
data, so the decisions are tested as scripted histories with a fake clock.
"""

import dataclasses
import os
import signal

from vac.vocabulary.child_states import EXIT_BAD_SPEC, Restart


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code or the signal that killed it."""
    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status):
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.waitstatus_to_exitcode(status))

    @property
    def normal(self):
        return self.code == 0

    @property
    def bad_spec(self):
        return self.code == EXIT_BAD_SPEC

    def __str__(self):
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit status {self.code}"


def wants_restart(restart, exit_status, failed):
    """True if a child of this restart type is restarted after this exit.

    `failed` is set when the supervisor itself ended the child for a fault
    (no heartbeat, bad frame): such an exit is abnormal whatever its code.
    """
    if exit_status.bad_spec:
        return False
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return failed or not exit_status.normal
    return False


def overdue_by(deadline, now, margin):
    """Seconds a child's state has outlived `deadline` + `margin` (> 0: hung), or None if it has not.

    `deadline` is what the child's heartbeats carry: when its state must
    change (None: nothing is due). A child that heartbeats without moving on
    is as hung as a silent one; the margin allows for its own last try.
    """
    if deadline is None or now <= deadline + margin:
        return None
    return now - deadline


@dataclasses.dataclass(frozen=True)
class Intensity:
    """At most `max_restarts` restarts within `period` seconds (Erlang's MaxR/MaxT)."""
    max_restarts: int = 3
    period: float = 5.0


def record_restart(history, now, intensity):
    """Add a restart at `now`; return (new history, exceeded).

    As in OTP, restarts older than the period are forgotten and the limit is
    exceeded when more than max_restarts remain.
    """
    recent = tuple(t for t in history if now - t < intensity.period) + (now,)
    return recent, len(recent) > intensity.max_restarts


@dataclasses.dataclass(frozen=True)
class HelperRestartPolicy:
    """A short, growing delay before a crashed helper runs again.

    A helper that keeps failing at once (a bad document it reads at start, a
    resource not there yet) would otherwise be forked in a tight loop until
    intensity escalates; the delay gives the cause a moment to clear and keeps
    the log readable, while staying short of the intensity period so that
    escalation still happens.
    """
    first_delay: float = 0.5
    max_delay: float = 4.0
    healthy_after: float = 10.0     # ready and up this long: the next crash waits first_delay


@dataclasses.dataclass(frozen=True)
class HelperRestart:
    """When a helper that exited runs again, and its count of quick failures so far."""
    failed_starts: int
    at: float


def helper_restart(failed_starts, ready_at, now, policy, intensity):
    """Decide a helper's restart time: first_delay × 2^(n-1) after its n-th quick failure.

    A helper that became ready and ran `healthy_after` seconds starts a new
    count. The delay never exceeds max_delay, nor period / (max_restarts + 1)
    of its group's `intensity`: a helper that fails at once must still exceed
    the intensity and escalate, however long it keeps failing.
    """
    if ready_at is not None and now - ready_at >= policy.healthy_after:
        failed_starts = 0
    failed_starts += 1
    longest = min(policy.max_delay, intensity.period / (intensity.max_restarts + 1))
    delay = min(policy.first_delay * 2 ** (failed_starts - 1), longest)
    return HelperRestart(failed_starts=failed_starts, at=now + delay)


@dataclasses.dataclass(frozen=True)
class SlotRestartPolicy:
    """Per-slot backoff for a pool of transient workers."""
    healthy_after: float = 10.0     # ready and up this long = it started well
    first_delay: float = 1.0
    max_delay: float = 60.0
    max_failed_starts: int = 6      # consecutive failed starts before FATAL


@dataclasses.dataclass(frozen=True)
class SlotRestart:
    """What to do with a slot worker that exited: restart at `at`, or park FATAL."""
    failed_starts: int
    at: float | None             # None when fatal
    fatal: bool


def slot_restart(failed_starts, ready_at, now, policy):
    """Decide a pool child's restart from its history of failed starts.

    A worker that became ready and ran `healthy_after` seconds restarts at
    once with a clean record; one that fails soon after starting waits
    first_delay × 2^(n-1) (capped), and after max_failed_starts it is FATAL.
    """
    if ready_at is not None and now - ready_at >= policy.healthy_after:
        return SlotRestart(failed_starts=0, at=now, fatal=False)
    failed_starts += 1
    if failed_starts >= policy.max_failed_starts:
        return SlotRestart(failed_starts=failed_starts, at=None, fatal=True)
    delay = min(policy.first_delay * 2 ** (failed_starts - 1), policy.max_delay)
    return SlotRestart(failed_starts=failed_starts, at=now + delay, fatal=False)


@dataclasses.dataclass(frozen=True)
class BreakerPolicy:
    """Pool-wide circuit breaker: `crashes` within `window` s pause restarts `pause` s."""
    crashes: int = 10
    window: float = 30.0
    pause: float = 30.0


@dataclasses.dataclass(frozen=True)
class Breaker:
    """Recent crash times of a pool and the time its restarts are paused until."""
    crash_times: tuple = ()
    open_until: float | None = None

    def is_open(self, now):
        return self.open_until is not None and now < self.open_until


def breaker_after_crash(breaker, now, policy):
    """Record a crash at `now`; open (or keep open) the breaker during a storm."""
    recent = tuple(t for t in breaker.crash_times if now - t < policy.window) + (now,)
    if len(recent) >= policy.crashes:
        # A storm: pause restarts from now, and forget the storm so that one
        # more crash after the pause does not reopen it at once.
        return Breaker(crash_times=(), open_until=now + policy.pause)
    open_until = breaker.open_until if breaker.is_open(now) else None
    return Breaker(crash_times=recent, open_until=open_until)


def restart_time(wanted_at, breaker, now):
    """When a restart wanted at `wanted_at` may happen, given the breaker."""
    if breaker.is_open(now):
        return max(wanted_at, breaker.open_until)
    return wanted_at
