"""Test-side control of treehost.py: start it, read its events, stop it."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil

HOST = os.path.join(os.path.dirname(__file__), "treehost.py")


class TreeHost:
    """A root process running a test scenario, and the events it reported."""

    def __init__(self, scenario, tmp_path, env=None):
        self.events_path = tmp_path / "events.jsonl"
        self.log_path = tmp_path / "root.log"
        self.events_path.touch()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, HOST, scenario, str(self.events_path), str(tmp_path)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {})), text=True)

    @property
    def pid(self):
        return self.proc.pid

    def events(self, kind=None, child=None):
        found = []
        with open(self.events_path) as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break
                event = json.loads(line)
                if (kind is None or event["event"] == kind) and (
                        child is None or event.get("child") == child):
                    found.append(event)
        return found

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        """Poll until predicate() is truthy; return its value or fail with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; root log:\n{self.log_text()}")

    def wait_events(self, kind, count, child=None, timeout=10.0):
        return self.wait_for(
            lambda: (lambda found: found if len(found) >= count else None)(
                self.events(kind, child)),
            timeout, f"{count} {kind} event(s) of {child or 'any child'}")

    def ready_pids(self):
        """child id -> pid of the latest 'ready' event of each child."""
        return {event["child"]: event["pid"] for event in self.events("ready")}

    def command(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()

    def descendants(self):
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout=15.0):
        """SIGTERM the root and wait for it; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self):
        """Leave nothing running, whatever state the test left."""
        leftovers = self.descendants()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for process in leftovers:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()
