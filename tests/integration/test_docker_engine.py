"""The real Docker engine and the fixtures every integration test builds on."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.docker

CONFTEST = pathlib.Path(__file__).resolve().parent.parent / "conftest.py"


def test_busybox_container_runs_with_hostname_label_and_read_only_bind(
        docker_client, busybox_image, factory_label, tmp_path):
    machinefeatures = tmp_path / "machinefeatures"
    machinefeatures.mkdir()
    (machinefeatures / "hs06").write_text("42\n")

    container = docker_client.containers.run(
        busybox_image,
        ["/bin/sh", "-c", "echo hi; hostname; cat /mf/hs06; echo x > /mf/written || true"],
        hostname="slot07.factory.example",
        labels={"vac.factory": factory_label},
        volumes={str(machinefeatures): {"bind": "/mf", "mode": "ro"}},
        network_mode="none",
        detach=True,
    )
    assert container.wait(timeout=30)["StatusCode"] == 0
    stdout = container.logs(stdout=True, stderr=False).decode()
    stderr = container.logs(stdout=False, stderr=True).decode()

    assert stdout.splitlines() == ["hi", "slot07.factory.example", "42"]
    assert "Read-only file system" in stderr
    assert not (machinefeatures / "written").exists()

    found = docker_client.containers.list(all=True, filters={"label": f"vac.factory={factory_label}"})
    assert [each.id for each in found] == [container.id]


def test_factory_label_cleanup_removes_running_container_of_failed_test(docker_client, busybox_image, tmp_path):
    # Run a failing test in its own pytest session with this suite's conftest,
    # then look for the container it left running when it failed.
    label_file = tmp_path / "label"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_leaves_container.py").write_text(textwrap.dedent(f"""
        def test_fails_with_container_running(docker_client, busybox_image, factory_label):
            open({str(label_file)!r}, "w").write(factory_label)
            docker_client.containers.run(
                busybox_image, ["sleep", "300"], labels={{"vac.factory": factory_label}},
                network_mode="none", detach=True)
            assert False, "this test fails on purpose"
    """))

    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_leaves_container.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    label = label_file.read_text() if label_file.exists() else None
    try:
        assert inner.returncode == 1, inner.stdout + inner.stderr
        assert "1 failed" in inner.stdout
        assert label is not None and label.startswith("test-")
        left = docker_client.containers.list(all=True, filters={"label": f"vac.factory={label}"})
        assert left == []
    finally:
        if label:
            for container in docker_client.containers.list(all=True, filters={"label": f"vac.factory={label}"}):
                container.remove(force=True)
