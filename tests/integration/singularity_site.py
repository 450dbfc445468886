"""What the Singularity tests share: a directory every account can reach, a busybox image
directory, throwaway accounts (one per slot: PREFIX00, PREFIX01 …), the stand-in apptainer,
a CernVM-FS repository directory under /cvmfs, machine cgroups made by a test under a
base of its own, and the cleanup after a test that kills what its machines and accounts
left and removes their cgroups, without vac's own code.

pytest's tmp_path is under a 0700 directory of root's, which the unprivileged
accounts cannot pass through: state directories and images of these tests
live in a world-traversable temporary directory instead.
"""

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from accounts import kill_account_processes, kill_pids, throwaway_accounts
from singularity_images import build_busybox_image
from vac.cgroups.layout import choose_tracking, detect
from vac.cgroups.machine import CgroupError

STANDIN = Path(__file__).resolve().parent.parent / "bin" / "apptainer"
# The PATH the stand-in is run with.
HOST_PATH = "/usr/local/bin:/usr/bin:/bin"

needs_singularity_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("bwrap") is None,
    reason="Singularity machines' tests need root, useradd and bwrap (Debian's bubblewrap)")


def reachable_directory(prefix):
    """A new temporary directory every account may pass through (0755)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory


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
    return prefix, throwaway_accounts(request, [f"{prefix}{slot:02d}" for slot in range(4)])


@pytest.fixture(name="tmp_path")
def reachable_tmp_path(request, slot_accounts):
    """The test's directory, one the slot accounts can pass through to their machines.

    Imported into a test module it replaces pytest's tmp_path (under a 0700
    directory of root's), for daemon_factory too; afterwards no process of the
    accounts and no cgroup of a machine under its state directory is left.
    """
    directory = reachable_directory(f"vac-{request.module.__name__.replace('_', '-')}-")
    yield directory
    clean_up_machines(directory / "state", {account.pw_uid for account in slot_accounts[1]})
    shutil.rmtree(directory, ignore_errors=True)


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
            kill_pids(pids)
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


# Machine cgroups that a test makes itself with vac's MachineCgroup, under a base
# of its own beside vac's (/vac-test-<random>), removed with it afterwards.

@pytest.fixture(scope="module")
def layout():
    """This host's cgroup layout; the test is skipped where it cannot make cgroups."""
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    try:
        return detect()
    except ValueError as error:
        pytest.skip(f"no cgroup hierarchy here: {error}")


@pytest.fixture(params=["unified", "freezer"])
def tracking(request, layout):
    """Each tracking mode in turn, where this host offers it."""
    try:
        return choose_tracking(layout, request.param, True)
    except ValueError as error:
        pytest.skip(str(error))


def new_cgroup_base():
    """A new base for a test's machine cgroups."""
    return f"/vac-test-{uuid.uuid4().hex[:10]}"


def remove_test_cgroup(cgroup):
    """Remove a test's machine cgroup, then its base."""
    cgroup.remove()
    for directory in {path.parent for path in cgroup.mkdirs()[::3]}:
        if directory.exists():
            directory.rmdir()


def scrap_test_cgroup(cgroup):
    """Kill what is left in a test's machine cgroup, remove it and its base.

    Where the cgroup's kill fails, what it holds is killed pid by pid before
    the failure is raised."""
    try:
        cgroup.kill_all(timeout=10)
    except CgroupError:
        deadline = time.monotonic() + 10
        while cgroup.pids() and time.monotonic() < deadline:
            kill_pids(cgroup.pids())
            time.sleep(0.05)
        raise
    finally:
        remove_test_cgroup(cgroup)


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
