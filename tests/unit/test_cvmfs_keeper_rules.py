"""What the cvmfs-keeper tells the site about the host's /cvmfs mount."""

from vac.runtimes.mounts import propagation_of
from vac.workers.cvmfs_keeper import private_root_warning

PRIVATE = "36 25 0:32 / /cvmfs rw,relatime - autofs systemd-1 rw\n"
SHARED = "36 25 0:32 / /cvmfs rw,relatime shared:12 - autofs systemd-1 rw\n"


def test_a_private_cvmfs_root_is_named_with_the_fix():
    warning = private_root_warning("/cvmfs", propagation_of("/cvmfs", PRIVATE))
    assert warning.startswith("/cvmfs is on a private mount")
    assert "mount --make-rshared /" in warning


def test_a_shared_or_unknown_root_needs_no_warning():
    assert private_root_warning("/cvmfs", propagation_of("/cvmfs", SHARED)) is None
    assert private_root_warning("/cvmfs", None) is None
