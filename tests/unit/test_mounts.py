"""Which propagation a bind of a host path may ask for, read from mountinfo text."""

import pytest

from vac.runtimes.mounts import host_propagation, propagation_of

# As systemd leaves a host: everything shared; /cvmfs an autofs mount with
# two repositories mounted beneath it.
SYSTEMD_HOST = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
40 22 0:35 / /cvmfs rw,relatime shared:20 - autofs /etc/auto.cvmfs rw,fd=7,indirect
41 40 0:36 / /cvmfs/lhcb.cern.ch ro,relatime shared:21 - fuse cvmfs2 ro
42 40 0:37 / /cvmfs/grid.cern.ch ro,relatime shared:22 - fuse cvmfs2 ro
"""

# A host where nothing made mounts shared, with a tmpfs at a path holding a space.
PRIVATE_HOST = """\
22 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw
40 22 0:35 / /cvmfs rw,relatime - autofs /etc/auto.cvmfs rw,fd=7,indirect
50 22 0:40 / /srv/my\\040cvmfs rw,relatime master:3 - tmpfs tmpfs rw
51 22 0:41 / /cvmfs2 rw,relatime shared:9 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize("path, expected", [
    ("/cvmfs/lhcb.cern.ch", "shared"),
    ("/cvmfs/lhcb.cern.ch/lib", "shared"),
    ("/cvmfs/atlas.cern.ch", "shared"),       # not mounted yet: the autofs mount holds it
    ("/cvmfs", "shared"),
    ("/home", "shared"),
])
def test_under_systemd_everything_is_shared(path, expected):
    assert propagation_of(path, SYSTEMD_HOST) == expected


@pytest.mark.parametrize("path, expected", [
    ("/cvmfs", "private"),
    ("/cvmfs/lhcb.cern.ch", "private"),
    ("/cvmfs2/x", "shared"),                  # /cvmfs is no prefix of /cvmfs2 as a path
    ("/srv/my cvmfs/repo", "slave"),          # \040 in mountinfo is a space
    ("/srv/my", "private"),
])
def test_the_mount_holding_a_path_decides(path, expected):
    assert propagation_of(path, PRIVATE_HOST) == expected


def test_of_mounts_stacked_on_one_point_the_last_is_on_top():
    stacked = PRIVATE_HOST + "60 40 0:50 / /cvmfs rw - tmpfs tmpfs rw\n61 60 0:51 / /cvmfs rw shared:30 - tmpfs t rw\n"
    assert propagation_of("/cvmfs/x", stacked) == "shared"


def test_lines_that_do_not_parse_are_skipped():
    assert propagation_of("/cvmfs", "garbage\n\n1 2 3\n") is None
    assert propagation_of("/cvmfs", "garbage\n" + PRIVATE_HOST) == "private"


def test_this_hosts_table_answers_for_the_root():
    assert host_propagation("/") in ("shared", "slave", "private")
