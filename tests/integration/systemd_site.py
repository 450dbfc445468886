"""A factory run by the vacd.service of a booted systemd (systemd_host.py), seen as a site sees it.

Each test gets its own directory in the shared one (bound at the same path
inside the container, so the engine finds its machines' files), its own
factory label and configuration, and /etc/vac.conf pointing at it. The
file is reached through a symbolic link on purpose: vacd watches /etc
with inotify, which sees a change of the link but not of the file it
names, so only `systemctl reload` makes vacd read a change the test makes.
After each test vacd is stopped, its failed state reset, the test's
drop-ins, Singularity machines and accounts removed; the factory_label
fixture removes its containers.
"""

import dataclasses
import os
import random
import shutil
import time
import uuid

import pytest

from docker_daemon import Site, assert_accounted_once, assert_one_container_each, containers
from systemd_host import UNIT

# What the unit's stop may take here: the root's ordered stop, well under TimeoutStopSec.
STOP_SECONDS = 60
# Singularity accounts' uids and gids, far above what useradd gives on the host: the
# kernel is shared, and a vacd on the host (another run's) whose reaper saw a
# process of one of its own accounts' uids here would kill it as an escapee.
ACCOUNT_ID_BASE = 400000
ACCOUNT_ID_SPREAD = 500000


class SystemdSite(Site):
    """A Site whose configuration names its state directory, for a vacd started with no options."""

    def write_config(self, machinetypes=None, draining=False):
        super().write_config(machinetypes, draining)
        text = self.config.read_text().replace("[settings]\n", f"[settings]\nstate_dir = {self.state_dir}\n", 1)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.rename(tmp, self.config)


class Journal:
    """vacd.service's journal from a cursor on, as the Site helpers read a daemon's log."""

    def __init__(self, host, cursor):
        self.host = host
        self.cursor = cursor

    def entries(self):
        return self.host.journal(self.cursor)

    def text(self):
        return "\n".join(entry["MESSAGE"] for entry in self.entries())

    def wait_for(self, needle, count=1, timeout=30):
        """The entries holding `needle`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.entries() if needle in entry["MESSAGE"]]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{needle!r} not in the journal {count}x:\n{self.text()[-6000:]}"
            time.sleep(0.2)


@dataclasses.dataclass
class Accounts:
    """Slot accounts PREFIX00 … made inside the booted systemd."""
    prefix: str
    uids: list

    @classmethod
    def make(cls, host, count):
        prefix = f"vs{uuid.uuid4().hex[:6]}"
        first = ACCOUNT_ID_BASE + random.randrange(ACCOUNT_ID_SPREAD // 100) * 100
        for slot in range(count):
            name, number = f"{prefix}{slot:02d}", str(first + slot)
            host.run("groupadd", "--gid", number, name)
            host.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--uid", number,
                     "--gid", number, name)
        return cls(prefix, [first + slot for slot in range(count)])

    def remove(self, host):
        for slot, uid in enumerate(self.uids):
            host.run("pkill", "--signal", "KILL", "--uid", str(uid), check=False)
            name = f"{self.prefix}{slot:02d}"
            host.run("userdel", name, check=False)
            host.run("groupdel", name, check=False)


class Factory:
    """One test's factory under systemd: its Site, the host, and the journal since the test began."""

    def __init__(self, host, site, cursor):
        self.host = host
        self.site = site
        self.journal = Journal(host, cursor)

    def start(self):
        """`systemctl start vacd`; the seconds it took to return."""
        started = time.monotonic()
        self.host.systemctl("start", UNIT)
        return time.monotonic() - started

    def reload(self):
        """`systemctl reload vacd` and wait until vacd applied the configuration."""
        applied = len(self.journal.wait_for("configuration applied", count=0))
        self.host.systemctl("reload", UNIT)
        self.journal.wait_for("configuration applied", count=applied + 1)

    def main_pid(self):
        return int(self.host.show(UNIT, "MainPID")["MainPID"])

    def wait_running(self, count, timeout=60):
        return self.site.wait_running(count, self.journal, timeout)

    def wait_adopted(self, machines, after_count=1):
        """Each machine's adoption logged `after_count` times by now, with its own container."""
        for machine in machines:
            self.journal.wait_for(f"machine {machine.uuid}: adopted container "
                                  f"{short_id(machine.container_id)}", count=after_count)

    def finish(self, docker_client, create_events, timeout=60):
        """Drain, release every machine, wait until all are finalised; then the checks every test makes."""
        self.site.write_config(draining=True)
        self.reload()
        deadline = time.monotonic() + timeout
        while True:
            machines = self.site.machines()
            for machine in machines:
                if machine.state == "running" and machine.ready and not (machine.joboutputs / "go").exists():
                    self.site.release(machine.uuid)
            if all(m.finished and m.state == "done" for m in machines) \
                    and not containers(docker_client, self.site.factory):
                break
            assert time.monotonic() < deadline, (f"not drained within {timeout} s: {machines}\n"
                                                 f"{self.journal.text()[-6000:]}")
            time.sleep(0.3)
        self.host.systemctl("stop", UNIT, timeout=STOP_SECONDS)
        assert_one_container_each(create_events, self.site)
        assert_accounted_once(self.site, [self.journal.text()])


def short_id(container_id):
    """A container id as vacd logs it: Docker's 12 characters, a Singularity machine's whole id."""
    return container_id if container_id.startswith("singularity-") else container_id[:12]


@pytest.fixture
def systemd_factory(systemd_host, factory_label, busybox_image):
    """make(machinetypes, processors=2, singularity=None) -> a Factory whose vacd.service is not started yet."""
    host = systemd_host
    directory = host.shared_dir / f"test-{factory_label}"
    directory.mkdir(mode=0o755)
    made = []

    def make(machinetypes, processors=2, singularity=None):
        site = SystemdSite(directory, factory_label, busybox_image, machinetypes, processors=processors,
                           singularity=singularity)
        # Singularity accounts pass through it to their machine directories.
        site.state_dir.chmod(0o711)
        host.run("ln", "-sfn", str(site.config), "/etc/vac.conf")
        factory = Factory(host, site, host.cursor())
        made.append(factory)
        return factory

    yield make
    host.systemctl("stop", UNIT, check=False, timeout=STOP_SECONDS)
    host.systemctl("reset-failed", UNIT, check=False)
    # Whatever Singularity machine is left ends with its scope.
    host.systemctl("stop", "vac.slice", check=False, timeout=STOP_SECONDS)
    host.remove_drop_ins()
    host.run("rm", "-f", "/etc/vac.conf")
    shutil.rmtree(directory, ignore_errors=True)
