"""The whole vacd running Singularity machines, alone and beside Docker ones, seen as a site sees it:
adoption after the whole tree is killed, a mixed pool's shares, and the
reaper's sweep of what the slot accounts run outside their machines.

The machines are busybox directory images run by the bubblewrap stand-in for
apptainer, each as its slot's throwaway account in a cgroup of its own; they
wait until the test releases them (docker_daemon.GATED_USER_DATA). After each
test the factory is drained and must hold nothing: every machine finalised
once, one APEL record for each that lived past fizzle_seconds, no container,
no process of the accounts, no machine cgroup.
"""

import os
import subprocess
import time

import psutil
import pytest

from accounts import account_processes, pid_alive
from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import create_events  # noqa: F401 (a fixture)
from docker_daemon import Machinetype, Site, SingularitySettings, finish_and_check
from outages import kill_tree
from singularity_site import (STANDIN, busybox_directory_image, in_a_machine_cgroup,  # noqa: F401 (fixtures)
                              launcher_of, machine_cgroup_directories, machine_cgroups_exist,
                              needs_singularity_tools, reachable_tmp_path, shared_root, slot_accounts)

pytestmark = needs_singularity_tools

SING = Machinetype("sing", model="singularity")
# What a sweep itself may take, beyond its interval, on a loaded test host.
SWEEP_SLACK_SECONDS = 1.0


@pytest.fixture
def singularity(slot_accounts, busybox_directory_image):  # noqa: F811
    """What the Site's factory needs to run Singularity machines as the slot accounts."""
    return SingularitySettings(user_prefix=slot_accounts[0], command=str(STANDIN),
                               image=str(busybox_directory_image))


def assert_nothing_left(site, slot_accounts):  # noqa: F811
    """No machine cgroup and no process of the slot accounts (vacd stopped, the factory drained)."""
    for machine in site.machines():
        assert not machine_cgroups_exist(machine.uuid), machine_cgroup_directories(machine.uuid)
    uids = {account.pw_uid for account in slot_accounts[1]}
    assert account_processes(uids) == []


@pytest.mark.docker
def test_after_the_whole_tree_is_killed_a_new_vacd_adopts_every_singularity_machine(
        tmp_path, factory_label, busybox_image, singularity, slot_accounts, daemon_factory, docker_client,
        create_events):  # noqa: F811
    site = Site(tmp_path, factory_label, busybox_image, [SING], processors=2, singularity=singularity)
    first_daemon = daemon_factory(site.config, log_name="vacd-1.log")
    machines = site.wait_running(2, first_daemon)
    assert [m.container_id for m in machines] == [f"singularity-{m.uuid}" for m in machines]

    launchers = [launcher_of(site.state_dir, m.uuid)[0] for m in machines]
    kill_tree(first_daemon, spare=in_a_machine_cgroup)
    assert all(pid_alive(pid) for pid in launchers), "the machines live on without vacd"
    assert not any(m.finished for m in site.machines())

    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    for machine in machines:
        daemon.wait_log(f"slot {machine.slot:02d} machine {machine.uuid}: adopted container {machine.container_id}")
    assert [m.uuid for m in site.machines()] == [m.uuid for m in machines], "nothing placed twice"

    assert [(done.shutdown_code, done.container_id) for done in site.release_all(machines, daemon)] == [
        (200, machine.container_id) for machine in machines]
    finish_and_check(site, daemon, docker_client, create_events, [first_daemon.text()])
    assert_nothing_left(site, slot_accounts)


def split(machines):
    """How many of `machines` are of each machinetype."""
    counts = {}
    for machine in machines:
        counts[machine.machinetype] = counts.get(machine.machinetype, 0) + 1
    return counts


@pytest.mark.docker
def test_a_mixed_docker_and_singularity_pool_holds_its_shares_generation_after_generation(
        tmp_path, factory_label, busybox_image, singularity, slot_accounts, daemon_factory, docker_client,
        create_events):  # noqa: F811
    dock, sing = Machinetype("dock", share=1), Machinetype("sing", share=3, model="singularity")
    site = Site(tmp_path, factory_label, busybox_image, [dock, sing], processors=4, singularity=singularity)
    daemon = daemon_factory(site.config)
    generations = []
    for _ in range(3):
        running = site.wait_running(4, daemon)
        generations.append(split(running))
        assert [done.shutdown_code for done in site.release_all(running, daemon)] == [200] * len(running)
    assert generations == [{"dock": 1, "sing": 3}] * 3
    finish_and_check(site, daemon, docker_client, create_events, [])
    assert_nothing_left(site, slot_accounts)


def account_process(uid, argv, timeout=10):
    """The process of account `uid` running `argv`, once it runs."""
    deadline = time.monotonic() + timeout
    while True:
        for process in account_processes({uid}):
            try:
                if process.cmdline() == argv:
                    return process
            except psutil.NoSuchProcess:
                pass
        assert time.monotonic() < deadline, f"no process {argv} of uid {uid}"
        time.sleep(0.02)


@pytest.mark.docker
def test_the_reaper_kills_a_slot_account_s_processes_outside_its_machines_within_one_sweep(
        tmp_path, factory_label, busybox_image, singularity, slot_accounts, daemon_factory, docker_client,
        create_events):  # noqa: F811
    site = Site(tmp_path, factory_label, busybox_image, [SING], processors=2, singularity=singularity)
    daemon = daemon_factory(site.config)
    machines = site.wait_running(2, daemon)
    launchers = [launcher_of(site.state_dir, m.uuid)[0] for m in machines]
    account = slot_accounts[1][machines[0].slot]

    # A login as the account, and a daemon it left behind in a session of its own.
    login = subprocess.Popen(["su", "-s", "/bin/sh", account.pw_name, "-c", "exec sleep 600"])
    try:
        subprocess.run(["su", "-s", "/bin/sh", account.pw_name, "-c", "setsid -f sleep 601"], check=True,
                       timeout=10)
        escapees = [account_process(account.pw_uid, ["sleep", "600"]),
                    account_process(account.pw_uid, ["sleep", "601"])]
        started = time.monotonic()
        assert escapees[1].pid == os.getsid(escapees[1].pid)
        deadline = started + singularity.sweep_seconds + SWEEP_SLACK_SECONDS
        while any(pid_alive(escapee.pid) for escapee in escapees):
            assert time.monotonic() < deadline, "not killed within one sweep"
            time.sleep(0.02)
        assert login.wait(10) != 0
    finally:
        login.kill()
        login.wait()
    for escapee in escapees:
        daemon.wait_log(f"reaper: killed pid {escapee.pid} of {account.pw_name}")

    # The machines of the same accounts, in their payload cgroups, run on.
    assert all(pid_alive(pid) for pid in launchers)
    assert [m.uuid for m in site.machines() if m.state == "running" and not m.finished] == [m.uuid for m in machines]
    assert [done.shutdown_code for done in site.release_all(machines, daemon)] == [200] * len(machines)
    finish_and_check(site, daemon, docker_client, create_events, [])
    assert_nothing_left(site, slot_accounts)
