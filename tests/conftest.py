"""Fixtures shared by the test suite: the Docker engine, a local busybox image,
a unique factory label and a state directory per test."""

import importlib.util
import os
import uuid

import pytest

BUSYBOX_IMAGE = "vac-test-busybox:latest"
FACTORY_LABEL_KEY = "vac.factory"
DOCKER_TIMEOUT_SECONDS = 30


def _load_busybox_images():
    """The demo's image builder (contrib/demo is no package: load it by path)."""
    import vac  # installed editable from this checkout: contrib/ lies beside the package

    path = os.path.join(os.path.dirname(vac.__file__), "..", "contrib", "demo", "busybox_image.py")
    spec = importlib.util.spec_from_file_location("busybox_image", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docker_is_required():
    """True where a missing Docker engine must fail the run instead of skipping."""
    return os.environ.get("CI") == "true" or bool(os.environ.get("VAC_REQUIRE_DOCKER"))


def _docker_unavailable(reason):
    if docker_is_required():
        pytest.fail(f"Docker engine required (CI or VAC_REQUIRE_DOCKER set) but {reason}", pytrace=False)
    pytest.skip(f"Docker engine unavailable: {reason}")


def _connect_docker():
    """Return a client that has answered a ping, or a string saying why not."""
    try:
        import docker
        import requests
    except ImportError as error:
        return f"the docker SDK is not installed ({error})"
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_SECONDS)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"cannot reach it ({error})"
    return client


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client to an engine that answered a ping."""
    client = _connect_docker()
    if isinstance(client, str):
        _docker_unavailable(client)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _require_docker_for_marked_tests(request):
    # Tests marked docker need the engine even if they never ask for a client.
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    """Tag of a local FROM-scratch image with the host's static busybox and its applets."""
    busybox_images = _load_busybox_images()
    try:
        return busybox_images.ensure_image(docker_client, BUSYBOX_IMAGE)
    except busybox_images.ImageBuildError as error:
        pytest.fail(str(error), pytrace=False)


def remove_labelled_containers(label):
    """Force-remove every container labelled vac.factory=label, running or not."""
    client = _connect_docker()
    if isinstance(client, str):
        # No engine now means no containers of this test to clean up.
        return
    import docker

    try:
        # The low-level list: containers.list() inspects each one it lists, and
        # one that a vacd still running removes meanwhile would fail the cleanup.
        for container in client.api.containers(all=True, filters={"label": f"{FACTORY_LABEL_KEY}={label}"}):
            try:
                client.api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.NotFound:
                # It went away on its own (auto-remove) between list and remove.
                pass
    finally:
        client.close()


@pytest.fixture
def factory_label():
    """A factory label unique to this test; its containers are removed afterwards, pass or fail.

    Ask for it before daemon_factory: fixtures end in the reverse order, so the
    vacds are stopped first and cannot start a container after the removal.
    """
    label = f"test-{uuid.uuid4().hex[:8]}"
    yield label
    remove_labelled_containers(label)


@pytest.fixture
def tmp_state_dir(tmp_path):
    """An empty state directory owned by this test."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    return state_dir
