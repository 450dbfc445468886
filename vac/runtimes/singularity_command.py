"""The command lines of a Singularity machine (pure): Apptainer's, the launcher's and systemd-run's.

Argument lists only: nothing here passes through a shell. The bind mounts
are those of INTERFACES.md §3 (the Singularity column), one `--bind` each,
read-only except joboutputs and the tmp_binds directories.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vac.runtimes.base import ContainerRequest, PayloadPaths, StartFailed

PAYLOAD_PATHS = PayloadPaths(machinefeatures="/tmp/machinefeatures", jobfeatures="/tmp/jobfeatures",
                             joboutputs="/tmp/joboutputs")
USER_DATA_PATH = "/user_data"
# Tried in this order on PATH when singularity_command is not set.
DEFAULT_EXECUTABLES = ("apptainer", "singularity")
LAUNCHER = Path(__file__).with_name("singularity_launcher.py")
# The environment the launcher gives Apptainer (which then cleans it for the payload).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where systemd puts each machine's transient scope.
SYSTEMD_SLICE = "vac.slice"
# vac's own subtree, where systemd does not run the host.
VAC_CGROUP = "vac"
# Where machine cgroups may be, whichever placement made them.
SINGULARITY_CGROUP_BASES = (f"/{VAC_CGROUP}", f"/{SYSTEMD_SLICE}")
CPU_PERIOD_PERCENT = 100


def find_executable(setting: str | None, which=shutil.which) -> str:
    """The absolute path of Apptainer/Singularity: the setting, else apptainer, else singularity on PATH."""
    names = (setting,) if setting else DEFAULT_EXECUTABLES
    for name in names:
        found = which(name, path=os.environ.get("PATH") or SAFE_PATH)
        if found:
            return os.path.abspath(found)
    raise StartFailed(f"no Singularity executable: {' nor '.join(names)} found (set singularity_command)")


def bind(source: Path | str, destination: str, read_only: bool) -> list[str]:
    """One --bind argument, read-only or read-write as asked."""
    if ":" in str(source) or ":" in destination or "," in str(source) or "," in destination:
        # Apptainer splits --bind on ':' and ','; such a path cannot be said to it.
        raise StartFailed(f"cannot bind {source} at {destination}: ':' and ',' are not allowed in bound paths")
    return ["--bind", f"{source}:{destination}:{'ro' if read_only else 'rw'}"]


def apptainer_argv(executable: str, request: ContainerRequest, image: str) -> list[str]:
    """`apptainer exec …` for the machine of `request`, running `image` (a local path)."""
    if request.scratch is None:
        raise StartFailed(f"machine {request.machine_uuid} has no scratch area for --workdir")
    argv = [executable, "exec", "--contain", "--ipc", "--pid", "--cleanenv", "--hostname", request.machine_name,
            "--workdir", str(request.scratch)]
    argv += bind(request.user_data, USER_DATA_PATH, True)
    argv += bind(request.machinefeatures, PAYLOAD_PATHS.machinefeatures, True)
    argv += bind(request.jobfeatures, PAYLOAD_PATHS.jobfeatures, True)
    argv += bind(request.joboutputs, PAYLOAD_PATHS.joboutputs, False)
    for repository in request.cvmfs_repositories:
        path = f"{request.cvmfs_root}/{repository}"
        argv += bind(path, f"/cvmfs/{repository}", True)
    for host_dir, container_path in request.tmp_binds:
        argv += bind(host_dir, container_path, False)
    # The machine shares the host's network: mjf_http URLs reach the mjf child as they do from Docker.
    environment = [("MACHINEFEATURES", request.machinefeatures_url or PAYLOAD_PATHS.machinefeatures),
                   ("JOBFEATURES", request.jobfeatures_url or PAYLOAD_PATHS.jobfeatures),
                   ("JOBOUTPUTS", PAYLOAD_PATHS.joboutputs), *request.environment]
    for key, value in environment:
        argv += ["--env", f"{key}={value}"]
    return argv + [image, request.command]


@dataclass(frozen=True, slots=True)
class Account:
    """The unprivileged account a machine runs as."""
    name: str
    uid: int
    gid: int
    home: str


def launcher_plan(*, argv: list[str], account: Account, cwd: Path, mkdirs: list[Path], launcher_procs: list[Path],
                  payload_procs: list[Path], directory: Path, log_limit_bytes: int) -> dict:
    """The launcher's plan (docs/singularity.md, "The launcher") as plain data."""
    if account.uid == 0 or account.gid == 0:
        raise StartFailed(f"account {account.name} is root's: Singularity machines never run as root")
    return {
        "argv": list(argv),
        "env": {"PATH": SAFE_PATH, "LANG": "C", "HOME": account.home, "USER": account.name,
                "LOGNAME": account.name},
        "user": account.name, "uid": account.uid, "gid": account.gid, "cwd": str(cwd),
        "mkdirs": [str(path) for path in mkdirs],
        "launcher_procs": [str(path) for path in launcher_procs],
        "payload_procs": [str(path) for path in payload_procs],
        "dir": str(directory), "log_limit_bytes": int(log_limit_bytes),
    }


def launcher_argv(plan_path: Path, python: str = sys.executable) -> list[str]:
    """The launcher, run by an interpreter that reads no site-packages and no environment."""
    return [python, "-I", "-S", str(LAUNCHER), str(plan_path)]


def scope_unit(machine_uuid: str) -> str:
    return f"vac-machine-{machine_uuid}.scope"


def systemd_cgroup_path(machine_uuid: str) -> str:
    """The cgroup of a machine's scope, relative to each hierarchy's root."""
    return f"/{SYSTEMD_SLICE}/{scope_unit(machine_uuid)}"


def vac_cgroup_path(machine_uuid: str) -> str:
    """The cgroup of a machine in vac's own subtree."""
    return f"/{VAC_CGROUP}/machine-{machine_uuid}"


def systemd_run_argv(machine_uuid: str, limits: Mapping[str, int], command: list[str],
                     systemd_run: str = "systemd-run", machine_name: str | None = None) -> list[str]:
    """`command` started in a transient scope of its own, outside vacd.service, with the machine's limits.

    Delegate=yes hands the scope's subtree to vac (the launcher makes its
    launcher and payload cgroups there); systemd removes the scope once empty.
    The description is what `systemctl status` and the journal show of the
    scope (else systemd shows the launcher's whole command line).
    """
    description = [f"--description=vac Singularity machine {machine_name}"] if machine_name else []
    return [systemd_run, "--scope", "--quiet", "--collect", f"--unit={scope_unit(machine_uuid)}", *description,
            f"--slice={SYSTEMD_SLICE}", "--property=Delegate=yes",
            f"--property=MemoryMax={limits['memory_bytes']}", "--property=MemorySwapMax=0",
            f"--property=CPUQuota={limits['cpus'] * CPU_PERIOD_PERCENT}%",
            f"--property=TasksMax={limits['pids']}", "--", *command]
