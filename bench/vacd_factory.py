"""A real vacd for the Docker slot benches, run and watched as an operator would.

VacdFactory writes a vac.conf and the machinetypes' user_data into a fresh
temporary directory, starts `vacd` as a subprocess with its own unique
factory_name, and offers what an operator has: the process titles, the
configuration file (draining on and off, applied with SIGHUP) and the
machine directories. Stopping it sends SIGTERM; vacd leaves its containers
running by design, so the caller removes them by the vac.factory label.
"""

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

import run_owner

LOG_TAIL_CHARS = 4000
APPLIED_LINE = "configuration applied:"
# vacd's log lines start with a local time stamp to the millisecond.
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
MACHINE_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STOP_DEADLINE = 30.0


class VacdFailed(Exception):
    """vacd exited or did not reach the state the bench waits for."""


def unique_factory_name(kind):
    """A factory_name no other run or test uses: bench-<kind>-<random>.vac.example."""
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}.vac.example"


def vacd_command():
    """The vacd of this virtualenv, or `python -m vac.daemon` with this interpreter."""
    vacd = os.path.join(os.path.dirname(sys.executable), "vacd")
    return [vacd] if os.path.exists(vacd) else [sys.executable, "-m", "vac.daemon"]


class VacdFactory:
    """One vacd process with a generated configuration in a temporary directory."""

    def __init__(self, kind, *, slots, machinetypes, settings=None):
        """machinetypes: {name: (options dict, user_data text)}; settings: extra [settings] options."""
        self.factory_name = unique_factory_name(kind)
        run_owner.claim(self.factory_name)
        self.label = f"vac.factory={self.factory_name}"
        self.slots = slots
        self.dir = tempfile.mkdtemp(prefix=f"vac-bench-{kind}-")
        self.state_dir = os.path.join(self.dir, "state")
        self.config_path = os.path.join(self.dir, "vac.conf")
        self.log_path = os.path.join(self.dir, "vacd.log")
        self.socket_path = os.path.join(self.dir, "control.sock")
        # The logs of the vacds started before the current one on this state directory.
        self.earlier_logs = []
        self.settings = {
            "vac_space": "bench.vac.example",
            "factory_name": self.factory_name,
            "total_processors": str(slots),
            "mb_per_processor": "256",
            "draining": "yes",
            # The benches measure slots, not the load gate: on a small shared
            # host the load average of other work would keep slots empty.
            "overload_per_processor": "1000",
            **(settings or {}),
        }
        self.machinetypes = machinetypes
        for name, (_, user_data) in machinetypes.items():
            files = os.path.join(self.state_dir, "machinetypes", name, "files")
            os.makedirs(files)
            with open(os.path.join(files, f"{name}.user_data"), "w", encoding="utf-8") as out:
                out.write(user_data)
        self.proc = None
        self._log = None

    def write_config(self):
        lines = ["[settings]"] + [f"{key} = {value}" for key, value in self.settings.items()]
        for name, (options, _) in self.machinetypes.items():
            lines += ["", f"[machinetype {name}]", "machine_model = docker",
                      f"user_data = {name}.user_data"]
            lines += [f"{key} = {value}" for key, value in options.items()]
        temp = self.config_path + ".new"
        with open(temp, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(temp, self.config_path)

    def start(self):
        """Start vacd (draining unless settings said otherwise).

        A vacd started again on the same state directory (after stop(), or after
        its tree was killed) logs anew; the earlier log is kept in earlier_logs.
        """
        self.write_config()
        if self._log is not None:
            self._log.close()
        if self.proc is not None and os.path.exists(self.log_path):
            kept = os.path.join(self.dir, f"vacd-{len(self.earlier_logs) + 1}.log")
            os.replace(self.log_path, kept)
            self.earlier_logs.append(kept)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            vacd_command() + ["--config", self.config_path, "--state-dir", self.state_dir,
                              "--socket", self.socket_path],
            stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def set_draining(self, draining):
        """Rewrite draining in vac.conf and have vacd reload it (SIGHUP); return time.time() at the signal."""
        self.settings["draining"] = "yes" if draining else "no"
        self.write_config()
        sent = time.time()
        self.proc.send_signal(signal.SIGHUP)
        return sent

    def applied_count(self):
        """How many times vacd has logged that it applied a re-read configuration."""
        return self.log_text().count(APPLIED_LINE)

    def wait_applied(self, count, deadline):
        """Wait until vacd has applied its configuration `count` times in all."""
        while self.applied_count() < count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise VacdFailed(f"vacd did not apply its re-read configuration in time\n{self.log_tail()}")
            time.sleep(0.02)

    def check_alive(self):
        if self.proc.poll() is not None:
            raise VacdFailed(f"vacd exited with {self.proc.returncode}:\n{self.log_tail()}")

    def slot_titles(self):
        """{slot: process title} of the slot workers, as `ps` shows them."""
        titles = {}
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return titles
        for child in children:
            try:
                title = " ".join(child.cmdline()).strip()
            except psutil.Error:
                continue
            parts = title.split()
            if len(parts) >= 3 and parts[0] == "vacd:" and parts[1] == "slot":
                titles[int(parts[2])] = title
        return titles

    def wait_slots_idle(self, deadline):
        """Wait until every slot worker's title says idle; return time.time() then."""
        while True:
            self.check_alive()
            titles = self.slot_titles()
            if len(titles) == self.slots and all(" - idle " in title for title in titles.values()):
                return time.time()
            if time.monotonic() > deadline:
                busy = sorted(t for t in titles.values() if " - idle " not in t)
                raise VacdFailed(f"{len(titles)} slot workers, not all idle in time: {busy[:4]}"
                                 f"\n{self.log_tail()}")
            time.sleep(0.1)

    def machine_file(self, machine_uuid, *parts):
        """The text of a file of a machine's directory, or None."""
        try:
            with open(os.path.join(self.state_dir, "machines", machine_uuid, *parts),
                      encoding="utf-8") as source:
                return source.read()
        except OSError:
            return None

    def log_tail(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as source:
                return source.read()[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as source:
                return source.read()
        except OSError:
            return ""

    def log_texts(self):
        """The text of every vacd's log on this state directory, the earliest first."""
        texts = []
        for path in self.earlier_logs:
            with open(path, encoding="utf-8", errors="replace") as source:
                texts.append(source.read())
        return texts + [self.log_text()]

    def logged_times(self, needle, since):
        """Unix times of the log lines containing `needle` stamped at or after `since`."""
        times = []
        for line in self.log_text().splitlines():
            match = LOG_TIME.match(line)
            if match is None or needle not in line:
                continue
            stamp = _log_time(match.group(1))
            # The stamp is truncated to the millisecond.
            if stamp >= since - 0.001:
                times.append(stamp)
        return times

    def logged_times_by_machine(self, needle):
        """{machine uuid: Unix time of the first log line containing `needle` and naming it}."""
        times = {}
        for line in self.log_text().splitlines():
            if needle not in line:
                continue
            stamp, machine = LOG_TIME.match(line), MACHINE_UUID.search(line)
            if stamp is not None and machine is not None:
                times.setdefault(machine.group(0), _log_time(stamp.group(1)))
        return times

    def stop(self):
        """SIGTERM and wait; SIGKILL the process if it outlives STOP_DEADLINE."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def remove_dir(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        run_owner.release(self.factory_name)


# A machine that ends at once with 200: the turnover benchmarks' payload.
TURNOVER_USER_DATA = '#!/bin/sh\necho "200 done" > /var/spool/joboutputs/shutdown_message\n'


def turnover_factory(kind, slots, image):
    """A factory whose one machinetype's machines end at once: as many lifecycles a minute as it can give."""
    return VacdFactory(kind, slots=slots, machinetypes={
        "turnover": ({"root_image": f"docker://{image}", "target_share": "1",
                      "max_wallclock_seconds": "3600", "fizzle_seconds": "1",
                      "backoff_seconds": "10"}, TURNOVER_USER_DATA)})


def _log_time(text):
    """Unix time of a log stamp such as '2026-01-31 12:00:00,123' (local time)."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()
