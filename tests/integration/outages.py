"""What a node goes through, inflicted from outside: the whole vacd tree killed at
once, and the host's dockerd stopped and started the way scripts/bootstrap runs it.

The tests and bench/bench_recovery.py both use it; it needs no pytest.
"""

import os
import shutil
import signal
import subprocess
import time

import docker
import psutil
import requests

from accounts import process_alive

KILL_DEADLINE = 10


def kill_tree(daemon, spare=None):
    """SIGKILL the root and every process below it at once, as a power cut of the tree would.

    Every process is stopped (SIGSTOP) first, the root before its children,
    and the tree is listed again until no process in it is left running: none
    can react to another's death, nor fork a child that escapes the kill.
    spare(process) picks processes that are below the root without being the
    tree's: Singularity machines, whose launchers the root inherits as the
    tree's subreaper, live on in their own cgroups as Docker containers do.
    Returns the processes killed, the root first.
    """
    root = psutil.Process(daemon.proc.pid)
    processes = [root]
    root.send_signal(signal.SIGSTOP)
    seen = {root.pid}
    while True:
        found = [process for process in root.children(recursive=True)
                 if process.pid not in seen and (spare is None or not spare(process))]
        if not found:
            break
        for process in found:
            seen.add(process.pid)
            try:
                process.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                continue
            processes.append(process)
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    daemon.proc.wait(KILL_DEADLINE)
    # The others are nobody's children now; dead means gone or a zombie.
    deadline = time.monotonic() + KILL_DEADLINE
    for process in processes[1:]:
        while process_alive(process):
            assert time.monotonic() < deadline, f"{process} survived SIGKILL"
            time.sleep(0.05)
    return processes


# The host's dockerd.

DOCKER_PID_FILE = "/var/run/docker.pid"
DOCKERD_LOG = "/var/log/vac-dockerd.log"
ENGINE_WAIT_SECONDS = 60


def _systemd_runs():
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def engine_answers(timeout=5):
    """True if the engine answers /_ping."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False
    finally:
        client.close()


class DockerEngine:
    """Stops and starts the host's dockerd: with systemctl under systemd, else
    the way scripts/bootstrap starts it (detached, its log appended to)."""

    def __init__(self):
        self.argv = None
        self.stopped = False
        # time.monotonic() when start() first saw the engine answer.
        self.answered_at = None

    def stop(self):
        """Stop dockerd and wait until it has exited (containers live on: live-restore)."""
        self.stopped = True
        if _systemd_runs():
            # The socket too, or the next client would start the engine again at once.
            subprocess.run(["systemctl", "stop", "docker.socket", "docker.service"], check=True, timeout=120)
            return
        with open(DOCKER_PID_FILE) as stream:
            process = psutil.Process(int(stream.read().strip()))
        self.argv = process.cmdline()
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_WAIT_SECONDS
        while process_alive(process):
            assert time.monotonic() < deadline, f"dockerd (pid {process.pid}) did not stop"
            time.sleep(0.1)

    def start(self, poll_seconds=0.2):
        """Start dockerd again and wait until it answers (asking every `poll_seconds`)."""
        if _systemd_runs():
            subprocess.run(["systemctl", "start", "docker.socket", "docker.service"], check=True, timeout=120)
        else:
            argv = self.argv or [shutil.which("dockerd") or "dockerd"]
            with open(DOCKERD_LOG, "ab") as log:
                # setsid -f: a new session whose leader is not ours, as bootstrap's setsid nohup … &.
                subprocess.run(["setsid", "-f", *argv], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, check=True, timeout=30)
        deadline = time.monotonic() + ENGINE_WAIT_SECONDS
        while not engine_answers():
            assert time.monotonic() < deadline, f"dockerd did not answer within {ENGINE_WAIT_SECONDS} s"
            time.sleep(poll_seconds)
        self.answered_at = time.monotonic()
        self.stopped = False

    def ensure_running(self):
        """After the test, pass or fail: the engine answers again."""
        if self.stopped or not engine_answers():
            self.start()
