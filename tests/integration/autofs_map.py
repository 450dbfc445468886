"""The real automounter for CernVM-FS tests: autofs serving local directories.

An autofs mount point stands in for /cvmfs. Its program map bind-mounts
REPOSITORIES/NAME on ROOT/NAME when something looks the name up, answers
"no such entry" for names without a directory, and never answers for names
starting with "hung." (until the tests end), as a hung repository does. The
timeout is short, so a repository nobody uses is unmounted within seconds.

If no automount daemon runs, one of our own runs with a master map of its
own; if one runs already (only one can), the map joins it through
/etc/auto.master.d and a SIGHUP.
"""

import os
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from vac.mountinfo import unescape

EXPIRE_SECONDS = 1
START_SECONDS = 10.0
STOP_SECONDS = 20.0


def automounter_is_required():
    """True where a missing automount program must fail the run instead of skipping."""
    return os.environ.get("CI") == "true" or autofs_is_demanded()


def autofs_is_demanded():
    """True where even a kernel without autofs must fail the run (VAC_REQUIRE_AUTOFS=1)."""
    return os.environ.get("VAC_REQUIRE_AUTOFS", "") not in ("", "0")


def missing_autofs(*, is_root, has_automount, kernel_has_autofs):
    """(why autofs tests cannot run here or None, whether that must fail the run)."""
    if not is_root:
        return "mounting needs root", automounter_is_required()
    if not has_automount:
        return "there is no automount (Debian: apt-get install autofs)", automounter_is_required()
    if not kernel_has_autofs():
        # No package puts a filesystem into the kernel: CI on such a machine
        # skips, unless the run demands autofs explicitly.
        return ("this kernel has no autofs filesystem (not in /proc/filesystems)",
                autofs_is_demanded())
    return None, False


def kernel_has_autofs(filesystems="/proc/filesystems"):
    """True if the running kernel offers the autofs filesystem (loading its module if it can)."""
    if _lists_autofs(filesystems):
        return True
    # A modular kernel lists autofs only once the module is in; a container cannot load it.
    if shutil.which("modprobe") is not None:
        subprocess.run(["modprobe", "-q", "autofs4"], capture_output=True, timeout=30)
    return _lists_autofs(filesystems)


def _lists_autofs(filesystems):
    try:
        with open(filesystems, encoding="ascii", errors="replace") as table:
            return any(line.split()[-1:] == ["autofs"] for line in table)
    except OSError:
        return False


def mount_points():
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        return [unescape(line.split()[4]) for line in table]


def _daemon_pids():
    found = subprocess.run(["pgrep", "-x", "automount"], capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in found.stdout.split()]


class Automounter:
    """An autofs mount point at `base`/cvmfs and the directories it serves."""

    def __init__(self, base):
        self.base = base
        self.root = base / "cvmfs"
        self.repositories = base / "repositories"
        self.release = base / "release"    # exists: hung lookups give up
        self.map = base / "auto.vac-tests"
        self.pidfile = base / "automount.pid"
        self.dropin = None                 # our file in /etc/auto.master.d, when joining a daemon
        self.process = None

    def start(self):
        for path in (self.root, self.repositories):
            path.mkdir(parents=True)
        self.map.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            case "$1" in
              hung.*)
                n=0
                while [ ! -e '{self.release}' ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
                exit 0 ;;
            esac
            [ -d '{self.repositories}'/"$1" ] && echo "-fstype=bind :{self.repositories}/$1"
            exit 0
            """))
        self.map.chmod(0o755)
        entry = f"{self.root} program:{self.map} --timeout={EXPIRE_SECONDS}\n"
        running = _daemon_pids()
        if running:
            self.dropin = f"/etc/auto.master.d/vac-tests-{os.getpid()}.autofs"
            with open(self.dropin, "w", encoding="utf-8") as dropin:
                dropin.write(entry)
            for pid in running:
                os.kill(pid, signal.SIGHUP)
        else:
            master = self.base / "auto.master"
            master.write_text(entry)
            self.process = subprocess.run(
                ["automount", "--pid-file", str(self.pidfile), f"file:{master}"],
                capture_output=True, text=True, timeout=30)
            if self.process.returncode != 0:
                raise RuntimeError(f"automount failed: {self.process.stderr.strip()}")
        deadline = time.monotonic() + START_SECONDS
        while str(self.root) not in mount_points():
            if time.monotonic() > deadline:
                self.stop()
                how = (f"the running automount (pids {running}) did not take {self.dropin}" if running
                       else "our automount did not mount it")
                raise RuntimeError(f"no autofs mount on {self.root}: {how}")
            time.sleep(0.05)
        return self

    def add(self, name, files=None):
        """A repository directory `name`, holding `files` ({name: text})."""
        directory = self.repositories / name
        directory.mkdir()
        for file_name, text in (files or {}).items():
            (directory / file_name).write_text(text)
        return directory

    def mounted(self, name):
        return str(self.root / name) in mount_points()

    def stop(self):
        self.release.touch()
        if self.dropin is not None:
            os.unlink(self.dropin)
            for pid in _daemon_pids():
                os.kill(pid, signal.SIGHUP)
        elif self.pidfile.exists():
            os.kill(int(self.pidfile.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while any(point == str(self.root) or point.startswith(f"{self.root}/") for point in mount_points()):
            if time.monotonic() > deadline:
                subprocess.run(["umount", "--lazy", "--recursive", str(self.root)], capture_output=True,
                               timeout=30)
                break
            time.sleep(0.1)


@pytest.fixture(scope="session")
def automounter(tmp_path_factory):
    """A running Automounter for the whole session."""
    problem, required = missing_autofs(is_root=os.geteuid() == 0,
                                       has_automount=shutil.which("automount") is not None,
                                       kernel_has_autofs=kernel_has_autofs)
    if problem is not None:
        if required:
            pytest.fail(f"autofs required (CI or VAC_REQUIRE_AUTOFS set) but {problem}", pytrace=False)
        pytest.skip(f"autofs unavailable: {problem}")
    mounter = Automounter(tmp_path_factory.mktemp("autofs"))
    try:
        mounter.start()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    yield mounter
    mounter.stop()
