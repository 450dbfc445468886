"""Blocking calls run in threads; their results wake the slot worker's select loop.

The loop stays free to heartbeat, take the root's messages and enforce the
wall-clock limit while a Docker call, an HTTP fetch or an mkfs is under way.
Each job has a name, and one job of a name runs at a time. A thread that
finished its job waits for the next instead of ending: a machine's life
takes some seven jobs, and starting a thread for each cost more than most.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a job returned, or the exception it raised; `token` says what it was for."""
    name: str
    value: Any = None
    error: Exception | None = None
    token: Any = None


class JobRunner:
    """Runs each submitted call in a daemon thread and queues its result."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._done: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self._running: set[str] = set()
        self._forked: dict[int, tuple[str, int, Any]] = {}  # pid -> (name, result fd, token)
        self._exiting: list[int] = []  # forked jobs that delivered and are about to exit
        self._tasks: queue.SimpleQueue[tuple[str, Callable[..., Any], tuple, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle_threads = 0  # threads done with a job that will take the next one

    def fileno(self) -> int:
        """Readable when a result is waiting."""
        return self._wake_r

    @property
    def forked_pending(self) -> bool:
        """True while a forked job runs: one killed before it could wake us is found by polling."""
        return bool(self._forked or self._exiting)

    def running(self, name: str) -> bool:
        """True while a job of this name has not been taken back with take_done()."""
        return name in self._running

    def submit(self, name: str, call: Callable[..., Any], *args: Any, token: Any = None,
               fork: bool = False) -> None:
        """Run call(*args) in a thread; its JobResult comes back from take_done().

        With fork=True the call runs in a forked child instead, which leaves its
        pickled result in an anonymous file and wakes us: whatever it allocates
        (a Docker client, its connection pool) dies with it, and no thread of
        ours is involved, so an idle slot stays small.
        """
        if name in self._running:
            raise RuntimeError(f"job {name} is already running")
        self._running.add(name)
        if fork:
            result_fd = os.memfd_create(f"job-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            pid = os.fork()
            if pid == 0:
                _child_run(call, args, result_fd, self._wake_w)
            self._forked[pid] = (name, result_fd, token)
            return
        self._tasks.put((name, call, args, token))
        with self._lock:
            if self._idle_threads:
                self._idle_threads -= 1
                return
        # Daemon threads: a worker told to stop exits at once, even while one
        # of them waits on the engine; its successor repeats what was cut short.
        threading.Thread(target=self._serve, name="jobs", daemon=True).start()

    def _serve(self) -> None:
        """A job thread: run the queued jobs, one after another, for the life of the worker."""
        while True:
            self._run(*self._tasks.get())
            with self._lock:
                self._idle_threads += 1

    def _run(self, name: str, call: Callable[..., Any], args: tuple, token: Any) -> None:
        try:
            result = JobResult(name, call(*args), None, token)
        except Exception as error:  # handed to the main thread, which decides (or re-raises)
            result = JobResult(name, None, error, token)
        self._done.put(result)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is woken anyway

    def take_done(self) -> list[JobResult]:
        """The results of finished jobs, oldest first (does not wait)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        results = []
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                break
            self._running.discard(result.name)
            results.append(result)
        for pid in list(self._forked):
            result = self._forked_result(pid)
            if result is not None:
                self._running.discard(result.name)
                results.append(result)
        self._exiting = [pid for pid in self._exiting if not os.waitpid(pid, os.WNOHANG)[0]]
        return results

    def _forked_result(self, pid: int) -> JobResult | None:
        """The result of a forked job that has delivered or died, or None while it runs."""
        name, result_fd, token = self._forked[pid]
        # The child seals its result file once it is complete, then wakes us,
        # then exits: the seal, not the exit, says the result can be read.
        delivered = fcntl.fcntl(result_fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        if delivered:
            self._exiting.append(pid)
        elif not os.waitpid(pid, os.WNOHANG)[0]:
            return None
        del self._forked[pid]
        with os.fdopen(result_fd, "rb") as stream:
            stream.seek(0)
            payload = stream.read()
        if not payload:
            return JobResult(name, None, ChildProcessError(
                f"forked job {name} (pid {pid}) died without a result"), token)
        ok, value = pickle.loads(payload)
        return JobResult(name, value if ok else None, None if ok else value, token)



def _child_run(call: Callable[..., Any], args: tuple, result_fd: int, wake_fd: int) -> None:
    """In the forked child: no signal handling of the worker's, run, leave the result, wake, exit."""
    status = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            payload = pickle.dumps((True, call(*args)))
        except Exception as error:  # handed back to the worker, which decides
            try:
                payload = pickle.dumps((False, error))
            except Exception:  # an exception that cannot be pickled: keep its text
                payload = pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {error}")))
        view = memoryview(payload)
        while view:
            view = view[os.write(result_fd, view):]
        fcntl.fcntl(result_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        os.write(wake_fd, b"\0")
    except BaseException:
        status = 1
    finally:
        os._exit(status)
