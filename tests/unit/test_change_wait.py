"""ChangeWait wakes on a change of a watched path, and only then."""

import os
import threading

from vac.runtimes.change_wait import ChangeWait


def test_a_file_renamed_into_a_watched_directory_wakes_the_waiter(tmp_path):
    (tmp_path / "exit_status.tmp").write_text("{}")
    with ChangeWait((tmp_path, tmp_path / "missing", None)) as watch:
        assert watch.wait(0.05) is False
        timer = threading.Timer(0.05, os.rename, (tmp_path / "exit_status.tmp", tmp_path / "exit_status"))
        timer.start()
        assert watch.wait(5.0) is True
        timer.join()
        # The events were consumed: nothing more until the next change.
        assert watch.wait(0.05) is False
