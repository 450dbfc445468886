"""The arguments vac sends to Docker and what it reads back, as plain dicts."""

import calendar
from pathlib import Path

import pytest

from vac.runtimes.base import ContainerHandle, ContainerRequest, ContainerState, ExitInfo, Usage
from vac.runtimes.docker_api import (container_name, create_kwargs, exit_info_from_inspect, handle_from_inspect,
                                     image_reference, parse_docker_time, usage_from_stats)

UUID = "0f8e2a4c-5b1d-4c3e-9a7f-123456789abc"
MACHINE = Path("/var/lib/vac/machines") / UUID


def make_request(**changes):
    fields = dict(
        factory="f1.example.com", slot=3, machine_uuid=UUID, machinetype="lhcb-dc-prod", generation=7,
        machine_name="f1-03.example.com", image="docker://gitlab-registry.cern.ch/lhcb/vc:2024", command="/user_data",
        processors=2, memory_bytes=4 * 1024 ** 3, pids_limit=8192,
        user_data=MACHINE / "user_data", machinefeatures=MACHINE / "machinefeatures",
        jobfeatures=MACHINE / "jobfeatures", joboutputs=MACHINE / "joboutputs",
    )
    fields.update(changes)
    return ContainerRequest(**fields)


def test_create_kwargs_with_cvmfs_tmp_binds_and_environment():
    request = make_request(
        cvmfs_repositories=("lhcb.cern.ch", "grid.cern.ch"),
        tmp_binds=((MACHINE / "scratch" / "scratch", "/scratch"), (MACHINE / "scratch" / "tmp", "/tmp")),
        environment=(("VAC_SPACE", "vac01.example.com"), ("JOBOUTPUTS", "/elsewhere")),
    )

    assert create_kwargs(request) == {
        "image": "gitlab-registry.cern.ch/lhcb/vc:2024",
        "command": ["/user_data"],
        "name": f"vac-f1.example.com-03-{UUID}",
        "hostname": "f1-03.example.com",
        "labels": {
            "vac.factory": "f1.example.com",
            "vac.slot": "3",
            "vac.machine": UUID,
            "vac.machinetype": "lhcb-dc-prod",
            "vac.generation": "7",
            "vac.machine_name": "f1-03.example.com",
        },
        "environment": {
            "VAC_SPACE": "vac01.example.com",
            "MACHINEFEATURES": "/etc/machinefeatures",
            "JOBFEATURES": "/etc/jobfeatures",
            "JOBOUTPUTS": "/var/spool/joboutputs",
        },
        "detach": True,
        "use_config_proxy": False,
        "host_config": {
            "Mounts": [
                {"Type": "bind", "Source": f"{MACHINE}/user_data", "Target": "/user_data", "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/machinefeatures", "Target": "/etc/machinefeatures",
                 "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/jobfeatures", "Target": "/etc/jobfeatures", "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/joboutputs", "Target": "/var/spool/joboutputs",
                 "ReadOnly": False},
                {"Type": "bind", "Source": "/cvmfs/lhcb.cern.ch", "Target": "/cvmfs/lhcb.cern.ch", "ReadOnly": True,
                 "BindOptions": {"Propagation": "rslave"}},
                {"Type": "bind", "Source": "/cvmfs/grid.cern.ch", "Target": "/cvmfs/grid.cern.ch", "ReadOnly": True,
                 "BindOptions": {"Propagation": "rslave"}},
                {"Type": "bind", "Source": f"{MACHINE}/scratch/scratch", "Target": "/scratch", "ReadOnly": False},
                {"Type": "bind", "Source": f"{MACHINE}/scratch/tmp", "Target": "/tmp", "ReadOnly": False},
            ],
            "NanoCpus": 2_000_000_000,
            "Memory": 4 * 1024 ** 3,
            "MemorySwap": 4 * 1024 ** 3,
            "PidsLimit": 8192,
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,
            "NetworkMode": "bridge",
            "RestartPolicy": {"Name": "no"},
            "AutoRemove": False,
        },
    }


def test_create_kwargs_minimal_with_swap_and_a_test_cvmfs_root():
    request = make_request(factory="test-1a2b3c4d", slot=12, generation=0, machine_name="test-12",
                           image="vac-test-busybox:latest", command="/bin/payload", processors=1,
                           memory_bytes=256 * 1024 ** 2, pids_limit=64, swap_bytes=64 * 1024 ** 2,
                           cvmfs_root=Path("/tmp/cvmfs"), cvmfs_repositories=("test.example.org",))

    assert create_kwargs(request) == {
        "image": "vac-test-busybox:latest",
        "command": ["/bin/payload"],
        "name": f"vac-test-1a2b3c4d-12-{UUID}",
        "hostname": "test-12",
        "labels": {
            "vac.factory": "test-1a2b3c4d",
            "vac.slot": "12",
            "vac.machine": UUID,
            "vac.machinetype": "lhcb-dc-prod",
            "vac.generation": "0",
            "vac.machine_name": "test-12",
        },
        "environment": {
            "MACHINEFEATURES": "/etc/machinefeatures",
            "JOBFEATURES": "/etc/jobfeatures",
            "JOBOUTPUTS": "/var/spool/joboutputs",
        },
        "detach": True,
        "use_config_proxy": False,
        "host_config": {
            "Mounts": [
                {"Type": "bind", "Source": f"{MACHINE}/user_data", "Target": "/user_data", "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/machinefeatures", "Target": "/etc/machinefeatures",
                 "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/jobfeatures", "Target": "/etc/jobfeatures", "ReadOnly": True},
                {"Type": "bind", "Source": f"{MACHINE}/joboutputs", "Target": "/var/spool/joboutputs",
                 "ReadOnly": False},
                {"Type": "bind", "Source": "/tmp/cvmfs/test.example.org", "Target": "/cvmfs/test.example.org",
                 "ReadOnly": True, "BindOptions": {"Propagation": "rslave"}},
            ],
            "NanoCpus": 1_000_000_000,
            "Memory": 256 * 1024 ** 2,
            "MemorySwap": 320 * 1024 ** 2,
            "PidsLimit": 64,
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,
            "NetworkMode": "bridge",
            "RestartPolicy": {"Name": "no"},
            "AutoRemove": False,
        },
    }


def test_mjf_http_urls_replace_the_paths_in_the_environment_and_the_directories_stay_mounted():
    urls = {"machinefeatures_url": f"http://172.17.0.1:9713/{UUID}/{'a' * 32}/machinefeatures",
            "jobfeatures_url": f"http://172.17.0.1:9713/{UUID}/{'a' * 32}/jobfeatures"}
    kwargs = create_kwargs(make_request(environment=(("MACHINEFEATURES", "/elsewhere"),), **urls))
    assert kwargs["environment"] == {"MACHINEFEATURES": urls["machinefeatures_url"],
                                     "JOBFEATURES": urls["jobfeatures_url"], "JOBOUTPUTS": "/var/spool/joboutputs"}
    assert kwargs["host_config"]["Mounts"] == create_kwargs(make_request())["host_config"]["Mounts"]


def test_container_name_replaces_characters_docker_refuses():
    assert container_name(make_request(factory="f1 ex@mple")) == f"vac-f1-ex-mple-03-{UUID}"


@pytest.mark.parametrize("root_image, reference", [
    ("docker://busybox", "busybox"),
    ("docker://registry.example:5000/vo/image:1.2", "registry.example:5000/vo/image:1.2"),
    ("docker://repo/image@sha256:" + "a" * 64, "repo/image@sha256:" + "a" * 64),
    ("vac-test-busybox:latest", "vac-test-busybox:latest"),
])
def test_image_reference_strips_the_docker_prefix(root_image, reference):
    assert image_reference(root_image) == reference


@pytest.mark.parametrize("root_image", ["docker://", "", "docker:// busybox", "https://example.org/image.sif"])
def test_image_reference_refuses_what_names_no_docker_image(root_image):
    with pytest.raises(ValueError, match="does not name a Docker image"):
        image_reference(root_image)


@pytest.mark.parametrize("changes, message", [
    ({"command": "user_data"}, "absolute path"),
    ({"command": "/bin/sh -c x"}, None),
    ({"command": "/a/../user_data"}, "clean absolute path"),
    ({"processors": 0}, "processors"),
    ({"memory_bytes": 0}, "must be positive"),
    ({"pids_limit": -1}, "must be positive"),
    ({"cvmfs_repositories": ("../etc",)}, "not a plain name"),
    ({"cvmfs_repositories": ("a/b",)}, "not a plain name"),
    ({"tmp_binds": ((Path("/x"), "scratch"),)}, "tmp_binds"),
    ({"tmp_binds": ((Path("/x"), "/"),)}, "tmp_binds"),
])
def test_request_refuses_values_that_would_make_a_bad_container(changes, message):
    if message is None:
        # A path with a space is a valid file name: it is never split into arguments.
        assert make_request(**changes).command == changes["command"]
        return
    with pytest.raises(ValueError, match=message):
        make_request(**changes)


def test_parse_docker_time_reads_nanoseconds_and_the_zero_time():
    assert parse_docker_time("2024-03-01T12:00:00.123456789Z") == pytest.approx(1709294400.123456)
    assert parse_docker_time("2024-03-01T13:00:00+01:00") == 1709294400.0
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time(None) is None


INSPECT_EXITED = {
    "Id": "c0ffee" * 10 + "abcd",
    "Name": f"/vac-f1.example.com-03-{UUID}",
    "Created": "2024-03-01T11:59:59.25Z",
    "Config": {"Labels": {"vac.factory": "f1.example.com", "vac.slot": "3", "vac.machine": UUID,
                          "vac.generation": "7"}},
    "State": {"Status": "exited", "Running": False, "OOMKilled": True, "ExitCode": 137,
              "StartedAt": "2024-03-01T12:00:00.5Z", "FinishedAt": "2024-03-01T12:10:00Z"},
}


def test_handle_and_exit_info_from_an_exited_container():
    handle = handle_from_inspect(INSPECT_EXITED)
    assert handle == ContainerHandle(
        id="c0ffee" * 10 + "abcd", name=f"vac-f1.example.com-03-{UUID}",
        labels={"vac.factory": "f1.example.com", "vac.slot": "3", "vac.machine": UUID, "vac.generation": "7"},
        state=ContainerState.EXITED, created_at=1709294399.25, started_at=1709294400.5, finished_at=1709295000.0)
    assert (handle.machine_uuid, handle.slot, handle.generation) == (UUID, 3, 7)
    # The engine's start time comes with the end: a start gives none.
    assert exit_info_from_inspect(INSPECT_EXITED) == ExitInfo(exit_code=137, finished_at=1709295000.0,
                                                              oom_killed=True, started_at=1709294400.5)


def test_a_running_container_has_no_exit_info_and_no_finish_time():
    running = {**INSPECT_EXITED, "Config": {"Labels": None},
               "State": {"Status": "running", "ExitCode": 0, "OOMKilled": False,
                         "StartedAt": "2024-03-01T12:00:00Z", "FinishedAt": "2024-02-01T00:00:00Z"}}
    handle = handle_from_inspect(running)
    assert (handle.state, handle.finished_at, handle.labels, handle.slot) == (ContainerState.RUNNING, None, {}, None)
    assert exit_info_from_inspect(running) is None


def test_usage_from_a_live_sample_and_from_an_exited_container():
    live = {"read": "2024-03-01T12:00:00Z",
            "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
            "memory_stats": {"usage": 1_000_000, "max_usage": 4_000_000}}
    cgroup_v2 = {"read": "2024-03-01T12:00:00Z", "cpu_stats": {"cpu_usage": {"total_usage": 1_000_000}},
                 "memory_stats": {"usage": 3_000_000}}
    exited = {"read": "0001-01-01T00:00:00Z", "cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}

    read_at = calendar.timegm((2024, 3, 1, 12, 0, 0))
    assert usage_from_stats(live) == Usage(cpu_seconds=2.5, memory_bytes=4_000_000, sampled_at=read_at)
    assert usage_from_stats(cgroup_v2) == Usage(cpu_seconds=0.001, memory_bytes=3_000_000, sampled_at=read_at)
    assert usage_from_stats(exited) is None


def test_repositories_are_bound_without_propagation_when_asked():
    request = make_request(cvmfs_repositories=("lhcb.cern.ch",), cvmfs_propagation=None)
    cvmfs = [m for m in create_kwargs(request)["host_config"]["Mounts"] if m["Target"].startswith("/cvmfs/")]
    assert cvmfs == [{"Type": "bind", "Source": "/cvmfs/lhcb.cern.ch", "Target": "/cvmfs/lhcb.cern.ch",
                      "ReadOnly": True}]
