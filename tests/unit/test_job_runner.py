"""Forked jobs: their results come back through a sealed anonymous file, without a thread."""

import os
import select
import signal
import threading
import time

from vac.workers.job_runner import JobRunner


def collect(jobs, count, timeout=5.0):
    results, deadline = [], time.monotonic() + timeout
    while len(results) < count and time.monotonic() < deadline:
        select.select([jobs], [], [], 0.2)
        results += jobs.take_done()
    return results


def test_a_forked_job_returns_its_value_at_once_and_leaves_no_thread_or_zombie():
    jobs = JobRunner()
    threads = threading.active_count()
    started = time.monotonic()
    jobs.submit("double", lambda x: (os.getpid(), x * 2), 21, fork=True)
    assert threading.active_count() == threads
    (result,) = collect(jobs, 1)
    child_pid, value = result.value
    assert value == 42 and child_pid != os.getpid() and result.error is None
    assert time.monotonic() - started < 2, "woken by the child, not by polling"
    deadline = time.monotonic() + 2
    while jobs.forked_pending and time.monotonic() < deadline:
        jobs.take_done()
        time.sleep(0.01)
    assert not jobs.forked_pending, "the delivered child was reaped"
    assert not jobs.running("double")


def test_a_forked_job_s_exception_comes_back_as_its_error():
    jobs = JobRunner()
    jobs.submit("fail", lambda: {}["missing"], fork=True)
    (result,) = collect(jobs, 1)
    assert isinstance(result.error, KeyError) and result.value is None


def test_a_forked_job_killed_before_it_delivers_is_reported_failed():
    jobs = JobRunner()
    jobs.submit("killed", lambda: os.kill(os.getpid(), signal.SIGKILL), fork=True)
    deadline, results = time.monotonic() + 5, []
    while not results and time.monotonic() < deadline:
        time.sleep(0.05)  # no wake-up comes: the loop finds it by polling forked_pending
        results = jobs.take_done()
    (result,) = results
    assert isinstance(result.error, ChildProcessError)
    assert "died without a result" in str(result.error)


def test_threads_are_reused_and_each_concurrent_job_still_gets_one():
    jobs = JobRunner()
    threads = threading.active_count()
    for n in range(5):
        jobs.submit(f"one-{n}", threading.get_ident)
        (result,) = collect(jobs, 1)
        assert result.error is None
        # The thread counts itself idle just after it delivers: let it get there.
        deadline = time.monotonic() + 2
        while jobs._idle_threads == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert threading.active_count() == threads + 1, "one after another, one thread does"

    # Jobs that block each other's progress run at once: one waits for the other.
    release = threading.Event()
    jobs.submit("waiter", lambda: release.wait(5))
    jobs.submit("releaser", release.set)
    results = collect(jobs, 2)
    assert sorted((r.name, r.value) for r in results) == [("releaser", None), ("waiter", True)]
    assert threading.active_count() == threads + 2
