"""The Docker runtime against the real engine: what a machine's container sees,
the limits it runs under, and how create, find, wait, stop, kill and remove behave."""

import http.server
import logging
import os
import socket
import socketserver
import subprocess
import textwrap
import threading
import time
import uuid

import psutil
import pytest
import requests

from vac.runtimes.base import (ContainerGone, ContainerHandle, ContainerNotStarted, ContainerRequest, ContainerState, ImageMissing,
                               RuntimeUnavailable, StartFailed, Usage)
from vac.runtimes.docker import DockerRuntime

REPOSITORY = "test.example.org"
MIB = 1024 ** 2


@pytest.fixture
def runtime():
    docker_runtime = DockerRuntime(timeout=30)
    yield docker_runtime
    docker_runtime.close()


def mount(*arguments):
    subprocess.run(["mount", *arguments], check=True, capture_output=True, timeout=30)


@pytest.fixture
def mounted_tmpfs():
    """Mount tmpfs file systems for a test; all are unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount the tmpfs that stands in for /cvmfs")
    mounted = []

    def mount_tmpfs(path, propagation):
        path.mkdir(parents=True, exist_ok=True)
        mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "vac-test", str(path))
        mounted.append(path)
        mount(f"--make-{propagation}", str(path))
        return path

    yield mount_tmpfs
    for path in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True, timeout=30)


@pytest.fixture
def cvmfs_root(tmp_path, mounted_tmpfs):
    """A stand-in for /cvmfs: a shared mount (as under systemd) holding one repository directory."""
    root = mounted_tmpfs(tmp_path / "cvmfs", "shared")
    (root / REPOSITORY).mkdir()
    (root / REPOSITORY / "README").write_text("repository content\n")
    return root


def machine_request(tmp_path, factory, script, slot=3, image="vac-test-busybox:latest", cvmfs_root=None, **changes):
    """A request for a machine whose /user_data is `script`, with its directories under tmp_path."""
    machine_uuid = str(uuid.uuid4())
    machine = tmp_path / machine_uuid
    for name in ("machinefeatures", "jobfeatures", "joboutputs", "scratch"):
        (machine / name).mkdir(parents=True)
    (machine / "machinefeatures" / "total_cpu").write_text("1")
    (machine / "jobfeatures" / "job_id").write_text(machine_uuid)
    (machine / "joboutputs").chmod(0o777)
    user_data = machine / "user_data"
    user_data.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    user_data.chmod(0o755)
    fields = dict(
        factory=factory, slot=slot, machine_uuid=machine_uuid, machinetype="busybox-test", generation=1,
        machine_name=f"{factory}-{slot:02d}.example.org", image=image, command="/user_data",
        processors=1, memory_bytes=128 * MIB, pids_limit=100, user_data=user_data,
        machinefeatures=machine / "machinefeatures", jobfeatures=machine / "jobfeatures",
        joboutputs=machine / "joboutputs", tmp_binds=((machine / "scratch", "/scratch"),),
        environment=(("VAC_TEST", "hello"),),
    )
    if cvmfs_root is not None:
        fields.update(cvmfs_root=cvmfs_root, cvmfs_repositories=(REPOSITORY,))
    fields.update(changes)
    return ContainerRequest(**fields)


def wait_for_file(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)
    return path.read_text()


def run_machine(runtime, request):
    runtime.ensure_image(request.image, time.monotonic() + 30)
    handle = runtime.create(request)
    runtime.start(handle)
    return handle


def docker_exec(docker_client, container_id, command):
    result = docker_client.containers.get(container_id).exec_run(command)
    return result.exit_code, result.output.decode()


SEES_SECTION_3 = """\
    out=$JOBOUTPUTS
    hostname > $out/hostname
    echo "$MACHINEFEATURES $JOBFEATURES $JOBOUTPUTS $VAC_TEST" > $out/environment
    cat /etc/machinefeatures/total_cpu /etc/jobfeatures/job_id /cvmfs/test.example.org/README > $out/read
    for path in /user_data /etc/machinefeatures/x /etc/jobfeatures/x /cvmfs/test.example.org/x /scratch/x; do
        if echo x 2>/dev/null > $path; then echo "$path written"; else echo "$path refused"; fi
    done > $out/writes
    touch $out/ready
    exec sleep 300
"""


@pytest.mark.docker
def test_container_sees_its_machine_as_specified(runtime, docker_client, busybox_image, factory_label, tmp_path,
                                                 cvmfs_root, mounted_tmpfs):
    request = machine_request(tmp_path, factory_label, SEES_SECTION_3, cvmfs_root=cvmfs_root)
    handle = run_machine(runtime, request)
    joboutputs = request.joboutputs
    wait_for_file(joboutputs / "ready")

    assert (joboutputs / "hostname").read_text() == f"{factory_label}-03.example.org\n"
    assert (joboutputs / "environment").read_text() == \
        "/etc/machinefeatures /etc/jobfeatures /var/spool/joboutputs hello\n"
    assert (joboutputs / "read").read_text() == f"1{request.machine_uuid}repository content\n"
    assert (joboutputs / "writes").read_text().splitlines() == [
        "/user_data refused",
        "/etc/machinefeatures/x refused",
        "/etc/jobfeatures/x refused",
        "/cvmfs/test.example.org/x refused",
        "/scratch/x written",
    ]
    assert (tmp_path / request.machine_uuid / "scratch" / "x").read_text() == "x\n"
    assert not (request.machinefeatures / "x").exists()

    # A repository mounted after the container started (as autofs does) is seen inside it.
    late = mounted_tmpfs(cvmfs_root / REPOSITORY, "shared")
    (late / "late").write_text("mounted later\n")
    assert docker_exec(docker_client, handle.id, ["cat", f"/cvmfs/{REPOSITORY}/late"]) == (0, "mounted later\n")


@pytest.mark.docker
def test_inspect_shows_limits_labels_and_mounts(runtime, docker_client, busybox_image, factory_label, tmp_path,
                                                cvmfs_root):
    request = machine_request(tmp_path, factory_label, "exec sleep 300\n", cvmfs_root=cvmfs_root, processors=2,
                              memory_bytes=96 * MIB, pids_limit=77, generation=5)
    handle = run_machine(runtime, request)

    attrs = docker_client.api.inspect_container(handle.id)
    host_config = attrs["HostConfig"]
    assert {key: host_config[key] for key in ("NanoCpus", "Memory", "MemorySwap", "PidsLimit", "SecurityOpt",
                                              "Init", "AutoRemove")} == {
        "NanoCpus": 2_000_000_000, "Memory": 96 * MIB, "MemorySwap": 96 * MIB, "PidsLimit": 77,
        "SecurityOpt": ["no-new-privileges"], "Init": True, "AutoRemove": False}
    assert host_config["RestartPolicy"]["Name"] in ("no", "")
    assert attrs["Config"]["Hostname"] == f"{factory_label}-03.example.org"
    assert attrs["Config"]["Cmd"] == ["/user_data"]
    # The image's own labels (vac.test.*) are merged in by Docker.
    assert {key: value for key, value in attrs["Config"]["Labels"].items() if not key.startswith("vac.test.")} == {
        "vac.factory": factory_label, "vac.slot": "3", "vac.machine": request.machine_uuid,
        "vac.machinetype": "busybox-test", "vac.generation": "5",
        "vac.machine_name": f"{factory_label}-03.example.org"}
    mounts = {each["Destination"]: (each["RW"], each["Propagation"]) for each in attrs["Mounts"]}
    assert mounts[f"/cvmfs/{REPOSITORY}"] == (False, "rslave")
    assert mounts["/var/spool/joboutputs"][0] is True
    assert {path: mounts[path][0] for path in ("/user_data", "/etc/machinefeatures", "/etc/jobfeatures")} == {
        "/user_data": False, "/etc/machinefeatures": False, "/etc/jobfeatures": False}


@pytest.mark.docker
def test_memory_limit_ends_a_greedy_machine_as_oom_killed(runtime, busybox_image, factory_label, tmp_path):
    # sort holds all its input: 100 MiB of short lines cannot fit in 32 MiB.
    request = machine_request(tmp_path, factory_label, "yes | head -c 100m | sort > /dev/null\n",
                              memory_bytes=32 * MIB)
    handle = run_machine(runtime, request)

    info = runtime.wait(handle, time.monotonic() + 60)
    assert info is not None and (info.oom_killed, info.exit_code) == (True, 137), info


@pytest.mark.docker
def test_fresh_runtime_finds_containers_by_labels(runtime, busybox_image, factory_label, tmp_path):
    first = run_machine(runtime, machine_request(tmp_path, factory_label, "exec sleep 300\n", slot=4))
    second = runtime.create(machine_request(tmp_path, factory_label, "exec sleep 300\n", slot=5))

    # As after a slot worker restart: a new object, a new connection.
    restarted = DockerRuntime(timeout=30)
    try:
        in_slot_4 = restarted.find(factory_label, slot=4)
        everything = restarted.find(factory_label)
        elsewhere = restarted.find(f"{factory_label}-other")
        by_machine = restarted.find(factory_label, machine_uuid=second.machine_uuid)
        brief = restarted.find(factory_label, brief=True)
        other_machine = restarted.find(factory_label, slot=5, machine_uuid=first.machine_uuid)
    finally:
        restarted.close()

    assert [(each.id, each.state, each.slot, each.machine_uuid) for each in in_slot_4] == [
        (first.id, ContainerState.RUNNING, 4, first.machine_uuid)]
    assert in_slot_4[0].started_at == pytest.approx(time.time(), abs=30)
    assert [(each.id, each.state) for each in everything] == [
        (first.id, ContainerState.RUNNING), (second.id, ContainerState.CREATED)]
    assert elsewhere == []
    assert [each.id for each in by_machine] == [second.id] and other_machine == []
    # From the listing alone: enough to act on, with the creation time in whole seconds.
    # Their creation times are whole seconds, so two made in one second may come in either order.
    assert sorted((each.id, each.name, each.labels, each.state, each.started_at) for each in brief) == sorted(
        (each.id, each.name, each.labels, each.state, None) for each in everything)
    exact = {each.id: each.created_at for each in everything}
    assert all(each.created_at == pytest.approx(exact[each.id], abs=1.0) for each in brief)


@pytest.mark.docker
def test_creating_the_same_machine_twice_returns_the_first_container(runtime, busybox_image, factory_label,
                                                                     tmp_path):
    request = machine_request(tmp_path, factory_label, "exec sleep 300\n")
    first = runtime.create(request)
    again = runtime.create(request)

    assert again.id == first.id
    assert [each.id for each in runtime.find(factory_label)] == [first.id]


@pytest.mark.docker
def test_a_start_gives_the_time_it_returned_and_the_exit_gives_the_engine_s(runtime, busybox_image, factory_label,
                                                                           tmp_path):
    created = runtime.create(machine_request(tmp_path, factory_label, "exit 0\n"))
    asked = time.time()
    started = runtime.start(created)
    returned = time.time()
    assert (started.id, started.state) == (created.id, ContainerState.RUNNING)
    assert asked <= started.started_at <= returned

    info = runtime.wait(started, time.monotonic() + 30)
    engine_started = runtime.inspect(started.id).started_at
    assert info.started_at == engine_started
    assert asked - 1 <= engine_started <= started.started_at


@pytest.mark.docker
def test_wait_returns_none_at_its_deadline_then_the_exit(runtime, busybox_image, factory_label, tmp_path):
    script = """\
        i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done
        touch $JOBOUTPUTS/busy
        sleep 3
        exit 3
    """
    request = machine_request(tmp_path, factory_label, script)
    handle = run_machine(runtime, request)
    wait_for_file(request.joboutputs / "busy", timeout=60)
    usage_while_running = runtime.stats(handle)

    started = time.monotonic()
    assert runtime.wait(handle, started + 0.5) is None
    assert 0.45 <= time.monotonic() - started < 2
    assert runtime.exit_status(handle) is None

    info = runtime.wait(handle, time.monotonic() + 30)
    assert info is not None
    assert (info.exit_code, info.oom_killed) == (3, False)
    assert info.finished_at == pytest.approx(time.time(), abs=5)
    assert runtime.exit_status(handle) == info
    assert runtime.inspect(handle.id).state == ContainerState.EXITED

    # The busy loop used CPU; after the exit the engine has no figures and
    # the runtime answers with its last sample, a fresh runtime with zeros.
    assert usage_while_running.cpu_seconds > 0.05
    assert usage_while_running.memory_bytes > 0
    assert runtime.stats(handle) == usage_while_running
    # Having seen the exit, the runtime does not ask the engine again: no engine is needed for it.
    runtime.close()
    engine_url, runtime.base_url = runtime.base_url, f"unix://{tmp_path}/no-engine.sock"
    assert runtime.stats(handle) == usage_while_running
    runtime.base_url = engine_url
    fresh = DockerRuntime(timeout=30)
    try:
        assert fresh.stats(handle) == Usage(0.0, 0)
    finally:
        fresh.close()


@pytest.mark.docker
def test_wait_on_a_container_never_started_refuses(runtime, busybox_image, factory_label, tmp_path):
    handle = runtime.create(machine_request(tmp_path, factory_label, "exit 0\n"))
    with pytest.raises(ContainerNotStarted):
        runtime.wait(handle, time.monotonic() + 5)


@pytest.mark.docker
def test_stop_kills_a_container_that_ignores_term_after_the_grace(runtime, busybox_image, factory_label,
                                                                  tmp_path):
    request = machine_request(tmp_path, factory_label, "trap '' TERM\ntouch $JOBOUTPUTS/ready\nsleep 100\n")
    handle = run_machine(runtime, request)
    wait_for_file(request.joboutputs / "ready")

    started = time.monotonic()
    runtime.stop(handle, grace_seconds=2)
    elapsed = time.monotonic() - started

    assert 1.9 <= elapsed < 6
    assert runtime.exit_status(handle).exit_code == 137


@pytest.mark.docker
def test_stop_ends_a_plain_script_at_once(runtime, busybox_image, factory_label, tmp_path):
    # With docker-init as PID 1 the script gets SIGTERM's default action; a
    # shell as PID 1 would ignore it and make every stop last the whole grace.
    request = machine_request(tmp_path, factory_label, "touch $JOBOUTPUTS/ready\nsleep 100\n")
    handle = run_machine(runtime, request)
    wait_for_file(request.joboutputs / "ready")

    started = time.monotonic()
    runtime.stop(handle, grace_seconds=10)

    assert time.monotonic() - started < 3
    assert runtime.exit_status(handle).exit_code == 143


@pytest.mark.docker
def test_kill_and_remove_are_idempotent_and_gone_is_reported(runtime, busybox_image, factory_label, tmp_path):
    handle = run_machine(runtime, machine_request(tmp_path, factory_label, "exec sleep 300\n"))

    runtime.kill(handle)
    assert runtime.wait(handle, time.monotonic() + 10).exit_code == 137
    runtime.kill(handle)
    runtime.remove(handle)
    runtime.remove(handle)

    assert runtime.find(factory_label) == []
    with pytest.raises(ContainerGone):
        runtime.inspect(handle.id)
    with pytest.raises(ContainerGone):
        runtime.wait(handle, time.monotonic() + 5)


@pytest.mark.docker
def test_remove_ends_a_running_container(runtime, busybox_image, factory_label, tmp_path):
    handle = run_machine(runtime, machine_request(tmp_path, factory_label, "exec sleep 300\n"))
    runtime.remove(handle)
    assert runtime.find(factory_label) == []


@pytest.mark.docker
def test_missing_image_is_reported_quickly(runtime, docker_client, factory_label, tmp_path):
    image = f"docker://vac-test-absent-{uuid.uuid4().hex[:8]}:latest"

    started = time.monotonic()
    with pytest.raises(ImageMissing, match="vac-test-absent"):
        runtime.ensure_image(image, started + 20)
    assert time.monotonic() - started < 25

    with pytest.raises(ImageMissing, match="not present"):
        runtime.create(machine_request(tmp_path, factory_label, "exit 0\n", image=image))
    assert runtime.find(factory_label) == []


@pytest.mark.docker
def test_pull_from_a_registry_that_never_answers_ends_at_its_deadline(runtime, docker_client):
    # A registry on the loopback address (which dockerd may use without TLS)
    # that accepts connections and never says a word.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(ImageMissing, match=f"127.0.0.1:{port}/vo/image:1 did not finish before its deadline"):
            runtime.ensure_image(f"docker://127.0.0.1:{port}/vo/image:1", started + 3)
        assert 2.9 <= time.monotonic() - started < 6
    finally:
        listener.close()


@pytest.mark.docker
def test_missing_image_with_no_time_left_is_not_pulled(runtime, docker_client):
    with pytest.raises(ImageMissing, match="no time is left"):
        runtime.ensure_image("vac-test-absent-image:latest", time.monotonic() - 1)


@pytest.mark.docker
def test_image_reference_the_engine_refuses_is_missing(runtime, docker_client, factory_label, tmp_path):
    with pytest.raises(ImageMissing, match="cannot be used: .*lowercase"):
        runtime.ensure_image("docker://Vac-Test-Busybox:latest", time.monotonic() + 10)
    with pytest.raises(ImageMissing, match="does not name a Docker image"):
        runtime.ensure_image("https://example.org/image.sif", time.monotonic() + 10)
    with pytest.raises(ImageMissing, match="does not name a Docker image"):
        runtime.create(machine_request(tmp_path, factory_label, "exit 0\n", image="docker://"))


@pytest.mark.docker
def test_present_image_needs_no_pull(runtime, busybox_image):
    started = time.monotonic()
    runtime.ensure_image(f"docker://{busybox_image}", started + 5)
    assert time.monotonic() - started < 5


@pytest.mark.docker
def test_an_rslave_bind_the_engine_refuses_fails_to_start_clearly(busybox_image, factory_label, tmp_path,
                                                                   mounted_tmpfs):
    # The runtime binds a private /cvmfs without propagation; should it ever
    # misjudge the mount, the engine's refusal must end the machine clearly,
    # not hang or crash.
    private_root = mounted_tmpfs(tmp_path / "private-cvmfs", "private")
    (private_root / REPOSITORY).mkdir()
    misjudging = DockerRuntime(timeout=30, propagation_of=lambda path: "shared")
    try:
        handle = misjudging.create(machine_request(tmp_path, factory_label, "exit 0\n", cvmfs_root=private_root))
        with pytest.raises(StartFailed, match="shared or slave"):
            misjudging.start(handle)
    finally:
        misjudging.close()


@pytest.mark.docker
def test_repository_that_does_not_exist_fails_to_create(runtime, busybox_image, factory_label, tmp_path):
    request = machine_request(tmp_path, factory_label, "exit 0\n", cvmfs_root=tmp_path / "no-cvmfs",
                              cvmfs_repositories=(REPOSITORY,))
    with pytest.raises(StartFailed, match="does not exist"):
        runtime.create(request)


def test_engine_socket_missing_is_unavailable_at_once(tmp_path):
    absent = DockerRuntime(base_url=f"unix://{tmp_path}/docker.sock", timeout=5)
    started = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match="docker.sock"):
        absent.find("any-factory")
    assert time.monotonic() - started < 5


def test_engine_that_never_answers_is_unavailable_within_the_timeout(tmp_path):
    # A listening socket nobody reads: connecting works, answers never come.
    path = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    hung = DockerRuntime(base_url=f"unix://{path}", timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable):
            hung.find("any-factory")
        assert 0.9 <= time.monotonic() - started < 3
    finally:
        hung.close()
        listener.close()


class _EngineDyingDuringWait(http.server.BaseHTTPRequestHandler):
    """Answers the version query, then drops every wait after its headers, as a dockerd that stops."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b'{"ApiVersion": "1.41"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def log_message(self, format, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_engine_stopping_during_a_wait_is_unavailable_not_a_timeout(tmp_path):
    path = tmp_path / "dying.sock"
    server = _UnixHTTPServer(str(path), _EngineDyingDuringWait)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    dying = DockerRuntime(base_url=f"unix://{path}", timeout=5)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match="wait for container vac-x"):
            dying.wait(ContainerHandle(id="0" * 64, name="vac-x"), started + 30)
        assert time.monotonic() - started < 5
    finally:
        dying.close()
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)


@pytest.mark.docker
def test_a_private_cvmfs_mount_is_bound_without_propagation(runtime, docker_client, busybox_image, factory_label,
                                                             tmp_path, mounted_tmpfs, caplog):
    # A host not booted by systemd may keep /cvmfs private: the engine refuses
    # rslave binds from it, so each machine would fail to start.
    root = mounted_tmpfs(tmp_path / "cvmfs", "private")
    (root / REPOSITORY).mkdir()
    (root / REPOSITORY / "README").write_text("repository content\n")
    handles = [run_machine(runtime, machine_request(tmp_path, factory_label, "exec sleep 300\n", slot=slot,
                                                    cvmfs_root=root)) for slot in (3, 4)]
    for handle in handles:
        assert docker_exec(docker_client, handle.id, ["cat", f"/cvmfs/{REPOSITORY}/README"]) == (
            0, "repository content\n")
        mounts = docker_client.api.inspect_container(handle.id)["Mounts"]
        assert [m["Propagation"] for m in mounts if m["Destination"] == f"/cvmfs/{REPOSITORY}"] == ["rprivate"]
    warnings = [r for r in caplog.records if "is on a private mount" in r.getMessage()
                and r.levelno >= logging.WARNING]
    assert warnings == [], "the cvmfs-keeper warns once for the factory, not every slot"


@pytest.mark.docker
def test_engine_requests_take_no_credentials_or_proxies_from_the_environment(runtime, monkeypatch, tmp_path):
    # requests would add .netrc credentials for the engine's host, and look them up on every call.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine localhost login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for client in (runtime._client(), runtime._waiting_client()):
        prepared = client.prepare_request(requests.Request("GET", client._url("/version")))
        assert "Authorization" not in prepared.headers
        assert client.merge_environment_settings(prepared.url, {}, None, None, None)["proxies"] == {}
    assert runtime._client().version()["ApiVersion"]


@pytest.mark.docker
def test_a_machine_s_engine_calls_go_straight_to_the_adapter_with_the_sdk_s_headers(runtime, busybox_image,
                                                                                  factory_label, tmp_path,
                                                                                  monkeypatch):
    def merged_by_the_session(*args, **kwargs):
        raise AssertionError("a request went through requests' Session.request")

    runtime.find(factory_label)     # the API version is learnt first
    sent = []
    adapter = runtime._client().get_adapter(url=runtime._client().base_url)
    send = adapter.send
    monkeypatch.setattr(adapter, "send", lambda request, **kwargs: sent.append(request) or send(request, **kwargs))
    monkeypatch.setattr(requests.Session, "request", merged_by_the_session)
    handle = run_machine(runtime, machine_request(tmp_path, factory_label, "exit 0\n"))
    assert runtime.wait(handle, time.monotonic() + 30).exit_code == 0
    runtime.stats(handle)
    runtime.remove(handle)
    assert runtime.find(factory_label) == []

    [create] = [request for request in sent if "/containers/create" in request.url]
    assert create.method == "POST" and create.url.endswith(f"/containers/create?name={handle.name}")
    assert create.headers["Content-Type"] == "application/json" and '"Image"' in create.body
    [remove] = [request for request in sent if request.method == "DELETE"]
    assert remove.url.endswith(f"/containers/{handle.id}?v=True&link=False&force=True")
    assert all(request.headers["User-Agent"].startswith("docker-sdk-python/") for request in sent)


def _sockets_open():
    return len(psutil.Process().net_connections(kind="unix"))


@pytest.mark.docker
def test_one_kept_alive_connection_serves_every_container_s_requests(runtime, busybox_image, factory_label, tmp_path):
    # Each container has URLs of its own (start, inspect, wait, remove); none needs a connection of its own.
    runtime.find(factory_label)
    before = _sockets_open()
    for slot in range(4):
        handle = run_machine(runtime, machine_request(tmp_path / str(slot), factory_label, "exit 0\n", slot=slot))
        assert runtime.wait(handle, time.monotonic() + 30).exit_code == 0
        runtime.inspect(handle.id)
        runtime.remove(handle)
    # The waiting client's connection is the one more.
    assert _sockets_open() <= before + 1
