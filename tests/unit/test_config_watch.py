"""The configuration watcher over real inotify in a temporary directory (vac.supervisor.config_watch)."""

import select

from vac.supervisor.config_watch import ConfigWatcher


def test_an_event_whose_handling_fails_is_dropped_and_the_next_ones_are_handled(tmp_path, caplog):
    seen = []

    def on_change(path):
        if path.endswith("a.conf"):
            raise OSError("a handler bug")
        seen.append(path)

    watcher = ConfigWatcher([str(tmp_path)], on_change)
    try:
        (tmp_path / "a.conf").write_text("[settings]\n")
        (tmp_path / "b.conf").write_text("[settings]\n")
        (tmp_path / "notes.txt").write_text("not a configuration file\n")
        ready, _, _ = select.select([watcher.fileno()], [], [], 5.0)
        assert ready, "inotify reported nothing"
        watcher.on_readable()
    finally:
        watcher.close()
    assert seen and all(path == str(tmp_path / "b.conf") for path in seen)
    faults = [r for r in caplog.records if "fault while serving" in r.getMessage()]
    assert faults and all(f"on {tmp_path / 'a.conf'}" in r.getMessage() for r in faults)
    assert all(r.exc_info is not None for r in faults)
