"""Blocking calls run in threads; their results wake the slot worker's select loop.

The loop stays free to heartbeat, take the root's messages and enforce the
wall-clock limit while a Docker call, an HTTP fetch or an mkfs is under way.
Each job has a name, and one job of a name runs at a time.
"""

from __future__ import annotations

import os
import queue
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

    def submit(self, name: str, call: Callable[..., Any], *args: Any, token: Any = None) -> None:
        """Run call(*args) in a thread; its JobResult comes back from take_done()."""
        if name in self._running:
            raise RuntimeError(f"job {name} is already running")
        self._running.add(name)
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
