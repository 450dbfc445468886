"""Test-side control of a real vacd process started with a test configuration."""

import signal
import subprocess
import sys
import time

import psutil
import pytest


class Daemon:
    def __init__(self, tmp_path, config, extra_args=(), log_name="vacd.log", state_dir_option=True):
        # A daemon started again on the same state directory logs to its own file.
        self.log_path = tmp_path / log_name
        self.log = open(self.log_path, "w")
        # Without --state-dir, the configuration's state_dir is used (and may change at reload).
        state_dir = ("--state-dir", str(tmp_path / "state")) if state_dir_option else ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vac.daemon", "--config", str(config),
             *state_dir, "--socket", str(tmp_path / "control.sock"), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)

    def text(self):
        return self.log_path.read_text()

    def wait_log(self, needle, count=1, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return
            assert self.proc.poll() is None, self.text()
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged {count}x:\n{self.text()}")

    def slot_pids(self):
        return sorted(p.pid for p in psutil.Process(self.proc.pid).children()
                      if "slot" in " ".join(p.cmdline()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.log.close()


@pytest.fixture
def daemon_factory(tmp_path):
    daemons = []

    def start(config, extra_args=(), log_name="vacd.log", state_dir_option=True):
        daemon = Daemon(tmp_path, config, extra_args, log_name, state_dir_option)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        leftovers = psutil.Process(daemon.proc.pid).children(recursive=True) \
            if daemon.proc.poll() is None else []
        daemon.stop()
        for process in leftovers:
            if process.is_running():
                process.kill()
