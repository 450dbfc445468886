"""CernVM-FS repositories behind the real automounter (autofs), as on a worker node."""

import time
import uuid

import pytest

from autofs_map import EXPIRE_SECONDS, automounter  # noqa: F401 (a fixture)
from test_cvmfs_keeper import latest_repositories
from test_docker_runtime import docker_exec, machine_request, run_machine
from test_supervision import host_factory  # noqa: F401 (a fixture)

from vac.runtimes.docker import DockerRuntime


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}.example.org"


def test_keeper_mounts_keeps_and_judges_repositories_through_autofs(
        host_factory, automounter):  # noqa: F811
    good, missing, hung, unwatched = unique("good-"), unique("missing-"), unique("hung."), unique("idle-")
    automounter.add(good, {"README": "good\n"})
    automounter.add(unwatched)
    host = host_factory("cvmfs-autofs", env={"VAC_TEST_CVMFS_ROOT": str(automounter.root),
                                             "VAC_TEST_REPOSITORIES": f"{good} {missing} {hung}"})

    def settled():
        repos = latest_repositories(host)
        return repos if repos and all(r["ok"] is not None for r in repos.values()) else None

    repos = host.wait_for(settled, timeout=15, what="every repository checked")
    assert repos[good] == {"ok": True, "reason": "ok"}
    assert automounter.mounted(good), "the keeper's check made autofs mount it"
    assert repos[missing]["ok"] is False and "No such file" in repos[missing]["reason"]
    assert repos[hung] == {"ok": False, "reason": "no answer within 1 s"}

    # A repository nobody uses is unmounted after the autofs timeout; the one
    # the keeper checks stays mounted all along.
    assert (automounter.root / unwatched).is_dir()
    assert automounter.mounted(unwatched)
    expired_at, deadline = None, time.monotonic() + 5 * EXPIRE_SECONDS + 5
    while time.monotonic() < deadline:
        assert automounter.mounted(good), "the watched repository was let expire"
        if expired_at is None and not automounter.mounted(unwatched):
            expired_at = time.monotonic()
        if expired_at is not None and time.monotonic() > expired_at + 3 * EXPIRE_SECONDS:
            break
        time.sleep(0.05)
    assert expired_at is not None, "autofs never expired the unwatched repository"

    # The hung lookup never cost the keeper a heartbeat, and it still answers.
    assert host.events("hung") == [] and len(host.events("started")) == 1
    assert latest_repositories(host)[hung]["ok"] is False
    assert host.terminate() == 0


@pytest.mark.docker
def test_a_container_reads_an_automounted_repository_through_expiry(
        automounter, busybox_image, docker_client, factory_label, tmp_path):  # noqa: F811
    repository = unique("payload-")
    automounter.add(repository, {"README": "repository content\n"})
    assert not automounter.mounted(repository), "nothing has looked it up yet"
    runtime = DockerRuntime(timeout=30)
    try:
        request = machine_request(tmp_path, factory_label, "exec sleep 300\n", cvmfs_root=automounter.root,
                                  cvmfs_repositories=(repository,))
        handle = run_machine(runtime, request)
        # Binding the repository made autofs mount it for the engine.
        assert docker_exec(docker_client, handle.id, ["cat", f"/cvmfs/{repository}/README"]) == (
            0, "repository content\n")
        # On the host nobody uses it, so autofs unmounts it; the machine keeps it.
        deadline = time.monotonic() + 10 * EXPIRE_SECONDS + 10
        while automounter.mounted(repository) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not automounter.mounted(repository), "autofs never expired the repository on the host"
        assert docker_exec(docker_client, handle.id, ["cat", f"/cvmfs/{repository}/README"]) == (
            0, "repository content\n")
    finally:
        runtime.close()
