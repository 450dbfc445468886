"""The slot worker's runtime: Docker or Singularity for each machine, by its machine_model.

Each runtime is built the first time a machine of its model needs it, so a
factory that runs only Docker never looks at cgroups, and one that runs only
Singularity never connects to a Docker engine. Calls about a container go to
the runtime that made it (ContainerHandle.runtime); `find` asks every runtime.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping

from vac.runtimes.base import (SINGULARITY_ID_PREFIX, ContainerHandle, ContainerRequest, ContainerRuntime, ExitInfo,
                               ImageMissing, PayloadPaths, RuntimeUnavailable, StartFailed, Usage)
from vac.runtimes.docker import DEFAULT_BASE_URL, DockerRuntime
from vac.runtimes.singularity import SingularityRuntime, SingularitySettings

log = logging.getLogger(__name__)

DOCKER_IMAGE_PREFIX = "docker://"


class ModelRuntimes:
    """The runtime protocol over one runtime per machine model."""

    def __init__(self, builders: Mapping[str, Callable[[], ContainerRuntime]],
                 required: Iterable[str] = ()) -> None:
        self._builders = dict(builders)
        self._built: dict[str, ContainerRuntime] = {}
        # Models whose engine must always answer find(): those the factory's machinetypes use.
        self.required = frozenset(required)

    def for_model(self, model: str) -> ContainerRuntime:
        """The runtime of `model`, built on first use; StartFailed for a model this factory does not run."""
        runtime = self._built.get(model)
        if runtime is None:
            builder = self._builders.get(model)
            if builder is None:
                raise StartFailed(f"machine_model {model} is not run by this factory")
            runtime = self._built[model] = builder()
        return runtime

    def payload_paths_for(self, model: str) -> PayloadPaths:
        """Where containers of `model` see their machine's MJF and joboutputs."""
        return self.for_model(model).payload_paths_for(model)

    def ensure_image(self, image: str, deadline: float) -> None:
        # The configuration keeps docker:// images to docker machinetypes and the rest to singularity ones.
        model = "docker" if image.startswith(DOCKER_IMAGE_PREFIX) else "singularity"
        try:
            runtime = self.for_model(model)
        except StartFailed as error:
            raise ImageMissing(str(error)) from error
        runtime.ensure_image(image, deadline)

    def create(self, request: ContainerRequest) -> ContainerHandle:
        return self.for_model(request.model).create(request)

    def start(self, handle: ContainerHandle) -> ContainerHandle:
        return self.for_model(handle.runtime).start(handle)

    def inspect(self, container_id: str) -> ContainerHandle:
        return self.for_model(_model_of_id(container_id)).inspect(container_id)

    def find(self, factory: str, slot: int | None = None,
             models: Iterable[str] | None = None, machine_uuid: str | None = None,
             brief: bool = False) -> list[ContainerHandle]:
        """Containers of every runtime, oldest first.

        `models` are those whose containers must be listed (None: all), with
        the required ones: a runtime of another model that does not answer (no
        Docker engine on a Singularity-only factory) is skipped instead of
        failing the listing.
        """
        needed = None if models is None else set(models) | self.required
        handles = []
        for model in self._builders:
            try:
                handles.extend(self.for_model(model).find(factory, slot, machine_uuid=machine_uuid, brief=brief))
            except RuntimeUnavailable as error:
                if needed is None or model in needed:
                    raise
                log.debug("not listing %s containers: %s (no machine of that model is recorded)", model, error)
        return sorted(handles, key=lambda handle: (handle.created_at or 0.0, handle.id))

    def wait(self, handle: ContainerHandle, deadline: float) -> ExitInfo | None:
        return self.for_model(handle.runtime).wait(handle, deadline)

    def exit_status(self, handle: ContainerHandle) -> ExitInfo | None:
        return self.for_model(handle.runtime).exit_status(handle)

    def stop(self, handle: ContainerHandle, grace_seconds: float) -> None:
        self.for_model(handle.runtime).stop(handle, grace_seconds)

    def kill(self, handle: ContainerHandle) -> None:
        self.for_model(handle.runtime).kill(handle)

    def remove(self, handle: ContainerHandle) -> None:
        self.for_model(handle.runtime).remove(handle)

    def stats(self, handle: ContainerHandle) -> Usage:
        return self.for_model(handle.runtime).stats(handle)

    def close(self) -> None:
        for runtime in self._built.values():
            runtime.close()
        self._built.clear()


def runtimes_from_spec(spec: Mapping, engine_timeout: float) -> ModelRuntimes:
    """Docker and Singularity for a worker's spec (docker_url, state_dir, singularity, machine_models), each built
    when needed; the engines of machine_models (the models the configuration runs) must answer."""
    singularity = SingularitySettings.from_plain(spec.get("singularity"))
    return ModelRuntimes({
        "docker": lambda: DockerRuntime(base_url=spec.get("docker_url") or DEFAULT_BASE_URL, timeout=engine_timeout),
        "singularity": lambda: SingularityRuntime(spec["state_dir"], singularity, timeout=engine_timeout),
    }, required=spec.get("machine_models", ("docker",)))


def _model_of_id(container_id: str) -> str:
    # Singularity machines' ids name their runtime; Docker's are the engine's hex ids or vac-… names.
    return "singularity" if container_id.startswith(SINGULARITY_ID_PREFIX) else "docker"
