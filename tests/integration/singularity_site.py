"""What the Singularity tests share: a directory every account can reach, a busybox image
directory, throwaway accounts (one per slot: PREFIX00, PREFIX01 …), the stand-in apptainer,
a CernVM-FS repository directory under /cvmfs, and the cleanup after a test that kills what
its machines and accounts left and removes their cgroups, without vac's own code.

pytest's tmp_path is under a 0700 directory of root's, which the unprivileged
accounts cannot pass through: state directories and images of these tests
live in a world-traversable temporary directory instead.
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from accounts import ACCOUNT_TOOL_DEADLINE, account_tool
from singularity_images import build_busybox_image

STANDIN = Path(__file__).resolve().parent.parent / "bin" / "apptainer"

needs_singularity_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("bwrap") is None,
    reason="Singularity machines' tests need root, useradd and bwrap (Debian's bubblewrap)")


def reachable_directory(prefix):
    """A new temporary directory every account may pass through (0755)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory


def make_accounts(prefix, count):
    """Accounts PREFIX00 … with their own groups; a function that removes them."""
    names = [f"{prefix}{slot:02d}" for slot in range(count)]
    for name in names:
        account_tool("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name)

    def remove():
        for name in names:
            subprocess.run(["userdel", name], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)
            subprocess.run(["groupdel", name], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)
    return [pwd.getpwnam(name) for name in names], remove


def account_prefix():
    """A prefix for this run's accounts (user names stay under 32 characters)."""
    return f"vs{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def shared_root():
    directory = reachable_directory("vac-singularity-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def busybox_directory_image(shared_root):
    return build_busybox_image(shared_root / "image")


@pytest.fixture(scope="module")
def slot_accounts(request):
    """(prefix, [pwd entries]) of four throwaway slot accounts, removed after the module."""
    prefix = account_prefix()
    accounts, remove = make_accounts(prefix, 4)
    request.addfinalizer(remove)
    return prefix, accounts


# Cleaning up after a test, pass or fail, without vac's own code: what it left
# may be what went wrong.

CGROUP_MOUNTS = Path("/sys/fs/cgroup")
CLEANUP_DEADLINE = 15


def machine_cgroup_directories(machine_uuid):
    """The directories of a machine's cgroup (vac's subtree) in every mounted hierarchy, each once."""
    name = f"vac/machine-{machine_uuid}"
    candidates = [CGROUP_MOUNTS / name, *(hierarchy / name for hierarchy in CGROUP_MOUNTS.iterdir())]
    # Co-mounted v1 controllers (cpu,cpuacct) appear under several names.
    return sorted({os.path.realpath(path) for path in candidates if path.is_dir()})


def machine_cgroups_exist(machine_uuid):
    """True while any hierarchy still holds the machine's cgroup."""
    return bool(machine_cgroup_directories(machine_uuid))


def _cgroup_pids(directory):
    pids = set()
    for current, _, _ in os.walk(directory, onerror=lambda error: None):
        try:
            pids |= {int(pid) for pid in Path(current, "cgroup.procs").read_text().split()}
        except FileNotFoundError:
            pass
    return pids


def machine_pids(machine_uuid):
    """The pids in the machine's cgroups (launcher and payload), in every hierarchy."""
    pids = set()
    for directory in machine_cgroup_directories(machine_uuid):
        pids |= _cgroup_pids(directory)
    return pids


def _kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_machine_cgroups(machine_uuid):
    """SIGKILL whatever is in the machine's cgroups (thawed first), then remove them, deepest first."""
    directories = machine_cgroup_directories(machine_uuid)
    deadline = time.monotonic() + CLEANUP_DEADLINE
    for directory in directories:
        for current, _, _ in os.walk(directory, onerror=lambda error: None):
            state = Path(current, "freezer.state")
            if state.exists():
                state.write_text("THAWED")
        while pids := _cgroup_pids(directory):
            assert time.monotonic() < deadline, f"{directory} still holds {sorted(pids)}"
            _kill_pids(pids)
            time.sleep(0.05)
    for directory in directories:
        for current, _, _ in reversed(list(os.walk(directory, onerror=lambda error: None))):
            try:
                os.rmdir(current)
            except FileNotFoundError:
                pass


def in_a_machine_cgroup(process):
    """True if the process is in a Singularity machine's cgroup (launcher or payload), in any hierarchy."""
    try:
        text = Path(f"/proc/{process.pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any("/vac/machine-" in line.split(":", 2)[-1] for line in text.splitlines())


def account_processes(uids):
    """Processes whose real or effective uid is one of `uids`."""
    found = []
    for process in psutil.process_iter(["uids"]):
        uids_of = process.info["uids"]
        if uids_of is not None and (uids_of.real in uids or uids_of.effective in uids):
            found.append(process)
    return found


def kill_account_processes(uids):
    """SIGKILL every process of the accounts; wait until none is left."""
    deadline = time.monotonic() + CLEANUP_DEADLINE
    while processes := [p for p in account_processes(uids) if _alive(p)]:
        assert time.monotonic() < deadline, f"processes of the test accounts survive: {processes}"
        _kill_pids(p.pid for p in processes)
        time.sleep(0.05)


def _alive(process):
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_alive(pid):
    """True while the process runs (a zombie has ended)."""
    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def launcher_of(state_dir, machine_uuid):
    """The pid and start time a machine's launcher recorded."""
    record = json.loads((Path(state_dir) / "machines" / machine_uuid / "singularity" / "launcher.pid").read_text())
    return record["pid"], record["start_time"]


def machine_uuids(state_dir):
    """The UUIDs of every machine directory under state_dir."""
    machines = Path(state_dir) / "machines"
    return sorted(entry.name for entry in machines.iterdir()) if machines.is_dir() else []


def clean_up_machines(state_dir, uids):
    """After a test: no process of its machines or accounts left, no cgroup of its machines."""
    kill_account_processes(uids)
    for machine_uuid in machine_uuids(state_dir):
        remove_machine_cgroups(machine_uuid)


def reachable_state_dir(shared_root):
    """An empty state directory that the slot accounts can pass through to their machine directories."""
    state_dir = shared_root / f"state-{uuid.uuid4().hex[:8]}"
    state_dir.mkdir(mode=0o711)
    state_dir.chmod(0o711)
    return state_dir


# A CernVM-FS repository as machines find it: /cvmfs/REPOSITORY. Only the
# directory that holds the repositories is vac's to bind, and vac binds /cvmfs's.
CVMFS_ROOT = Path("/cvmfs")


@pytest.fixture
def cvmfs_repository():
    """The name of a repository directory made for this test under /cvmfs, removed afterwards."""
    name = f"vac-test-{uuid.uuid4().hex[:8]}.example.org"
    made_root = not CVMFS_ROOT.exists()
    try:
        CVMFS_ROOT.mkdir(mode=0o755, exist_ok=True)
        (CVMFS_ROOT / name).mkdir(mode=0o755)
    except OSError as error:
        # A host whose /cvmfs is autofs's takes no directory of ours.
        pytest.skip(f"cannot make a test repository under {CVMFS_ROOT}: {error}")
    (CVMFS_ROOT / name / "README").write_text("repository content\n")
    yield name
    shutil.rmtree(CVMFS_ROOT / name, ignore_errors=True)
    if made_root:
        try:
            CVMFS_ROOT.rmdir()
        except OSError:
            pass  # another test's repository is still in it
