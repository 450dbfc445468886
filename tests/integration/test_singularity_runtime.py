"""The Singularity runtime on real cgroups, real accounts and the bubblewrap stand-in for apptainer.

Each test prepares a machine as a slot does (MJF, user_data, scratch, owned by
the slot's account), then drives the runtime protocol: create, start, wait,
stats, stop, kill, remove, and finding a machine again from its files alone.
"""

import json
import os
import signal
import time
import uuid as uuid_module
from pathlib import Path

import psutil
import pytest

from singularity_site import (STANDIN, busybox_directory_image, needs_singularity_tools, shared_root,  # noqa: F401
                              slot_accounts)
from vac.cgroups.layout import detect
from vac.cgroups.machine import MachineCgroup
from vac.config.model import Machinetype, Settings
from vac.machine.prepare import MachineTerms, container_request, create_directory, prepare_machine
from vac.runtimes.base import ContainerState
from vac.runtimes.singularity import SingularityRuntime, SingularitySettings
from vac.runtimes.singularity_command import PAYLOAD_PATHS
from vac.supervisor.machine_spec import machine_spec
from vac.supervisor.scheduler import Placement

pytestmark = needs_singularity_tools

FACTORY = "f1.example.com"
MIB = 1 << 20

# What a container sees (INTERFACES.md §3): the same checks as the Docker tests' user_data makes.
VIEW_USER_DATA = """#!/bin/sh
out=$JOBOUTPUTS
{
  echo "hostname=$(hostname)"
  echo "id=$(id -u):$(id -g)"
  echo "env=$MACHINEFEATURES $JOBFEATURES $JOBOUTPUTS"
  echo "total_cpu=$(cat /tmp/machinefeatures/total_cpu)"
  echo "job_id=$(cat /tmp/jobfeatures/job_id)"
  echo "pid1=$(cat /proc/1/cmdline | tr '\\0' ' ')"
  touch /user_data 2>/dev/null && echo "user_data=writable" || echo "user_data=read-only"
  touch /tmp/machinefeatures/x 2>/dev/null && echo "mjf=writable" || echo "mjf=read-only"
  touch /scratch/x && echo "scratch=writable"
  echo ok > /tmp/in-workdir
} > $out/view
echo "200 Work completed" > $out/shutdown_message
exit 3
"""

SLEEPER_USER_DATA = """#!/bin/sh
trap '' TERM
( trap '' TERM; sleep 600 ) &
( setsid sh -c 'trap "" TERM; sleep 600' & ) &
touch $JOBOUTPUTS/ready
while true; do sleep 1; done
"""


@pytest.fixture
def site(shared_root, busybox_directory_image, slot_accounts):  # noqa: F811
    prefix, _ = slot_accounts
    state_dir = shared_root / f"state-{uuid_module.uuid4().hex[:8]}"
    settings = Settings(vac_space="vac01.example.com", total_processors=2, state_dir=str(state_dir),
                        mb_per_processor=256, singularity_user_prefix=prefix, singularity_cgroups="vac",
                        singularity_command=str(STANDIN))
    runtime = SingularityRuntime(state_dir, SingularitySettings(command=str(STANDIN), cgroups="vac"), timeout=20)
    made = []

    def machine(user_data, slot=1, **machinetype_changes):
        files = Path(settings.machinetypes_dir) / "sing" / "files"
        files.mkdir(parents=True, exist_ok=True)
        (files / "user_data").write_text(user_data)
        fields = dict(name="sing", machine_model="singularity", root_image=str(busybox_directory_image),
                      user_data="user_data", target_share=1.0, fizzle_seconds=1, max_wallclock_seconds=3600,
                      min_wallclock_seconds=3600, files_name="sing", tmp_binds=("/scratch",))
        fields.update(machinetype_changes)
        placement = Placement(machinetype="sing", processors=1, shutdown_at=int(time.time()) + 3600, superslot=slot,
                              new_superslot=True)
        spec = machine_spec(uuid=str(uuid_module.uuid4()), slot=slot, factory_name=FACTORY,
                            machine_name=f"f1-{slot:02d}.example.com", settings=settings,
                            machinetype=Machinetype(**fields), placement=placement, placed_at=time.time())
        terms = MachineTerms.from_spec(spec)
        paths = create_directory(terms)
        prepared = prepare_machine(terms, paths, time.time(), PAYLOAD_PATHS)
        request = container_request(terms, paths, list(prepared.tmp_binds), 1)
        runtime.ensure_image(request.image, time.monotonic() + 10)
        handle = runtime.create(request)
        made.append(handle)
        return paths, handle

    yield runtime, machine
    for handle in made:
        runtime.remove(handle)


def wait_for(predicate, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_a_machine_sees_its_files_as_its_account_and_its_exit_code_is_recorded(site, slot_accounts):
    runtime, machine = site
    paths, handle = machine(VIEW_USER_DATA)
    assert runtime.inspect(handle.id).state is ContainerState.CREATED
    runtime.start(handle)
    info = runtime.wait(handle, time.monotonic() + 20)
    assert info is not None and info.exit_code == 3, (paths.root / "singularity" / "output.log").read_text()
    view = dict(line.split("=", 1) for line in (paths.joboutputs / "view").read_text().splitlines())
    account = slot_accounts[1][1]
    assert view["hostname"] == "f1-01.example.com"
    assert view["id"] == f"{account.pw_uid}:{account.pw_gid}"
    assert view["env"] == "/tmp/machinefeatures /tmp/jobfeatures /tmp/joboutputs"
    assert (view["total_cpu"], view["job_id"]) == ("1", paths.machine_uuid)
    assert (view["user_data"], view["mjf"], view["scratch"]) == ("read-only", "read-only", "writable")
    # The PID namespace: the payload's tree starts afresh, the host's processes are not seen.
    assert "init" not in view["pid1"] and "systemd" not in view["pid1"]
    # --workdir is the machine's scratch area: its /tmp is there.
    assert (paths.scratch / "tmp" / "in-workdir").read_text() == "ok\n"
    ended = runtime.inspect(handle.id)
    assert ended.state is ContainerState.EXITED and ended.finished_at >= ended.started_at


def test_stop_ends_a_payload_that_ignores_sigterm_with_its_children_and_a_daemon(site):
    runtime, machine = site
    paths, handle = machine(SLEEPER_USER_DATA)
    runtime.start(handle)
    wait_for(lambda: (paths.joboutputs / "ready").exists(), "the payload runs")
    record = json.loads((paths.root / "singularity" / "container.json").read_text())
    cgroup = MachineCgroup(detect(), record["cgroup"], tracking=record["tracking"])
    assert len(cgroup.payload_pids()) >= 4
    started = time.monotonic()
    runtime.stop(handle, 1.0)
    assert time.monotonic() - started < 3.0
    assert cgroup.payload_pids() == set()
    info = runtime.exit_status(handle)
    assert info is not None and info.exit_code in (128 + signal.SIGKILL, 128 + signal.SIGTERM)
    runtime.remove(handle)
    assert not cgroup.exists(), "the cgroup is gone once the machine is removed"
    assert runtime.find(FACTORY) == []


def test_a_machine_is_found_again_from_its_files_and_its_launcher_outlives_the_runtime(site):
    runtime, machine = site
    paths, handle = machine(SLEEPER_USER_DATA, slot=2)
    runtime.start(handle)
    wait_for(lambda: (paths.joboutputs / "ready").exists(), "the payload runs")
    launcher = json.loads((paths.root / "singularity" / "launcher.pid").read_text())["pid"]
    # A new runtime (a new worker, a new vacd) knows the machine only from its directory.
    again = SingularityRuntime(runtime.state_dir, runtime.settings, timeout=20)
    [found] = again.find(FACTORY, 2)
    assert [each.id for each in again.find(FACTORY, 2, machine_uuid=paths.machine_uuid)] == [handle.id]
    assert again.find(FACTORY, 2, machine_uuid=str(uuid_module.uuid4())) == []
    assert (found.id, found.state, found.machine_uuid) == (handle.id, ContainerState.RUNNING, paths.machine_uuid)
    assert psutil.pid_exists(launcher)
    usage = again.stats(found)
    assert usage.sampled_at is not None and usage.memory_bytes > 0
    again.kill(found)
    info = again.wait(found, time.monotonic() + 10)
    assert info is not None and info.exit_code == 128 + signal.SIGKILL and info.finished_at is not None
    wait_for(lambda: not psutil.pid_exists(launcher), "the launcher ends once it recorded the exit")


def test_a_missing_image_fails_the_start_clearly(site):
    runtime, machine = site
    from vac.runtimes.base import ImageMissing
    with pytest.raises(ImageMissing, match="does not exist"):
        machine(VIEW_USER_DATA, root_image="/nonexistent/image")
