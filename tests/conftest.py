"""Fixtures shared by the test suite: the Docker engine, a local busybox image,
a unique factory label and a state directory per test."""

import hashlib
import io
import os
import subprocess
import tarfile
import uuid

import pytest

BUSYBOX_PATH = "/bin/busybox"
BUSYBOX_IMAGE = "vac-test-busybox:latest"
BUSYBOX_SHA256_LABEL = "vac.test.busybox-sha256"
FACTORY_LABEL_KEY = "vac.factory"
DOCKER_TIMEOUT_SECONDS = 30
ELF_PT_INTERP = 3


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


def _is_static_elf(path):
    """True if the ELF file at path has no program interpreter (needs no libc)."""
    with open(path, "rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return False
        byteorder = "little" if header[5] == 1 else "big"
        program_headers_offset = int.from_bytes(header[32:40], byteorder)
        entry_size = int.from_bytes(header[54:56], byteorder)
        entry_count = int.from_bytes(header[56:58], byteorder)
        binary.seek(program_headers_offset)
        table = binary.read(entry_size * entry_count)
    entry_types = (int.from_bytes(table[i:i + 4], byteorder) for i in range(0, len(table), entry_size))
    return ELF_PT_INTERP not in entry_types


def _busybox_build_context(busybox_bytes, applets):
    """A tar build context: busybox and one /bin symlink per applet, FROM scratch."""
    dockerfile = b"FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"/bin/sh\"]\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, mode=0o644, target=""):
            member = tarfile.TarInfo(name)
            member.type, member.mode, member.linkname = kind, mode, target
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("Dockerfile", dockerfile)
        add("rootfs/bin", kind=tarfile.DIRTYPE, mode=0o755)
        add("rootfs/tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        add("rootfs/bin/busybox", busybox_bytes, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"rootfs/bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, target="busybox")
    context.seek(0)
    return context


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    """Tag of a local FROM-scratch image with the host's static busybox and its applets."""
    import docker

    if not os.path.exists(BUSYBOX_PATH):
        pytest.fail(f"{BUSYBOX_PATH} is missing; install busybox-static (scripts/bootstrap does)", pytrace=False)
    if not _is_static_elf(BUSYBOX_PATH):
        pytest.fail(f"{BUSYBOX_PATH} is not statically linked; install busybox-static", pytrace=False)
    with open(BUSYBOX_PATH, "rb") as binary:
        busybox_bytes = binary.read()
    busybox_sha256 = hashlib.sha256(busybox_bytes).hexdigest()

    # Reuse the image of an earlier run when it holds this very binary.
    try:
        existing = docker_client.images.get(BUSYBOX_IMAGE)
    except docker.errors.ImageNotFound:
        existing = None
    if existing is not None and existing.labels.get(BUSYBOX_SHA256_LABEL) == busybox_sha256:
        return BUSYBOX_IMAGE

    listing = subprocess.run([BUSYBOX_PATH, "--list"], capture_output=True, text=True, check=True, timeout=10)
    applets = sorted(set(listing.stdout.split()))
    docker_client.images.build(
        fileobj=_busybox_build_context(busybox_bytes, applets),
        custom_context=True,
        tag=BUSYBOX_IMAGE,
        labels={BUSYBOX_SHA256_LABEL: busybox_sha256},
        rm=True,
        forcerm=True,
        network_mode="none",
    )
    return BUSYBOX_IMAGE


def remove_labelled_containers(label):
    """Force-remove every container labelled vac.factory=label, running or not."""
    client = _connect_docker()
    if isinstance(client, str):
        # No engine now means no containers of this test to clean up.
        return
    import docker

    try:
        for container in client.containers.list(all=True, filters={"label": f"{FACTORY_LABEL_KEY}={label}"}):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                # It went away on its own (auto-remove) between list and remove.
                pass
    finally:
        client.close()


@pytest.fixture
def factory_label():
    """A factory label unique to this test; its containers are removed afterwards, pass or fail."""
    label = f"test-{uuid.uuid4().hex[:8]}"
    yield label
    remove_labelled_containers(label)


@pytest.fixture
def tmp_state_dir(tmp_path):
    """An empty state directory owned by this test."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    return state_dir
