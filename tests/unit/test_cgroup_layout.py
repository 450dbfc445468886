"""The cgroup layout of v1, hybrid and v2 hosts, read from their recorded /proc text."""

from pathlib import Path

import pytest

from vac.cgroups.layout import (
    choose_tracking, parse_layout, parse_proc_cgroup, release_offers_kill)
from vac.cgroups.machine import CgroupError, Limits, MachineCgroup, machine_uuid_of

SAMPLES = Path(__file__).parent / "cgroup_samples"
CGROUP = Path("/sys/fs/cgroup")
UUID = "0123abcd-1111-4222-8333-444444444444"


def sample_layout(name):
    controllers = SAMPLES / f"{name}.controllers"
    return parse_layout((SAMPLES / f"{name}.mountinfo").read_text(), (SAMPLES / f"{name}.cgroup").read_text(),
                        controllers.read_text() if controllers.exists() else "")


def test_el7_is_v1_with_co_mounted_controllers_under_both_names():
    layout = sample_layout("el7-v1")

    assert layout.kind == "v1"
    assert layout.unified is None
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == CGROUP / "cpu,cpuacct"
    assert layout.v1["net_cls"] == layout.v1["net_prio"] == CGROUP / "net_cls,net_prio"
    assert layout.v1["memory"] == CGROUP / "memory"
    assert layout.v1["freezer"] == CGROUP / "freezer"
    assert layout.v1["name=systemd"] == CGROUP / "systemd"
    assert "release_agent" not in " ".join(layout.v1) and "seclabel" not in layout.v1
    assert layout.own["memory"] == "/system.slice/sshd.service"
    assert layout.own["name=systemd"] == "/user.slice/user-0.slice/session-1.scope"
    assert "" not in layout.own
    assert not layout.has_controllers_v2()


def test_ubuntu_2004_is_hybrid_with_an_empty_unified_mount():
    layout = sample_layout("ubuntu2004-hybrid")

    assert layout.kind == "hybrid"
    assert layout.unified == CGROUP / "unified"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == CGROUP / "cpu,cpuacct"
    assert layout.v1["pids"] == CGROUP / "pids"
    assert layout.own[""] == "/user.slice/user-1000.slice/session-3.scope"
    assert layout.own["cpuacct"] == "/user.slice"
    assert not layout.has_controllers_v2()


def test_a_hybrid_host_without_systemd_has_each_controller_mounted_alone():
    layout = sample_layout("debian12-hybrid-nosystemd")

    assert layout.kind == "hybrid"
    assert layout.unified == CGROUP / "unified"
    assert layout.v1["cpu"] == CGROUP / "cpu"
    assert layout.v1["cpuacct"] == CGROUP / "cpuacct"
    assert layout.own == {"name=systemd": "/", "pids": "/", "blkio": "/", "freezer": "/", "devices": "/",
                          "memory": "/batch/b6cd3910d9c2376a33b81077d923034f", "cpuset": "/",
                          "cpuacct": "/", "cpu": "/", "": "/"}


def test_el9_is_v2_with_the_controllers_limits_need():
    layout = sample_layout("el9-v2")

    assert layout.kind == "v2"
    assert layout.unified == CGROUP
    assert dict(layout.v1) == {}
    assert layout.own == {"": "/system.slice/vacd.service"}
    assert layout.has_controllers_v2()


def test_a_v2_root_without_the_memory_controller_cannot_hold_limits():
    text = (SAMPLES / "el9-v2.mountinfo").read_text()

    assert not parse_layout(text, "0::/\n", "cpuset cpu io pids").has_controllers_v2()


def test_a_bind_mounted_subtree_is_not_a_hierarchy_root_and_is_ignored():
    mountinfo = ("29 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
                 "30 23 0:26 / /host/cgroup rw - cgroup2 cgroup2 rw\n")

    assert parse_layout(mountinfo, "0::/\n").unified == Path("/host/cgroup")


def test_a_host_without_any_cgroup_mount_is_refused():
    with pytest.raises(ValueError, match="no cgroup"):
        parse_layout("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n")


def test_proc_cgroup_paths_keep_their_colons_and_malformed_lines_are_skipped():
    assert parse_proc_cgroup("3:cpu,cpuacct:/a:b\n0::/x\nnonsense\n2:pids:\n") == {
        "cpu": "/a:b", "cpuacct": "/a:b", "": "/x"}


@pytest.mark.parametrize("release,offers", [
    ("3.10.0-1160.el7.x86_64", False), ("5.4.0-42-generic", False), ("5.13.19", False),
    ("5.14.0-427.13.1.el9_4.x86_64", True), ("6.18.44", True), ("garbage", False)])
def test_cgroup_kill_comes_with_linux_5_14(release, offers):
    assert release_offers_kill(release) is offers


@pytest.mark.parametrize("name,kill,expected", [
    ("el9-v2", True, "unified"),
    ("ubuntu2004-hybrid", False, "freezer"),        # kernel 5.4: no cgroup.kill
    ("debian12-hybrid-nosystemd", True, "unified"),
    ("el7-v1", False, "freezer"),
    ("el9-v2", False, "unified"),                   # v2 before 5.14: killed with cgroup.freeze
])
def test_auto_tracking_prefers_cgroup_kill_then_the_v1_freezer(name, kill, expected):
    assert choose_tracking(sample_layout(name), "auto", kill) == expected


def test_tracking_asked_for_where_its_hierarchy_is_missing_is_refused():
    with pytest.raises(ValueError, match="freezer"):
        choose_tracking(sample_layout("el9-v2"), "freezer", True)
    with pytest.raises(ValueError, match="cgroup2"):
        choose_tracking(sample_layout("el7-v1"), "unified", False)
    with pytest.raises(ValueError, match="one of"):
        choose_tracking(sample_layout("el7-v1"), "systemd", False)


# Where a machine's cgroups are on each layout (paths only: nothing is made).

def test_on_v2_everything_is_in_the_unified_hierarchy():
    machine = MachineCgroup(sample_layout("el9-v2"), f"/vac/machine-{UUID}", "unified")

    assert machine.mkdirs() == [CGROUP / f"vac/machine-{UUID}", CGROUP / f"vac/machine-{UUID}/launcher",
                                CGROUP / f"vac/machine-{UUID}/payload"]
    assert machine.payload_procs() == [CGROUP / f"vac/machine-{UUID}/payload/cgroup.procs"]
    assert machine.events_path() == CGROUP / f"vac/machine-{UUID}/payload/cgroup.events"


def test_on_el7_the_launcher_joins_freezer_and_each_limits_hierarchy_once():
    machine = MachineCgroup(sample_layout("el7-v1"), f"/vac/machine-{UUID}")

    assert machine.tracking == "freezer"
    assert machine.launcher_procs() == [CGROUP / f"{hierarchy}/vac/machine-{UUID}/launcher/cgroup.procs"
                                        for hierarchy in ("freezer", "cpu,cpuacct", "memory", "pids")]
    assert machine.events_path() is None


def test_on_a_hybrid_host_tracking_is_unified_and_the_limits_are_v1():
    machine = MachineCgroup(sample_layout("debian12-hybrid-nosystemd"),
                            f"/vac.slice/vac-machine-{UUID}.scope", "unified")

    assert machine.payload_procs() == [CGROUP / f"{hierarchy}/vac.slice/vac-machine-{UUID}.scope/payload/cgroup.procs"
                                       for hierarchy in ("unified", "cpu", "cpuacct", "memory", "pids")]


@pytest.mark.parametrize("path", ["vac/machine-x", "/", "/vac/../etc", "/vac//machine-x", "/vac/machine-x/"])
def test_a_machine_path_must_stay_below_the_hierarchy_root(path):
    with pytest.raises(ValueError):
        MachineCgroup(sample_layout("el9-v2"), path, "unified")


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        Limits(cpus=0, memory_bytes=1 << 30, pids=100)


@pytest.mark.parametrize("name,uuid", [
    (f"machine-{UUID}", UUID), (f"vac-machine-{UUID}.scope", UUID),
    (f"machine-{UUID.upper()}", None), ("machine-..", None), (f"vac-machine-{UUID}", None), ("payload", None)])
def test_machine_cgroup_names_carry_a_canonical_uuid(name, uuid):
    assert machine_uuid_of(name) == uuid


# What goes where on a v2 host (EL9), on a stand-in directory tree: this
# host's test VM is hybrid, where the v2 controllers cannot be had.

def fake_v2_layout(root):
    """A v2 layout whose unified mount is `root`, with the files the kernel would show."""
    (root / "cgroup.subtree_control").write_text("")
    return parse_layout(f"29 23 0:26 / {root} rw - cgroup2 cgroup2 rw\n", "0::/\n",
                        "cpuset cpu io memory hugetlb pids")


def kernel_files(directory, **contents):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (directory / name.replace("_", ".", 1)).write_text(text)


def test_on_v2_limits_are_written_on_the_machine_and_its_parents_hand_the_controllers_down(tmp_path):
    layout = fake_v2_layout(tmp_path)
    kernel_files(tmp_path / "vac", cgroup_subtree_control="memory\n")
    machine_dir = tmp_path / f"vac/machine-{UUID}"
    kernel_files(machine_dir, cpu_max="", memory_max="", pids_max="")  # no memory.swap.max: no swap
    machine = MachineCgroup(layout, f"/vac/machine-{UUID}", "unified")

    machine.create(Limits(cpus=4, memory_bytes=8 << 30, pids=4096))

    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "vac/cgroup.subtree_control").read_text().startswith("+cpu +pids")
    assert (machine_dir / "cpu.max").read_text() == "400000 100000"
    assert (machine_dir / "memory.max").read_text() == str(8 << 30)
    assert (machine_dir / "pids.max").read_text() == "4096"
    assert not (machine_dir / "memory.swap.max").exists()
    assert (machine_dir / "launcher").is_dir() and (machine_dir / "payload").is_dir()


def test_on_v2_usage_and_oom_come_from_the_machine_cgroup(tmp_path):
    layout = fake_v2_layout(tmp_path)
    machine_dir = tmp_path / f"vac/machine-{UUID}"
    kernel_files(machine_dir, cpu_stat="usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
                 memory_current="1000\n", memory_events="low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    kernel_files(machine_dir / "payload", memory_events="low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\n")
    machine = MachineCgroup(layout, f"/vac/machine-{UUID}", "unified")

    assert machine.usage() == (2.5, 1000), "memory.current before 5.19, without memory.peak"
    (machine_dir / "memory.peak").write_text("123456789\n")
    assert machine.usage() == (2.5, 123456789)
    assert machine.oom_killed()


def test_unreadable_usage_is_a_cgroup_error(tmp_path):
    machine = MachineCgroup(fake_v2_layout(tmp_path), f"/vac/machine-{UUID}", "unified")

    with pytest.raises(CgroupError, match="usage"):
        machine.usage()
    assert not machine.oom_killed()
    assert not machine.exists()
