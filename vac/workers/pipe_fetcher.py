"""The pipe fetcher: keeps every Vacuum Pipe fetched, parsed, checked and expanded, outside the root.

Downloads run in a thread so the main loop keeps heartbeating while a slow
server is waited for. Each document (fresh, or the last good copy when a
refresh failed) is expanded here with the local options the root sent in its
pipe list, and the root gets only the machinetypes, as plain checked data,
and the problems, as bounded text. After a reload the root sends the list
again and every document in hand is expanded again with the new options.
"""

import concurrent.futures
import logging
import os
import time

import msgpack

from vac.config import fetch, pipes as pipe_docs, plain
from vac.config.problems import ConfigProblem
from vac.config.values import BadValue
from vac.ipc import messages
from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)

# The root gets a pipe's machinetypes in one frame, and each machinetype goes on
# to a slot in one frame with the factory's settings: room is kept for both.
MAX_MACHINETYPE_BYTES = 256 * 1024
MAX_REPORT_MACHINETYPES_BYTES = 768 * 1024
RETRY_FIRST_SECONDS = 60.0
RETRY_MAX_SECONDS = 900.0


class PipeState:
    """One pipe: its section and local options, when it is next due, its last document."""

    def __init__(self, pipe, local):
        self.pipe = pipe
        self.local = local
        self.due_at = 0.0
        self.failures = 0
        self.result = None  # the last FetchResult

    @property
    def prefix(self):
        return self.pipe.prefix

    @property
    def url(self):
        return self.pipe.url


def next_due(result, cache_seconds, now, failures):
    """When to look at a pipe again after `result` (pure)."""
    if result.document is not None and not result.stale:
        return result.fetched_at + max(cache_seconds, pipe_docs.SHORTEST_CACHE_SECONDS)
    # A failed refresh: retry sooner than cache_seconds, backing off to a bound.
    return now + min(RETRY_FIRST_SECONDS * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


def report(state, settings):
    """(the PipeMachinetypes message for the pipe's last result, its cache_seconds) (pure)."""
    result = state.result
    fields = {"prefix": state.prefix, "url": state.url, "fetched_at": result.fetched_at,
              "stale": result.stale,
              "error": None if result.error is None else plain.bounded_text(result.error)}
    if result.document is None:
        return messages.PipeMachinetypes(usable=False, machinetypes=[], problems=[],
                                         problems_total=0, **fields), None
    try:
        expansion = pipe_docs.expand_pipe(state.pipe, result.document, state.local, settings)
    except pipe_docs.PipeError as error:
        return messages.PipeMachinetypes(
            usable=False, machinetypes=[], problems_total=1,
            problems=[plain.bounded_text(f"{state.url}: unusable document: {error}")],
            **fields), None
    machinetypes, problems = plain_machinetypes(state.pipe, expansion.machinetypes)
    problems = [str(problem) for problem in (*expansion.problems, *problems)]
    return messages.PipeMachinetypes(
        usable=True, machinetypes=machinetypes, problems_total=len(problems),
        problems=[plain.bounded_text(text) for text in problems[:plain.MAX_PROBLEMS_SENT]],
        **fields), expansion.cache_seconds


def plain_machinetypes(pipe, machinetypes):
    """([plain machinetype], [ConfigProblem]): those that fit a frame and pass the root's check."""
    sent, problems, total = [], [], 0
    section = f"vacuum_pipe {pipe.prefix}"
    for name, machinetype in machinetypes.items():
        fields = plain.to_plain(machinetype)
        size = len(msgpack.packb(fields, use_bin_type=True))
        if size > MAX_MACHINETYPE_BYTES:
            problems.append(ConfigProblem(pipe.url, section, None, None, (
                f"machinetype {name} is {size} bytes with the local options, more than the "
                f"{MAX_MACHINETYPE_BYTES} allowed; not created")))
            continue
        if total + size > MAX_REPORT_MACHINETYPES_BYTES:
            problems.append(ConfigProblem(pipe.url, section, None, None, (
                f"the pipe's machinetypes come to more than {MAX_REPORT_MACHINETYPES_BYTES} bytes "
                f"with the local options; machinetype {name} not created")))
            continue
        try:
            # The root makes this check again: what it would refuse is not sent.
            plain.machinetype_from_plain(fields, pipe.prefix)
        except BadValue as error:
            problems.append(ConfigProblem(pipe.url, section, None, None,
                                          f"{error}; machinetype {name} not created"))
            continue
        total += size
        sent.append(fields)
    return sent, problems


def run(channel, spec):
    """Entry point in the forked fetcher process."""
    loop = WorkerLoop(channel, spec, role="pipe-fetcher")
    cache_dir = os.path.join(spec["state_dir"], "pipes")
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    timeout = float(spec.get("timeout_seconds", 30.0))
    pipes, settings = {}, None
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
                                         timeout_seconds=timeout)
                    future.add_done_callback(lambda _: os.write(wake_w, b"."))
                    running = (state, future)
            if running is not None and running[1].done():
                state, future = running
                running = None
                _fetched(loop, state, future.result(), settings,
                         listed=pipes.get(state.prefix) is state)
                _title(loop, pipes)
                continue
            next_at = min((p.due_at for p in pipes.values()), default=now + 60)
            wait_for = 60.0 if running is not None else max(min(next_at - now, 60.0), 0)
            for msg in loop.wait(wait_for, fds=(wake_r,)):
                if isinstance(msg, messages.PipeList):
                    settings = plain.settings_from_plain(msg.settings)
                    pipes = _new_list(pipes, msg.pipes)
                    # The local options may have changed: expand what is in hand again.
                    for state in pipes.values():
                        if state.result is not None:
                            loop.channel.send(report(state, settings)[0])
                    _title(loop, pipes)
            if wake_r in loop.ready_fds:
                os.read(wake_r, 64)
        # Leaving with a download under way: the thread ends at its own timeout.
        pool.shutdown(wait=False, cancel_futures=True)
    log.info("pipe-fetcher stopping: %s", loop.stop_reason)


def _new_list(old, listed):
    pipes = {}
    for item in listed:
        pipe = plain.pipe_from_plain(item["pipe"])
        local = {name: plain.options_from_plain(options) for name, options in item["local"].items()}
        state = old.get(pipe.prefix)
        if state is None or state.url != pipe.url:
            state = PipeState(pipe, local)
        state.pipe, state.local = pipe, local
        pipes[pipe.prefix] = state
    return pipes


def _fetched(loop, state, result, settings, listed):
    """Expand what a fetch gave and send it to the root (fetch_pipe does not raise: if it does, we crash)."""
    if not listed:
        # Dropped from the list (or its URL changed) while it was being fetched.
        return
    state.result = result
    state.failures = state.failures + 1 if (result.stale or result.document is None) else 0
    msg, cache_seconds = report(state, settings)
    state.due_at = next_due(result, cache_seconds or pipe_docs.DEFAULT_CACHE_SECONDS,
                            time.time(), state.failures)
    log.info("pipe %s: %d machinetype(s), %d problem(s); next fetch in %d s", state.prefix,
             len(msg.machinetypes), msg.problems_total, max(state.due_at - time.time(), 0))
    loop.channel.send(msg)


def _title(loop, pipes):
    failing = sum(1 for p in pipes.values() if p.failures)
    loop.title(f"pipe-fetcher [{len(pipes)} pipes, {failing} failing]")
