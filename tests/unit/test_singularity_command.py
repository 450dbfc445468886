"""The command lines of a Singularity machine: one list comparison each."""

from pathlib import Path

import pytest

from vac.runtimes.base import ContainerRequest, StartFailed
from vac.runtimes.singularity_command import (LAUNCHER, Account, apptainer_argv, find_executable, launcher_argv,
                                              launcher_plan, systemd_run_argv)

UUID = "0b0e7a52-3c5e-4c0b-9a57-5a3c0b4f7d11"
MACHINE = Path("/var/lib/vac/machines") / UUID


def request(**changes):
    fields = dict(factory="f1.example.com", slot=3, machine_uuid=UUID, machinetype="lhcb-prod", generation=1,
                  machine_name="f1-03.example.com", image="/cvmfs/unpacked.cern.ch/lhcb", command="/user_data",
                  processors=2, memory_bytes=4 << 30, pids_limit=8192, user_data=MACHINE / "user_data",
                  machinefeatures=MACHINE / "machinefeatures", jobfeatures=MACHINE / "jobfeatures",
                  joboutputs=MACHINE / "joboutputs", cvmfs_repositories=("lhcb.cern.ch", "grid.cern.ch"),
                  tmp_binds=((MACHINE / "scratch/binds/0-scratch", "/scratch"),), model="singularity",
                  account="vacsing03", scratch=MACHINE / "scratch")
    fields.update(changes)
    return ContainerRequest(**fields)


def test_apptainer_gets_every_mount_of_the_singularity_column_and_the_environment():
    assert apptainer_argv("/usr/bin/apptainer", request(), "/cvmfs/unpacked.cern.ch/lhcb") == [
        "/usr/bin/apptainer", "exec", "--contain", "--ipc", "--pid", "--cleanenv",
        "--hostname", "f1-03.example.com", "--workdir", f"{MACHINE}/scratch",
        "--bind", f"{MACHINE}/user_data:/user_data:ro",
        "--bind", f"{MACHINE}/machinefeatures:/tmp/machinefeatures:ro",
        "--bind", f"{MACHINE}/jobfeatures:/tmp/jobfeatures:ro",
        "--bind", f"{MACHINE}/joboutputs:/tmp/joboutputs:rw",
        "--bind", "/cvmfs/lhcb.cern.ch:/cvmfs/lhcb.cern.ch:ro",
        "--bind", "/cvmfs/grid.cern.ch:/cvmfs/grid.cern.ch:ro",
        "--bind", f"{MACHINE}/scratch/binds/0-scratch:/scratch:rw",
        "--env", "MACHINEFEATURES=/tmp/machinefeatures", "--env", "JOBFEATURES=/tmp/jobfeatures",
        "--env", "JOBOUTPUTS=/tmp/joboutputs",
        "/cvmfs/unpacked.cern.ch/lhcb", "/user_data"]


def test_mjf_http_urls_go_in_the_environment_and_the_directories_stay_bound():
    urls = {"machinefeatures_url": f"http://172.17.0.1:9713/{UUID}/{'b' * 32}/machinefeatures",
            "jobfeatures_url": f"http://172.17.0.1:9713/{UUID}/{'b' * 32}/jobfeatures"}
    argv = apptainer_argv("/usr/bin/apptainer", request(**urls), "/images/x")
    assert argv[argv.index("--env"):-2] == [
        "--env", f"MACHINEFEATURES={urls['machinefeatures_url']}", "--env", f"JOBFEATURES={urls['jobfeatures_url']}",
        "--env", "JOBOUTPUTS=/tmp/joboutputs"]
    assert f"{MACHINE}/jobfeatures:/tmp/jobfeatures:ro" in argv


def test_a_path_apptainer_would_split_is_refused():
    with pytest.raises(StartFailed, match="':' and ','"):
        apptainer_argv("/usr/bin/apptainer", request(tmp_binds=((MACHINE / "a", "/a:b"),)), "/images/x")


def test_the_executable_is_the_setting_else_apptainer_else_singularity():
    found = {"apptainer": None, "singularity": "/usr/bin/singularity", "/opt/a/apptainer": "/opt/a/apptainer"}
    which = lambda name, path=None: found.get(name)
    assert find_executable(None, which) == "/usr/bin/singularity"
    assert find_executable("/opt/a/apptainer", which) == "/opt/a/apptainer"
    with pytest.raises(StartFailed, match="no Singularity executable: apptainer nor singularity found"):
        find_executable(None, lambda name, path=None: None)


def test_the_launcher_runs_isolated_and_systemd_puts_it_in_a_delegated_scope_with_the_limits():
    plan = Path("/var/lib/vac/machines") / UUID / "singularity/plan.json"
    command = launcher_argv(plan, python="/usr/bin/python3")
    assert command == ["/usr/bin/python3", "-I", "-S", str(LAUNCHER), str(plan)]
    assert systemd_run_argv(UUID, {"cpus": 2, "memory_bytes": 4 << 30, "pids": 8192}, command) == [
        "systemd-run", "--scope", "--quiet", "--collect", f"--unit=vac-machine-{UUID}.scope", "--slice=vac.slice",
        "--property=Delegate=yes", f"--property=MemoryMax={4 << 30}", "--property=MemorySwapMax=0",
        "--property=CPUQuota=200%", "--property=TasksMax=8192", "--", *command]
    # systemctl status and the journal name the machine, not the launcher's command line.
    named = systemd_run_argv(UUID, {"cpus": 1, "memory_bytes": 1 << 30, "pids": 10}, command,
                             machine_name="factory-03")
    assert named[5] == "--description=vac Singularity machine factory-03"


def test_the_plan_never_names_root():
    common = dict(argv=["/usr/bin/apptainer"], cwd=Path("/s"), mkdirs=[], launcher_procs=[], payload_procs=[],
                  directory=Path("/d"), log_limit_bytes=10)
    plan = launcher_plan(account=Account("vacsing03", 1003, 1003, "/home/vacsing03"), **common)
    assert (plan["uid"], plan["gid"], plan["env"]["USER"], plan["env"]["HOME"]) == (
        1003, 1003, "vacsing03", "/home/vacsing03")
    with pytest.raises(StartFailed, match="never run as root"):
        launcher_plan(account=Account("toor", 0, 0, "/root"), **common)
