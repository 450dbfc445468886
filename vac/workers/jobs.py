"""Blocking calls run in threads; their results wake the slot worker's select loop.

The loop stays free to heartbeat, take the root's messages and enforce the
wall-clock limit while a Docker call, an HTTP fetch or an mkfs is under way.
Each job has a name, and one job of a name runs at a time.
"""

from __future__ import annotations

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


class Jobs:
    """Runs each submitted call in a daemon thread and queues its result."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._done: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self._running: set[str] = set()

    def fileno(self) -> int:
        """Readable when a result is waiting."""
        return self._wake_r

    def running(self, name: str) -> bool:
        """True while a job of this name has not been taken back with take_done()."""
        return name in self._running

    def submit(self, name: str, call: Callable[..., Any], *args: Any, token: Any = None,
               fork: bool = False) -> None:
        """Run call(*args) in a thread; its JobResult comes back from take_done().

        With fork=True the call runs in a forked child whose result is pickled
        back: whatever it allocates (a Docker client, its connection pool) dies
        with the child instead of staying in this long-lived process.
        """
        if name in self._running:
            raise RuntimeError(f"job {name} is already running")
        self._running.add(name)
        if fork:
            call, args = _forked(call, args), ()
        # Daemon threads: a worker told to stop exits at once, even while one
        # of them waits on the engine; its successor repeats what was cut short.
        threading.Thread(target=self._run, args=(name, call, args, token), name=f"job-{name}",
                         daemon=True).start()

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
        return results


def _forked(call: Callable[..., Any], args: tuple) -> Callable[[], Any]:
    """Fork now, run call(*args) in the child; return what waits for its result."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child_run(call, args, write_fd)
    os.close(write_fd)

    def collect() -> Any:
        with os.fdopen(read_fd, "rb") as stream:
            payload = stream.read()
        os.waitpid(pid, 0)
        if not payload:
            raise ChildProcessError(f"forked job (pid {pid}) died without a result")
        ok, value = pickle.loads(payload)
        if ok:
            return value
        raise value

    return collect


def _child_run(call: Callable[..., Any], args: tuple, write_fd: int) -> None:
    """In the forked child: no signal handling of the worker's, run, send the result, exit."""
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
        with os.fdopen(write_fd, "wb") as stream:
            stream.write(payload)
    except BaseException:
        status = 1
    finally:
        os._exit(status)
