"""Pure translation between vac's runtime data and the Docker Engine API's JSON.

Nothing here talks to the engine: the functions build the arguments of
`APIClient.create_container` and read what `inspect` and `stats` return, so
they are tested by comparing plain dicts.
"""

from __future__ import annotations

import re
from datetime import datetime

from vac.runtimes.base import (ContainerHandle, ContainerRequest, ContainerState, ExitInfo, Mount, PayloadPaths,
                               Usage, request_labels)

DOCKER_IMAGE_PREFIX = "docker://"

# Container paths of INTERFACES.md §3 (Docker column).
USER_DATA_PATH = "/user_data"
MACHINEFEATURES_PATH = "/etc/machinefeatures"
JOBFEATURES_PATH = "/etc/jobfeatures"
JOBOUTPUTS_PATH = "/var/spool/joboutputs"
CVMFS_PATH = "/cvmfs"
PAYLOAD_PATHS = PayloadPaths(machinefeatures=MACHINEFEATURES_PATH, jobfeatures=JOBFEATURES_PATH,
                             joboutputs=JOBOUTPUTS_PATH)

NANO_CPUS_PER_PROCESSOR = 1_000_000_000
# Docker's "zero" time, reported for a container never started or never finished.
ZERO_TIME_PREFIX = "0001-01-01"
# Characters Docker refuses in container names.
NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def image_reference(root_image: str) -> str:
    """The Docker image reference of a `root_image` value: `docker://IMAGE` -> `IMAGE`."""
    reference = root_image[len(DOCKER_IMAGE_PREFIX):] if root_image.startswith(DOCKER_IMAGE_PREFIX) else root_image
    if not reference or reference != reference.strip() or "//" in reference:
        raise ValueError(f"root_image {root_image!r} does not name a Docker image")
    return reference


def container_name(request: ContainerRequest) -> str:
    """A unique, readable name: vac-<factory>-<slot>-<machine uuid>.

    The full UUID (not a prefix) keeps names unique for ever and matches the
    machine directory's name; containers are still only ever found by label.
    """
    factory = NAME_UNSAFE.sub("-", request.factory)
    return f"vac-{factory}-{request.slot:02d}-{request.machine_uuid}"


def container_mounts(request: ContainerRequest) -> tuple[Mount, ...]:
    """The bind mounts of INTERFACES.md §3 for `request`, in a fixed order."""
    mounts = [
        Mount(request.user_data, USER_DATA_PATH, read_only=True),
        Mount(request.machinefeatures, MACHINEFEATURES_PATH, read_only=True),
        Mount(request.jobfeatures, JOBFEATURES_PATH, read_only=True),
        Mount(request.joboutputs, JOBOUTPUTS_PATH, read_only=False),
    ]
    # rslave: a repository autofs mounts (or remounts) after the container
    # started must still appear inside it, as on the host.
    mounts.extend(Mount(request.cvmfs_root / repository, f"{CVMFS_PATH}/{repository}", read_only=True,
                        propagation=request.cvmfs_propagation)
                  for repository in request.cvmfs_repositories)
    mounts.extend(Mount(host_path, container_path, read_only=False) for host_path, container_path in request.tmp_binds)
    return tuple(mounts)


def mount_json(mount: Mount) -> dict:
    """One entry of HostConfig.Mounts."""
    entry = {"Type": "bind", "Source": str(mount.host_path), "Target": mount.container_path,
             "ReadOnly": mount.read_only}
    if mount.propagation is not None:
        entry["BindOptions"] = {"Propagation": mount.propagation}
    return entry


def container_environment(request: ContainerRequest) -> dict[str, str]:
    """The request's environment plus the three MJF variables, which always win.

    MACHINEFEATURES and JOBFEATURES are the request's URLs when it has them (mjf_http).
    """
    environment = dict(request.environment)
    environment.update(MACHINEFEATURES=request.machinefeatures_url or MACHINEFEATURES_PATH,
                       JOBFEATURES=request.jobfeatures_url or JOBFEATURES_PATH,
                       JOBOUTPUTS=JOBOUTPUTS_PATH)
    return environment


def create_kwargs(request: ContainerRequest) -> dict:
    """Keyword arguments of `docker.APIClient.create_container` for `request`."""
    host_config = {
        "Mounts": [mount_json(mount) for mount in container_mounts(request)],
        "NanoCpus": request.processors * NANO_CPUS_PER_PROCESSOR,
        "Memory": request.memory_bytes,
        # Memory + swap: equal to Memory means no swap at all.
        "MemorySwap": request.memory_bytes + request.swap_bytes,
        "PidsLimit": request.pids_limit,
        "SecurityOpt": ["no-new-privileges"],
        # docker-init as PID 1: the payload gets SIGTERM on stop with its normal
        # meaning (a shell as PID 1 ignores it, so every stop would wait the
        # whole grace) and orphaned processes of long pilots are reaped.
        "Init": True,
        "NetworkMode": "bridge",
        # The slot worker decides what happens after an exit, never the engine;
        # the container is kept until its exit status has been collected.
        "RestartPolicy": {"Name": "no"},
        "AutoRemove": False,
    }
    return {
        "image": image_reference(request.image),
        # As the image's CMD, like Vac: an image's ENTRYPOINT wrapper still runs it.
        "command": [request.command],
        "name": container_name(request),
        "hostname": request.machine_name,
        "labels": request_labels(request),
        "environment": container_environment(request),
        "detach": True,
        # Otherwise docker-py adds proxy variables from ~/.docker/config.json.
        "use_config_proxy": False,
        "host_config": host_config,
    }


def parse_docker_time(text: str | None) -> float | None:
    """Unix time of a Docker timestamp (RFC 3339, nanoseconds), None for Docker's zero time."""
    if not text or text.startswith(ZERO_TIME_PREFIX):
        return None
    return datetime.fromisoformat(text).timestamp()


def handle_from_inspect(attrs: dict) -> ContainerHandle:
    """The handle of a container from its `inspect` JSON."""
    state = attrs["State"]
    status = ContainerState(state["Status"])
    return ContainerHandle(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        labels=dict(attrs["Config"].get("Labels") or {}),
        state=status,
        created_at=parse_docker_time(attrs.get("Created")),
        started_at=parse_docker_time(state.get("StartedAt")),
        # FinishedAt survives from an earlier run while running again.
        finished_at=parse_docker_time(state.get("FinishedAt")) if status.has_ended else None,
    )


def handle_from_summary(summary: dict) -> ContainerHandle:
    """The handle of a container from the engine's listing: its creation time in whole seconds, no start or end."""
    names = summary.get("Names") or ()
    return ContainerHandle(
        id=summary["Id"],
        name=names[0].lstrip("/") if names else summary["Id"],
        labels=dict(summary.get("Labels") or {}),
        state=ContainerState(summary["State"]),
        created_at=float(summary["Created"]) if summary.get("Created") else None,
    )


def exit_info_from_inspect(attrs: dict) -> ExitInfo | None:
    """How the container ended, from its `inspect` JSON; None while it has not."""
    state = attrs["State"]
    if not ContainerState(state["Status"]).has_ended:
        return None
    return ExitInfo(exit_code=int(state["ExitCode"]), finished_at=parse_docker_time(state.get("FinishedAt")),
                    oom_killed=bool(state.get("OOMKilled")), started_at=parse_docker_time(state.get("StartedAt")))


def usage_from_stats(stats: dict) -> Usage | None:
    """CPU seconds and peak memory from one `stats` sample; None when the engine had no sample.

    A container that is not running has no cgroup left: Docker then answers
    with zero read time and empty figures.
    """
    if parse_docker_time(stats.get("read")) is None:
        return None
    cpu_nanoseconds = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)
    memory = stats.get("memory_stats", {})
    # cgroup v1 keeps the peak (max_usage, page cache included); v2 only the
    # current usage, so the peak is then the largest sample taken.
    memory_bytes = max(memory.get("max_usage", 0), memory.get("usage", 0))
    return Usage(cpu_seconds=cpu_nanoseconds / 1e9, memory_bytes=int(memory_bytes),
                 sampled_at=parse_docker_time(stats.get("read")))
