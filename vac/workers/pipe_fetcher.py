"""The pipe fetcher: keeps every Vacuum Pipe document fetched, outside the root.

Downloads run in a thread so the main loop keeps heartbeating while a slow
server is waited for; the root gets each document (fresh, or the last good
copy when a refresh failed) and expands it itself.
"""

import concurrent.futures
import logging
import os
import time

from vac.config import fetch, pipes as pipe_docs
from vac.ipc import messages
from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)

# The document travels in one frame to the root: keep room for the envelope.
MAX_DOCUMENT_BYTES = 960 * 1024
RETRY_FIRST_SECONDS = 60.0
RETRY_MAX_SECONDS = 900.0


class PipeState:
    """When one pipe is next due, and how its last attempts went."""

    def __init__(self, prefix, url):
        self.prefix = prefix
        self.url = url
        self.due_at = 0.0
        self.failures = 0


def next_due(result, now, failures):
    """When to look at a pipe again after `result` (pure)."""
    if result.document is not None and not result.stale:
        try:
            lifetime = pipe_docs.cache_seconds_of(pipe_docs.parse_pipe_document(result.document))
        except pipe_docs.PipeError:
            lifetime = pipe_docs.DEFAULT_CACHE_SECONDS
        return result.fetched_at + max(lifetime, 1)
    # A failed refresh: retry sooner than cache_seconds, backing off to a bound.
    return now + min(RETRY_FIRST_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


def run(channel, spec):
    """Entry point in the forked fetcher process."""
    loop = WorkerLoop(channel, spec, role="pipe-fetcher")
    cache_dir = os.path.join(spec["state_dir"], "pipes")
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    timeout = float(spec.get("timeout_seconds", 30.0))
    pipes = {}
    loop.title("pipe-fetcher [waiting for the pipe list]")
    loop.ready()
    loop.report("waiting")
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        running = None  # (PipeState, Future)
        while not loop.stopping:
            now = time.time()
            if running is None:
                due = [p for p in pipes.values() if p.due_at <= now]
                if due:
                    state = min(due, key=lambda p: p.due_at)
                    future = pool.submit(fetch.fetch_pipe, state.url, cache_dir, now,
                                         timeout_seconds=timeout, max_bytes=MAX_DOCUMENT_BYTES)
                    future.add_done_callback(lambda _: os.write(wake_w, b"."))
                    running = (state, future)
            if running is not None and running[1].done():
                _deliver(loop, *running)
                running = None
                _title(loop, pipes)
                continue
            next_at = min((p.due_at for p in pipes.values()), default=now + 60)
            wait_for = 60.0 if running is not None else max(min(next_at - now, 60.0), 0)
            for msg in loop.wait(wait_for, fds=(wake_r,)):
                if isinstance(msg, messages.PipeList):
                    pipes = _new_list(pipes, msg.pipes)
                    _title(loop, pipes)
            if wake_r in loop.ready_fds:
                os.read(wake_r, 64)
        # Leaving with a download under way: the thread ends at its own timeout.
        pool.shutdown(wait=False, cancel_futures=True)
    log.info("pipe-fetcher stopping: %s", loop.stop_reason)


def _new_list(old, listed):
    pipes = {}
    for item in listed:
        prefix, url = item["prefix"], item["url"]
        kept = old.get(prefix)
        pipes[prefix] = kept if kept is not None and kept.url == url else PipeState(prefix, url)
    return pipes


def _deliver(loop, state, future):
    """Send the root what a fetch gave (fetch_pipe does not raise: if it does, we crash)."""
    result = future.result()
    state.failures = state.failures + 1 if (result.stale or result.document is None) else 0
    state.due_at = next_due(result, time.time(), state.failures)
    loop.channel.send(messages.PipeDocument(
        prefix=state.prefix, url=state.url, document=result.document,
        fetched_at=result.fetched_at, stale=result.stale, error=result.error))


def _title(loop, pipes):
    failing = sum(1 for p in pipes.values() if p.failures)
    loop.title(f"pipe-fetcher [{len(pipes)} pipes, {failing} failing]")
