"""The Docker runtime: the runtime protocol on the Docker SDK's low-level client.

Build one inside the slot process (after the fork): it connects lazily, so a
Docker engine that is down makes calls raise RuntimeUnavailable instead of
breaking construction. Ordinary calls use a client with a short timeout;
`wait` uses a second client whose every request carries the caller's
deadline, so a long wait never holds the connection of ordinary calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

import docker
import docker.auth
import docker.errors
import requests
import urllib3.exceptions
from docker.transport import UnixHTTPAdapter
from requests.structures import CaseInsensitiveDict

from vac.runtimes.base import (DEFAULT_ENGINE_TIMEOUT_SECONDS, ContainerHandle, ContainerNotStarted, ContainerRequest,
                               ContainerRuntimeError, ContainerGone, ContainerState, ExitInfo, ImageMissing,
                               PayloadPaths, RuntimeUnavailable, StartFailed, Usage)
from vac.runtimes.docker_api import (PAYLOAD_PATHS, create_kwargs, exit_info_from_inspect, handle_from_inspect,
                                     handle_from_summary, image_reference, usage_from_stats)
from vac.runtimes.mounts import host_propagation
from vac.vocabulary.labels import LABEL_FACTORY, LABEL_MACHINE, LABEL_SLOT

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "unix:///var/run/docker.sock"
DEFAULT_TIMEOUT_SECONDS = DEFAULT_ENGINE_TIMEOUT_SECONDS
# The engine answers one-shot stats (no second sample a second later) from API 1.41.
ONE_SHOT_STATS_API = (1, 41)
PULL_MESSAGE_LIMIT = 300


def is_read_timeout(error: BaseException) -> bool:
    """True if `error` is a read timeout, however requests wrapped it.

    On a chunked response (Docker's wait sends its headers at once) requests
    reports the timeout as a ConnectionError around urllib3's ReadTimeoutError.
    """
    seen = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            # The engine did not even accept the connection: not a wait that ran out.
            return False
        if isinstance(current, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            return True
        if isinstance(current, BaseException):
            pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
            pending.extend((current.__cause__, current.__context__))
    return False


def translate_error(error: Exception, what: str) -> ContainerRuntimeError:
    """The runtime error that a Docker SDK or requests error while doing `what` stands for."""
    if isinstance(error, docker.errors.NotFound):
        return ContainerGone(f"{what}: {error.explanation or error}")
    if isinstance(error, docker.errors.APIError):
        if error.is_server_error():
            return RuntimeUnavailable(f"{what}: the engine failed: {error.explanation or error}")
        return ContainerRuntimeError(f"{what}: the engine refused: {error.explanation or error}")
    # Connection refused or reset, read timeouts, and the SDK's own failure to
    # reach the engine while learning its API version.
    return RuntimeUnavailable(f"{what}: {error}")


@contextlib.contextmanager
def translated_errors(what: str):
    """Turn Docker SDK and requests errors raised inside into runtime errors."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise translate_error(error, what) from error


class DockerRuntime:
    """The runtime protocol (vac.runtimes.base.ContainerRuntime) on a Docker engine."""

    payload_paths = PAYLOAD_PATHS

    def payload_paths_for(self, model: str) -> PayloadPaths:
        """Where this runtime's containers see their machine's MJF and joboutputs."""
        return self.payload_paths

    def __init__(self, base_url: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS, clock=time.monotonic,
                 propagation_of=host_propagation):
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_BASE_URL
        self.timeout = timeout
        self._clock = clock
        self._propagation_of = propagation_of
        self._api = None
        self._wait_api = None
        # Last usage per container id: the engine has none once a container exits.
        self._last_usage: dict[str, Usage] = {}
        # Containers this object has seen exited: their statistics are not asked for again.
        self._exited: set[str] = set()

    def _client(self) -> docker.APIClient:
        if self._api is None:
            with translated_errors(f"connect to the Docker engine at {self.base_url}"):
                self._api = _engine_client(base_url=self.base_url, version="auto", timeout=self.timeout)
        return self._api

    def _waiting_client(self) -> docker.APIClient:
        if self._wait_api is None:
            version = self._client().api_version
            # No default timeout: each wait request passes the caller's deadline.
            self._wait_api = _engine_client(base_url=self.base_url, version=version, timeout=None)
        return self._wait_api

    def close(self) -> None:
        """Close both clients' connections."""
        for client in (self._api, self._wait_api):
            if client is not None:
                client.close()
        self._api = self._wait_api = None

    def ensure_image(self, image: str, deadline: float) -> None:
        """Make `image` present locally, pulling it before `deadline`, or raise ImageMissing."""
        reference = _docker_reference(image)
        api = self._client()
        with translated_errors(f"look for image {reference}"):
            try:
                api.inspect_image(reference)
                return
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as error:
                if not error.is_client_error():
                    raise
                # Such as "invalid reference format": no pull can help.
                raise ImageMissing(f"image {reference} cannot be used: {error.explanation or error}") from error
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise ImageMissing(f"image {reference} is not present and no time is left to pull it")
        log.info("image %s is not present: pulling it (%.0f s allowed)", reference, remaining)
        self._pull(api, reference, deadline)
        with translated_errors(f"look for image {reference} after pulling it"):
            try:
                api.inspect_image(reference)
            except docker.errors.ImageNotFound as error:
                raise ImageMissing(f"image {reference} is still not present after a pull that reported "
                                   f"no error") from error
        log.info("image %s pulled", reference)

    def _pull(self, api: docker.APIClient, reference: str, deadline: float) -> None:
        # The SDK's pull() sends its request with no timeout at all, so the
        # request is made here with a read timeout bounded by the deadline.
        repository, tag = docker.utils.parse_repository_tag(reference)
        registry, _ = docker.auth.resolve_repository_name(repository)
        headers = {}
        auth_header = docker.auth.get_config_header(api, registry)
        if auth_header:
            headers["X-Registry-Auth"] = auth_header
        read_timeout = max(0.1, min(self.timeout, deadline - self._clock()))
        url = f"{api.base_url}/v{api.api_version}/images/create"
        try:
            with api.post(url, params={"fromImage": repository, "tag": tag or "latest"}, headers=headers,
                          stream=True, timeout=read_timeout) as response:
                if response.status_code >= 400:
                    raise ImageMissing(f"pull of {reference} failed: {_short(_error_message(response.text))}")
                for line in response.iter_lines():
                    if self._clock() > deadline:
                        raise ImageMissing(f"pull of {reference} did not finish before its deadline")
                    event = _json_or_none(line)
                    if event is not None and event.get("error"):
                        raise ImageMissing(f"pull of {reference} failed: {_short(event['error'])}")
        except requests.exceptions.RequestException as error:
            if is_read_timeout(error) and self._clock() >= deadline:
                raise ImageMissing(f"pull of {reference} did not finish before its deadline") from error
            if is_read_timeout(error):
                raise ImageMissing(f"pull of {reference} stalled: nothing from the engine for "
                                   f"{read_timeout:.0f} s") from error
            raise translate_error(error, f"pull image {reference}") from error

    def create(self, request: ContainerRequest) -> ContainerHandle:
        """Create the container of `request` (idempotent per machine: an existing one is returned)."""
        _docker_reference(request.image)
        kwargs = create_kwargs(self._with_cvmfs_propagation(request))
        name = kwargs["name"]
        api = self._client()
        with translated_errors(f"create container {name}"):
            try:
                response = api.create_container(**kwargs)
            except docker.errors.ImageNotFound as error:
                raise ImageMissing(f"image {kwargs['image']} is not present for container {name}") from error
            except docker.errors.APIError as error:
                if error.status_code == 409:
                    return self._existing(name, request)
                if error.is_server_error() or error.is_client_error():
                    raise StartFailed(f"the engine refused to create container {name}: "
                                      f"{error.explanation or error}") from error
                raise
        for warning in response.get("Warnings") or ():
            log.warning("slot %02d machine %s: creating container %s: %s", request.slot, request.machine_uuid,
                        name, warning)
        log.info("slot %02d machine %s: created container %s (%s)", request.slot, request.machine_uuid, name,
                 response["Id"][:12])
        return ContainerHandle(id=response["Id"], name=name, labels=kwargs["labels"], state=ContainerState.CREATED,
                               created_at=time.time())

    def _with_cvmfs_propagation(self, request: ContainerRequest) -> ContainerRequest:
        """`request`, binding its repositories without propagation where the host's mount of them is private."""
        if not request.cvmfs_repositories or request.cvmfs_propagation != "rslave":
            return request
        if self._propagation_of(request.cvmfs_root) != "private":
            return request
        # The cvmfs-keeper warns the site once for the factory; each slot only notes it.
        log.debug("slot %02d machine %s: %s is on a private mount: binding its repositories without propagation",
                  request.slot, request.machine_uuid, request.cvmfs_root)
        return dataclasses.replace(request, cvmfs_propagation=None)

    def _existing(self, name: str, request: ContainerRequest) -> ContainerHandle:
        # A restarted worker may create again what its predecessor created.
        handle = self.inspect(name)
        if handle.machine_uuid != request.machine_uuid:
            raise StartFailed(f"container name {name} is taken by a container of machine {handle.machine_uuid}")
        log.info("slot %02d machine %s: container %s already exists, using it", request.slot,
                 request.machine_uuid, name)
        return handle

    def start(self, handle: ContainerHandle) -> ContainerHandle:
        """Start a created container (starting a running one is a no-op); its handle, as running.

        The engine's answer to a start carries no start time, and asking for
        it would be another call per machine: the handle has the time the
        start returned, and the exit brings the engine's (ExitInfo.started_at).
        """
        with translated_errors(f"start container {handle.name}"):
            try:
                self._client().start(handle.id)
            except docker.errors.NotFound:
                raise
            except docker.errors.APIError as error:
                raise StartFailed(f"the engine could not start container {handle.name}: "
                                  f"{error.explanation or error}") from error
        log.info("started container %s (%s)", handle.name, handle.id[:12])
        return dataclasses.replace(handle, state=ContainerState.RUNNING, started_at=time.time())

    def _inspect_attrs(self, container_id: str) -> dict:
        with translated_errors(f"inspect container {container_id}"):
            return self._client().inspect_container(container_id)

    def inspect(self, container_id: str) -> ContainerHandle:
        """The current handle of a container given by id or name; ContainerGone if it does not exist."""
        return handle_from_inspect(self._inspect_attrs(container_id))

    def find(self, factory: str, slot: int | None = None, models=None,
             machine_uuid: str | None = None, brief: bool = False) -> list[ContainerHandle]:
        """Containers in any state labelled with `factory` (and `slot`, and `machine_uuid`), oldest first.

        Each is inspected for its exact times, unless `brief` asks only for what the listing says.
        """
        labels = [f"{LABEL_FACTORY}={factory}"]
        if slot is not None:
            labels.append(f"{LABEL_SLOT}={slot}")
        if machine_uuid is not None:
            labels.append(f"{LABEL_MACHINE}={machine_uuid}")
        with translated_errors(f"list containers of factory {factory}"):
            summaries = self._client().containers(all=True, filters={"label": labels})
        if brief:
            return sorted((handle_from_summary(summary) for summary in summaries),
                          key=lambda handle: (handle.created_at or 0.0, handle.id))
        handles = []
        for summary in summaries:
            try:
                handles.append(self.inspect(summary["Id"]))
            except ContainerGone:
                # Removed between the listing and the inspection.
                continue
        # The listing's creation times are whole seconds; inspect's are not.
        return sorted(handles, key=lambda handle: (handle.created_at or 0.0, handle.id))

    def wait(self, handle: ContainerHandle, deadline: float) -> ExitInfo | None:
        """The container's ExitInfo once it exits, or None if `deadline` (monotonic) passes first."""
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return self.exit_status(handle)
            api = self._waiting_client()
            with translated_errors(f"wait for container {handle.name}"):
                try:
                    api.wait(handle.id, timeout=remaining)
                except docker.errors.APIError:
                    raise
                except requests.exceptions.RequestException as error:
                    if is_read_timeout(error):
                        return None
                    raise
            attrs = self._inspect_attrs(handle.id)
            info = exit_info_from_inspect(attrs)
            if info is not None:
                self._exited.add(handle.id)
                return info
            if attrs["State"]["Status"] == ContainerState.CREATED:
                # Docker's wait returns at once for a container never started.
                raise ContainerNotStarted(f"container {handle.name} was created but never started")
            # Started again between the wait and the inspection: wait again.

    def exit_status(self, handle: ContainerHandle) -> ExitInfo | None:
        """How the container ended, or None while it has not."""
        info = exit_info_from_inspect(self._inspect_attrs(handle.id))
        if info is not None:
            self._exited.add(handle.id)
        return info

    def stop(self, handle: ContainerHandle, grace_seconds: float) -> None:
        """SIGTERM, SIGKILL after `grace_seconds`; returns once it has exited."""
        grace = max(0, math.ceil(grace_seconds))
        log.info("stopping container %s (%s), %d s grace", handle.name, handle.id[:12], grace)
        # The SDK extends the request's timeout by the grace period.
        with translated_errors(f"stop container {handle.name}"):
            self._client().stop(handle.id, timeout=grace)

    def kill(self, handle: ContainerHandle) -> None:
        """SIGKILL now; a container that has already exited is left alone."""
        log.info("killing container %s (%s)", handle.name, handle.id[:12])
        with translated_errors(f"kill container {handle.name}"):
            try:
                self._client().kill(handle.id)
            except docker.errors.NotFound:
                raise
            except docker.errors.APIError as error:
                if error.status_code != 409:
                    raise
                # 409: it is not running, which is what kill wanted.

    def remove(self, handle: ContainerHandle) -> None:
        """Remove the container, killing it if needed; one already gone is fine."""
        with translated_errors(f"remove container {handle.name}"):
            try:
                self._client().remove_container(handle.id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as error:
                # 409: removal already in progress (another remove, or the reaper).
                if error.status_code != 409:
                    raise
        self._last_usage.pop(handle.id, None)
        self._exited.discard(handle.id)
        log.info("removed container %s (%s)", handle.name, handle.id[:12])

    def stats(self, handle: ContainerHandle) -> Usage:
        """CPU seconds and peak memory; after exit, the last sample this object took (zeros if none).

        Once this object has seen the container exited, the engine is not asked:
        it has no figures for a container whose cgroup is gone.
        """
        if handle.id in self._exited:
            return self._last_usage.get(handle.id, Usage(0.0, 0))
        api = self._client()
        one_shot = _api_version_tuple(api.api_version) >= ONE_SHOT_STATS_API
        with translated_errors(f"read statistics of container {handle.name}"):
            if one_shot:
                raw = api.stats(handle.id, stream=False, one_shot=True)
            else:
                raw = api.stats(handle.id, stream=False)
        sample = usage_from_stats(raw)
        previous = self._last_usage.get(handle.id, Usage(0.0, 0))
        if sample is None:
            return previous
        usage = Usage(max(sample.cpu_seconds, previous.cpu_seconds), max(sample.memory_bytes, previous.memory_bytes),
                      sample.sampled_at)
        self._last_usage[handle.id] = usage
        return usage


class _EngineClient(docker.APIClient):
    """The SDK's low-level client, whose requests go straight to their adapter.

    requests' Session.request merges the session's settings, the
    environment's, cookies and hooks into every call and looks for
    redirects after it: a container engine's API uses none of them, and
    they were a sixth of each call's CPU. requests still prepares the
    request (URL, query, headers, body) and its adapter sends it, as
    before; a call with anything more (files, json, auth, cookies, proxies)
    takes requests' own way.
    """

    PLAIN_OPTIONS = frozenset({"allow_redirects"})

    def request(self, method, url, params=None, data=None, headers=None, timeout=None, stream=None, **options):
        # Session.post passes json=None, and others may pass their options' defaults.
        if any(value is not None for name, value in options.items() if name not in self.PLAIN_OPTIONS):
            return super().request(method, url, params=params, data=data, headers=headers, timeout=timeout,
                                   stream=stream, **options)
        merged = CaseInsensitiveDict(self.headers)
        for name, value in (headers or {}).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method.upper(), url=url, headers=merged, data=data or {}, params=params or {})
        stream = self.stream if stream is None else stream
        response = self.get_adapter(url=prepared.url).send(prepared, stream=stream, timeout=timeout,
                                                           verify=self.verify, cert=self.cert, proxies={})
        if not stream:
            response.content  # read whole now, as requests does: the connection goes back to its pool
        return response


class _OnePoolUnixAdapter(UnixHTTPAdapter):
    """The SDK's adapter for the engine's Unix socket, with one connection pool for every request.

    The SDK keys its pools by each request's whole URL, so every container's
    own URLs (start, inspect, wait, remove) got a pool and a new connection
    of their own: some four connections per machine, each set up and torn
    down by the engine and by us, where one kept-alive connection serves.
    """

    POOL_KEY = "http+docker://localhost"

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self.get_connection(self.POOL_KEY, proxies)


def _engine_client(**options) -> docker.APIClient:
    """An API client that takes nothing from the environment and keeps its connections.

    The engine's API is never sent through an HTTP proxy or given .netrc
    credentials; without requests looking them up, each call cost about a
    third less CPU. Each request goes straight to its adapter
    (_EngineClient). On a Unix socket, one pool serves every request
    (_OnePoolUnixAdapter).
    """
    client = _EngineClient(**options)
    client.trust_env = False
    sdk_adapter = client.adapters.get("http+docker://")
    if isinstance(sdk_adapter, UnixHTTPAdapter):
        adapter = _OnePoolUnixAdapter(f"http+unix://{sdk_adapter.socket_path}", sdk_adapter.timeout,
                                      max_pool_size=sdk_adapter.max_pool_size)
        client.mount("http+docker://", adapter)
        # The SDK's fallback for other schemes is the adapter it made; it must not be a closed one.
        client._custom_adapter = adapter
        sdk_adapter.close()
    return client


def _docker_reference(image: str) -> str:
    # A root_image that names no Docker image is this machinetype's problem,
    # to be reported as a failed start, not a crash of the slot.
    try:
        return image_reference(image)
    except ValueError as error:
        raise ImageMissing(str(error)) from error


def _api_version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _json_or_none(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _error_message(body: str) -> str:
    event = _json_or_none(body.encode())
    if isinstance(event, dict) and event.get("message"):
        return event["message"]
    return body


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= PULL_MESSAGE_LIMIT else text[:PULL_MESSAGE_LIMIT] + "…"
