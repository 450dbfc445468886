"""tests/bin/apptainer, the bubblewrap stand-in for Apptainer, as root and as an unprivileged account."""

import os
import pwd
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from accounts import run_as, throwaway_accounts
from singularity_images import build_busybox_image
from singularity_site import (HOST_PATH, STANDIN, busybox_directory_image, needs_singularity_tools,  # noqa: F401
                              shared_root)

RUN_DEADLINE = 60

pytestmark = needs_singularity_tools


@pytest.fixture(scope="module")
def image(busybox_directory_image):  # noqa: F811
    return busybox_directory_image


@pytest.fixture(scope="module")
def account(request):
    """A throwaway unprivileged account."""
    [entry] = throwaway_accounts(request, [f"vacsi-{uuid.uuid4().hex[:6]}"])
    return entry


@pytest.fixture(params=["root", "account"])
def runner(request, account):
    """Run the stand-in as root or as the account: run(argv, env=None) -> (code, stdout, stderr)."""
    as_root = request.param == "root"
    uid, gid = (0, 0) if as_root else (account.pw_uid, account.pw_gid)

    def run(argv, env=None):
        environment = {"PATH": HOST_PATH, **(env or {})}

        def work():
            result = subprocess.run([str(STANDIN), *argv], capture_output=True, text=True, env=environment,
                                    cwd="/", timeout=RUN_DEADLINE)
            return {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

        outcome = work() if as_root else run_as(uid, gid, [gid], work, timeout=RUN_DEADLINE + 5,
                                                what=f"the stand-in as {account.pw_name}")
        assert "crash" not in outcome, outcome
        return outcome["code"], outcome["stdout"], outcome["stderr"]

    run.uid, run.gid = uid, gid
    return run


@pytest.fixture
def machine(shared_root, runner):  # noqa: F811
    """A machine's directories as vac lays them out, owned by whoever runs the stand-in."""
    top = Path(tempfile.mkdtemp(dir=shared_root))
    top.chmod(0o755)
    paths = {name: top / name for name in ("mnt", "joboutputs", "machinefeatures", "repo")}
    for name, path in paths.items():
        path.mkdir()
        if name in ("mnt", "joboutputs"):
            os.chown(path, runner.uid, runner.gid)
    (paths["machinefeatures"] / "hs06").write_text("10")
    (paths["repo"] / "README").write_text("repository")
    paths["user_data"] = top / "user_data"
    paths["user_data"].write_text("#!/bin/sh\necho user data\n")
    os.chown(paths["user_data"], runner.uid, runner.gid)
    paths["user_data"].chmod(0o500)
    return paths


def vac_argv(image, machine, *command, env=(), hostname="m1-03.example.com"):
    """The command line vac passes (INTERFACES.md §10)."""
    argv = ["exec", "--contain", "--ipc", "--pid", "--cleanenv", "--hostname", hostname,
            "--workdir", str(machine["mnt"]),
            "--bind", f"{machine['repo']}:/cvmfs/repo.example.org:ro",
            "--bind", f"{machine['machinefeatures']}:/tmp/machinefeatures:ro",
            "--bind", f"{machine['joboutputs']}:/tmp/joboutputs",
            "--bind", f"{machine['user_data']}:/user_data"]
    for item in env:
        argv += ["--env", item]
    return argv + [str(image), *command]


def test_binds_are_seen_and_read_only_ones_refuse_writes(image, machine, runner):
    script = """
        cat /cvmfs/repo.example.org/README; echo
        cat /tmp/machinefeatures/hs06; echo
        /user_data
        echo output > /tmp/joboutputs/result && echo wrote joboutputs
        touch /cvmfs/repo.example.org/new 2>/dev/null || echo refused cvmfs
        touch /tmp/machinefeatures/new 2>/dev/null || echo refused machinefeatures
        touch /new 2>/dev/null || echo refused root
        id -u
    """
    code, stdout, stderr = runner(vac_argv(image, machine, "/bin/sh", "-c", script))
    assert code == 0, stderr
    assert stdout.splitlines() == ["repository", "10", "user data", "wrote joboutputs", "refused cvmfs",
                                   "refused machinefeatures", "refused root", str(runner.uid)]
    assert (machine["joboutputs"] / "result").read_text() == "output\n"
    assert sorted(os.listdir(machine["repo"])) == ["README"]


def test_hostname_and_a_new_pid_namespace(image, machine, runner):
    script = "hostname; echo $$; ls /proc | grep -E '^[0-9]+$'"
    code, stdout, stderr = runner(vac_argv(image, machine, "/bin/sh", "-c", script))
    assert code == 0, stderr
    hostname, own_pid, *visible = stdout.split()
    assert hostname == "m1-03.example.com"
    assert int(own_pid) <= 2  # bubblewrap's init is 1
    assert max(map(int, visible)) < 10 and str(os.getpid()) not in visible


def test_cleanenv_clears_the_environment_and_env_sets_it(image, machine, runner):
    command = ("/bin/sh", "-c", "env")
    code, stdout, stderr = runner(vac_argv(image, machine, *command, env=["JOBOUTPUTS=/tmp/joboutputs",
                                                                           "A=1,B=2"]),
                                  env={"LEAK": "host value"})
    assert code == 0, stderr
    variables = dict(line.split("=", 1) for line in stdout.splitlines())
    assert "LEAK" not in variables
    assert (variables["JOBOUTPUTS"], variables["A"], variables["B"]) == ("/tmp/joboutputs", "1", "2")
    assert variables["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert variables["LANG"] == "C"

    without_cleanenv = [argument for argument in vac_argv(image, machine, *command) if argument != "--cleanenv"]
    code, stdout, stderr = runner(without_cleanenv, env={"LEAK": "host value"})
    assert code == 0, stderr
    assert "LEAK=host value" in stdout.splitlines()


def test_tmp_and_var_tmp_are_the_workdirs(image, machine, runner):
    script = "echo one > /tmp/marker && echo two > /var/tmp/marker && cd && pwd && touch here"
    code, stdout, stderr = runner(vac_argv(image, machine, "/bin/sh", "-c", script))
    assert code == 0, stderr
    assert (machine["mnt"] / "tmp" / "marker").read_text() == "one\n"
    assert (machine["mnt"] / "var_tmp" / "marker").read_text() == "two\n"
    home = "/root" if runner.uid == 0 else pwd.getpwuid(runner.uid).pw_dir
    assert stdout.strip() == home  # an empty, writable home where the account's is
    assert not Path(home, "here").exists()


def test_exit_status_propagates(image, machine, runner):
    for wanted in (0, 7):
        code, _, stderr = runner(vac_argv(image, machine, "/bin/sh", "-c", f"exit {wanted}"))
        assert code == wanted, stderr
    code, _, _ = runner(vac_argv(image, machine, "/bin/sh", "-c", "kill -9 $$"))
    assert code == 128 + 9


def test_what_it_cannot_run_is_refused_with_255(image, machine, runner, shared_root):  # noqa: F811
    sif = shared_root / "image.sif"
    sif.write_bytes(b"#!/usr/bin/env run-singularity\n")
    sif.chmod(0o644)
    code, _, stderr = runner(vac_argv(sif, machine, "/bin/true"))
    assert code == 255 and "only directory images" in stderr
    assert runner(["exec", "--writable", str(image), "/bin/true"])[0] == 255
    assert runner(["run", str(image)])[0] == 255
    assert runner(["exec", "--bind", f"{machine['repo']}:/x:rx", str(image), "/bin/true"])[0] == 255
    assert runner(["exec", "--bind", "/nonexistent:/x", str(image), "/bin/true"])[0] == 255
    assert runner(["exec", str(image)])[0] == 255
    assert runner(["--version"])[:2] == (0, "apptainer version 1.3.4-standin\n")


def test_the_image_builder_is_idempotent(image):  # noqa: F811
    listing = sorted((str(path), path.lstat().st_mtime_ns) for path in image.rglob("*"))
    assert build_busybox_image(image) == image
    assert sorted((str(path), path.lstat().st_mtime_ns) for path in image.rglob("*")) == listing
    assert {"sh", "ls", "cat", "id", "sleep", "hostname", "ps", "env"} <= {p.name for p in (image / "bin").iterdir()}
