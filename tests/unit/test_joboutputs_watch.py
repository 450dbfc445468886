"""JoboutputsWatch: the names changed in each watched directory, from one inotify instance per process."""

import ctypes.util
import os
import select
import subprocess

import pyinotify

from vac.workers import watch as watch_module
from vac.workers.watch import JoboutputsWatch


def wait_readable(watch):
    assert select.select([watch], [], [], 5.0)[0], "no inotify event within 5 s"


def test_each_watch_gets_its_own_directorys_names_from_one_shared_descriptor(tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first, second = JoboutputsWatch(first_dir), JoboutputsWatch(second_dir)
    try:
        assert first.fileno() == second.fileno(), "one inotify instance for the slot, not one per machine"
        (second_dir / "shutdown_message").write_text("200 Done\n")
        wait_readable(first)
        assert first.changed() == set()
        assert second.changed() == {"shutdown_message"}
        first.close()
        (first_dir / "heartbeat").write_text("x")
        (second_dir / "heartbeat").write_text("x")
        wait_readable(second)
        assert second.changed() == {"heartbeat"}
        assert first.changed() == set(), "a closed watch hears nothing"
    finally:
        first.close()
        second.close()


def _in_forked_child(check):
    """Run check() in a forked child, as a slot worker runs after the root's fork; True if it passed."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            check()
            status = 0
        finally:
            os._exit(status)
    return os.waitpid(pid, 0)[1] == 0


def test_a_forked_worker_watches_without_looking_for_libc_again(tmp_path):
    # pyinotify looks for libc with ldconfig, a subprocess, for each WatchManager:
    # in a slot worker, forked after the import, nothing may run it.
    def refuse(*args, **kwargs):
        raise AssertionError("looked for a library or started a process after the fork")

    def check():
        ctypes.util.find_library = refuse
        subprocess.Popen = refuse
        watch = JoboutputsWatch(tmp_path)
        (tmp_path / "shutdown_message").write_text("200 Done\n")
        wait_readable(watch)
        assert watch.changed() == {"shutdown_message"}
        watch.close()

    assert _in_forked_child(check)


def test_the_watch_manager_is_pyinotifys_in_all_it_sets_up():
    # Its __init__ stands in for pyinotify's: a pyinotify that sets up more must be followed here.
    ours, theirs = watch_module._WatchManager(), pyinotify.WatchManager()
    try:
        assert set(vars(ours)) == set(vars(theirs))
        assert ours.get_fd() >= 0 and ours.get_fd() != theirs.get_fd()
    finally:
        ours.close()
        theirs.close()
