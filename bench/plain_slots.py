"""The anchor of the Docker slot benches: plain Docker SDK loops, no factory.

Each container gets what a vac machine gets from the engine's point of
view: the same image, the same command (/user_data, bind-mounted read-only
with machinefeatures, jobfeatures and a read-write joboutputs directory of
its own), the same limits (1 CPU, memory, no-new-privileges, docker-init)
and the bridge network. One thread per slot, as vac has one process per slot.
"""

import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from docker.types import Mount

import run_owner
from engine_events import BENCH_LABEL, BENCH_SLOT_LABEL, ENGINE_ERRORS

MEMORY_BYTES = 256 * 1024 * 1024
WAIT_DEADLINE = 120
# A slot thread's whole series, however long its calls take.
THREAD_DEADLINE = 600


class PlainSlots:
    """Containers started straight from the SDK, labelled vac-bench.run=<run_id>."""

    def __init__(self, docker_client, image, user_data):
        self.api = docker_client.api
        self.image = image
        self.run_id = f"plain-{uuid.uuid4().hex[:12]}"
        run_owner.claim(self.run_id)
        self.label = f"{BENCH_LABEL}={self.run_id}"
        self.dir = tempfile.mkdtemp(prefix="vac-bench-plain-")
        self.user_data = user_data
        self._count = 0
        self._lock = threading.Lock()
        self.stop_flag = threading.Event()

    def _directories(self):
        with self._lock:
            self._count += 1
            number = self._count
        root = os.path.join(self.dir, f"m{number:05d}")
        paths = {name: os.path.join(root, name) for name in ("machinefeatures", "jobfeatures", "joboutputs")}
        for path in paths.values():
            os.makedirs(path)
        user_data = os.path.join(root, "user_data")
        with open(user_data, "w", encoding="utf-8") as out:
            out.write(self.user_data)
        os.chmod(user_data, 0o755)
        return number, user_data, paths

    def start(self, slot):
        """Create and start one container in `slot`; return its id."""
        number, user_data, paths = self._directories()
        mounts = [Mount("/user_data", user_data, type="bind", read_only=True),
                  Mount("/etc/machinefeatures", paths["machinefeatures"], type="bind", read_only=True),
                  Mount("/etc/jobfeatures", paths["jobfeatures"], type="bind", read_only=True),
                  Mount("/var/spool/joboutputs", paths["joboutputs"], type="bind", read_only=False)]
        host_config = self.api.create_host_config(
            mounts=mounts, nano_cpus=1_000_000_000, mem_limit=MEMORY_BYTES, memswap_limit=MEMORY_BYTES,
            security_opt=["no-new-privileges"], init=True, network_mode="bridge")
        created = self.api.create_container(
            self.image, command=["/user_data"], name=f"{self.run_id}-{slot:02d}-{number:05d}",
            hostname=f"plain-{slot:02d}", detach=True, host_config=host_config, use_config_proxy=False,
            labels={BENCH_LABEL: self.run_id, BENCH_SLOT_LABEL: str(slot)},
            environment={"MACHINEFEATURES": "/etc/machinefeatures", "JOBFEATURES": "/etc/jobfeatures",
                         "JOBOUTPUTS": "/var/spool/joboutputs"})
        self.api.start(created["Id"])
        return created["Id"]

    def fill(self, slots):
        """Start one container in each of `slots` slots at once; return (time.time() at the go, ids)."""
        with ThreadPoolExecutor(max_workers=slots) as pool:
            began = time.time()
            ids = list(pool.map(self.start, range(slots)))
        return began, ids

    def _finish(self, container_id):
        self.api.wait(container_id, timeout=WAIT_DEADLINE)
        self.api.remove_container(container_id, force=True, v=True)

    def turnover(self, slots, seconds):
        """In every slot, start a container again as soon as the last one exited, for `seconds`.

        Returns time.time() at the go; the last containers started are left to finish.
        """
        began = time.time()
        until = time.monotonic() + seconds

        def slot_loop(slot):
            while time.monotonic() < until and not self.stop_flag.is_set():
                self._finish(self.start(slot))

        self._run_threads(slots, slot_loop)
        return began

    def wall_limit(self, slots, rounds, wall_seconds, grace_seconds):
        """`rounds` containers per slot, each stopped (grace, then kill) at its deadline.

        The deadline is whole seconds, as in MJF: int(time before create + wall_seconds).
        Returns [(container id, deadline)].
        """
        deadlines = []

        def slot_loop(slot):
            for _ in range(rounds):
                if self.stop_flag.is_set():
                    return
                deadline = int(time.time() + wall_seconds)
                container_id = self.start(slot)
                with self._lock:
                    deadlines.append((container_id, deadline))
                delay = deadline - time.time()
                if delay > 0:
                    self.stop_flag.wait(delay)
                self.api.stop(container_id, timeout=grace_seconds)
                self._finish(container_id)

        self._run_threads(slots, slot_loop)
        return deadlines

    def _run_threads(self, slots, target):
        errors = []

        def guarded(slot):
            try:
                target(slot)
            except ENGINE_ERRORS as error:
                errors.append(error)
                self.stop_flag.set()

        threads = [threading.Thread(target=guarded, args=(slot,), daemon=True) for slot in range(slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(THREAD_DEADLINE)
            if thread.is_alive():
                self.stop_flag.set()
                errors.append(TimeoutError(f"a slot thread ran past {THREAD_DEADLINE} s"))
        if errors:
            raise errors[0]

    def remove_dir(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        run_owner.release(self.run_id)
