"""What the Singularity tests share: a directory every account can reach, a busybox image
directory, throwaway accounts (one per slot: PREFIX00, PREFIX01 …) and the stand-in apptainer.

pytest's tmp_path is under a 0700 directory of root's, which the unprivileged
accounts cannot pass through: state directories and images of these tests
live in a world-traversable temporary directory instead.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

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
