"""JoboutputsWatch: the names changed in each watched directory, from one inotify instance per process."""

import select

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
