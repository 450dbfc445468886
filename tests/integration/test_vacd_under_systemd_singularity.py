"""Singularity machines of vacd.service under a real systemd: each in its transient scope
vac.slice/vac-machine-<uuid>.scope, with its limits, outside vacd.service, so `systemctl restart`
and `stop vacd` leave it running and the next vacd adopts it.

The booted systemd is test_vacd_under_systemd.py's (systemd_host.py); the
machines are busybox directory images run by the bubblewrap stand-in for
apptainer (tests/bin/apptainer, copied into the shared directory), as slot
accounts made inside with useradd, with `singularity_cgroups = auto`: vacd
sees /run/systemd/system and starts each machine with systemd-run --scope.

Run time: about 20 s on the 2-CPU development machine with systemd booted.
"""

import json
import shutil

import pytest

from docker_daemon import Machinetype, SingularitySettings, create_events  # noqa: F401 (a fixture)
from singularity_images import build_busybox_image
from singularity_site import STANDIN, launcher_of
from systemd_host import UNIT
from systemd_site import Accounts, systemd_factory  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

SING = Machinetype("sing", model="singularity")
MIB = 1024 ** 2
MB_PER_PROCESSOR = 128  # the Site's


@pytest.fixture
def singularity(systemd_host):  # noqa: F811
    """The factory's Singularity settings: two slot accounts inside, the stand-in, a busybox image."""
    host = systemd_host
    image = build_busybox_image(host.shared_dir / "singularity-image")
    standin = host.shared_dir / "apptainer"
    shutil.copy2(STANDIN, standin)
    standin.chmod(0o755)
    accounts = Accounts.make(host, 2)
    yield SingularitySettings(user_prefix=accounts.prefix, command=str(standin), image=str(image),
                              cgroups="auto")
    # Before systemd_factory's own cleanup: nothing of vacd or its machines may outlive the accounts.
    host.systemctl("stop", UNIT, "vac.slice", check=False, timeout=120)
    accounts.remove(host)


def scope(machine):
    return f"vac-machine-{machine.uuid}.scope"


def payload_pids(host, machine):
    """The processes in the machine's payload cgroup (the unified hierarchy, or name=systemd's place)."""
    path = f"vac.slice/{scope(machine)}/payload"
    script = ('for base in /sys/fs/cgroup/unified /sys/fs/cgroup; do '
              '[ -d "$base/$1" ] && { find "$base/$1" -name cgroup.procs -exec cat {} +; exit 0; }; done')
    return sorted(int(pid) for pid in host.run("sh", "-c", script, "-", path).stdout.split())


def assert_in_their_scopes(host, factory, machines):
    """Each machine's launcher and payload where docs/singularity.md puts them, with the limits."""
    for machine in machines:
        shown = host.show(scope(machine), "ActiveState", "Slice", "Delegate", "MemoryMax", "TasksMax",
                          "CPUQuotaPerSecUSec", "ControlGroup", "Description")
        name = json.loads((factory.site.state_dir / "machines" / machine.uuid / "singularity"
                           / "container.json").read_text())["name"]
        assert shown == {"ActiveState": "active", "Slice": "vac.slice", "Delegate": "yes",
                         "MemoryMax": str(MB_PER_PROCESSOR * MIB), "TasksMax": shown["TasksMax"],
                         "CPUQuotaPerSecUSec": "1s", "ControlGroup": f"/vac.slice/{scope(machine)}",
                         "Description": f"vac Singularity machine {name}"}, shown
        launcher, _ = launcher_of(factory.site.state_dir, machine.uuid)
        places = host.cgroups_of(launcher)
        # Tracked in the unified hierarchy; the limits' controllers (v1 here) in the same place.
        for hierarchy in ("", "memory", "cpu", "pids"):
            if hierarchy in places:
                assert places[hierarchy] == f"/vac.slice/{scope(machine)}/launcher", (hierarchy, places)
        payload = payload_pids(host, machine)
        assert payload, f"no process in the payload cgroup of {machine.uuid}"
        for pid in payload:
            places = host.cgroups_of(pid)
            if places:  # the payload's short-lived commands come and go
                assert places[""] == places.get("memory", places[""]) == f"/vac.slice/{scope(machine)}/payload"
        assert not set(payload) & set(host.unit_pids()), "a machine's process in vacd.service"


def test_singularity_machines_outlive_restart_and_stop_of_vacd_in_their_scopes_and_are_adopted(
        systemd_host, systemd_factory, singularity, docker_client, create_events):  # noqa: F811
    host = systemd_host
    factory = systemd_factory([SING], singularity=singularity)
    factory.start()
    machines = factory.wait_running(2)
    launchers = {m.uuid: launcher_of(factory.site.state_dir, m.uuid) for m in machines}
    assert_in_their_scopes(host, factory, machines)

    host.systemctl("restart", UNIT)
    factory.wait_adopted(machines)
    assert {m.uuid: launcher_of(factory.site.state_dir, m.uuid) for m in machines} == launchers
    assert_in_their_scopes(host, factory, machines)

    host.systemctl("stop", UNIT)
    assert host.vacd_processes() == {}
    assert_in_their_scopes(host, factory, machines)
    assert not any(m.finished for m in factory.site.machines())

    factory.start()
    factory.wait_adopted(machines, after_count=2)
    assert [m.uuid for m in factory.site.machines()] == [m.uuid for m in machines], "no second machine per slot"
    factory.finish(docker_client, create_events)
    for machine in machines:
        # Ended: systemd removed the scope, vac the cgroups it made itself (cpuacct here).
        assert host.show(scope(machine), "ActiveState")["ActiveState"] == "inactive"
        left = host.run("sh", "-c", 'ls -d /sys/fs/cgroup/vac.slice/"$1" /sys/fs/cgroup/*/vac.slice/"$1" '
                        '2>/dev/null || true', "-", scope(machine)).stdout
        assert left == "", left


def test_stopping_vac_slice_ends_every_singularity_machine_and_vacd_finalises_each_once(
        systemd_host, systemd_factory, singularity, docker_client, create_events):  # noqa: F811
    host = systemd_host
    factory = systemd_factory([SING], singularity=singularity)
    factory.start()
    machines = factory.wait_running(2)
    # What contrib/systemd/vac.slice says a site may do.
    host.systemctl("stop", "vac.slice")
    for machine in machines:
        ended = factory.site.wait_finished(machine.uuid, factory.journal)
        assert (ended.container_id, ended.shutdown_code) == (machine.container_id, None)
        # The payload got systemd's SIGTERM; its launcher, which ignores it, recorded the end.
        factory.journal.wait_for(f"machine {machine.uuid}: the container exited with code 143")
        assert host.show(scope(machine), "ActiveState")["ActiveState"] == "inactive"
    assert host.show(UNIT, "ActiveState")["ActiveState"] == "active", "vacd is not in vac.slice"
    factory.finish(docker_client, create_events)
