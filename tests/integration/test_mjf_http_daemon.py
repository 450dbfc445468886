"""Machine/Job Features over HTTP, read as DIRAC reads them: Python 3 urlopen inside real Docker
machines of a whole vacd, with the server on the Docker bridge's gateway."""

import json
import socket
import time

import psutil
import pytest

from docker_daemon import FIZZLE_SECONDS, GATED_USER_DATA, Machinetype, Site, create_events, \
    finish_and_check  # noqa: F401 (a fixture)
from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from python_image import ensure_image
from vac.machine.mjf_http import TOKEN_FILE_NAME
from vac.workers.mjf import CLIENT_SECONDS, interface_ipv4

PYTHON_IMAGE = "vac-test-python:latest"
WALLCLOCK = 3600
# What a DIRAC pilot does: os.path.join($JOBFEATURES, key) and urlopen. Each argument is
# "machinefeatures/KEY" or "jobfeatures/KEY" (read through the environment), a URL, or
# "POST URL"; it prints {argument: [status, body]}, status 0 when nothing answered.
READER = r"""
import json, os, sys, urllib.error, urllib.request
answers = {}
for item in json.loads(sys.argv[1]):
    method, _, url = item.rpartition(" ")
    if not url.startswith("http"):
        directory, key = url.split("/")
        url = os.path.join(os.environ[directory.upper()], key)
    request = urllib.request.Request(url, method=method or "GET", data=b"x" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answers[item] = [response.status, response.read().decode()]
    except urllib.error.HTTPError as error:
        answers[item] = [error.code, None]
    except OSError as error:
        answers[item] = [0, str(error)]
print(json.dumps(answers))
"""
# The gated template, saying first what the URL patterns became.
USER_DATA = GATED_USER_DATA.replace(
    'touch $out/ready',
    'echo "##user_data_machinefeatures_url## ##user_data_jobfeatures_url##" > $out/urls\ntouch $out/ready')


@pytest.fixture(scope="session")
def python_image(docker_client, busybox_image):
    return ensure_image(docker_client, PYTHON_IMAGE, busybox_image)


def free_port(address):
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def read(docker_client, machine, items):
    """What READER inside the machine's container gets for `items`."""
    result = docker_client.containers.get(machine.container_id).exec_run(
        ["python3", "-I", "-S", "-c", READER, json.dumps(items)])
    assert result.exit_code == 0, result.output.decode()
    return json.loads(result.output)


def keys(site, machine, directory):
    return sorted(path.name for path in (site.state_dir / "machines" / machine.uuid / directory).iterdir())


def value(site, machine, directory, key):
    return (site.state_dir / "machines" / machine.uuid / directory / key).read_text()


def mjf_pid(daemon):
    for process in psutil.Process(daemon.proc.pid).children():
        try:
            if " ".join(process.cmdline()).startswith("vacd: mjf"):
                return process.pid
        except psutil.NoSuchProcess:
            continue   # a child that ended between the listing and the look (the killed one, being reaped)
    return None


@pytest.mark.docker
def test_dirac_readers_in_docker_machines_read_every_key_over_http_and_nothing_else(
        tmp_path, factory_label, python_image, daemon_factory, docker_client, create_events):  # noqa: F811
    gateway = interface_ipv4("docker0")
    port = free_port(gateway)
    listen = f"mjf_http_listen = {gateway}:{port}\n"
    dirac = Machinetype("dirac", wallclock=WALLCLOCK, user_data=USER_DATA, options=("mjf_http = true",))
    site = Site(tmp_path, factory_label, python_image, [dirac], processors=2, extra_settings=listen)
    daemon = daemon_factory(site.config)
    first, second = site.wait_running(2, daemon)
    daemon.wait_log(f"mjf: serving Machine/Job Features at http://{gateway}:{port}/")

    # Every key of both directories, read through $MACHINEFEATURES and $JOBFEATURES, is the file's value.
    items = [f"{directory}/{key}" for directory in ("machinefeatures", "jobfeatures")
             for key in keys(site, first, directory)]
    answers = read(docker_client, first, items)
    assert {item: answer for item, answer in answers.items()} == {
        item: [200, value(site, first, *item.split("/"))] for item in items}
    assert len(items) > 20
    assert answers["jobfeatures/allocated_cpu"] == [200, "1"]
    assert answers["jobfeatures/job_id"] == [200, first.uuid]
    assert answers["jobfeatures/wall_limit_secs"] == [200, str(WALLCLOCK)]
    assert answers["machinefeatures/grace_secs"] == [200, "600"]
    token = (site.state_dir / "machines" / first.uuid / TOKEN_FILE_NAME).read_text()
    base = f"http://{gateway}:{port}/{first.uuid}/{token}"
    environment = docker_client.containers.get(first.container_id).attrs["Config"]["Env"]
    assert f"MACHINEFEATURES={base}/machinefeatures" in environment
    assert f"JOBFEATURES={base}/jobfeatures" in environment
    assert (first.joboutputs / "urls").read_text() == f"{base}/machinefeatures {base}/jobfeatures\n"
    # The files stay where file readers look for them.
    mounted = docker_client.containers.get(first.container_id).exec_run(["cat", "/etc/jobfeatures/allocated_cpu"])
    assert mounted.output == b"1"

    # A guessed token, another machine's UUID with this one's token, a path outside: 404. POST: 405.
    other_token = (site.state_dir / "machines" / second.uuid / TOKEN_FILE_NAME).read_text()
    assert other_token != token
    refused = read(docker_client, first, [
        f"http://{gateway}:{port}/{first.uuid}/{'0' * 32}/jobfeatures/allocated_cpu",
        f"http://{gateway}:{port}/{second.uuid}/{token}/jobfeatures/allocated_cpu",
        f"http://{gateway}:{port}/{first.uuid}/{token}/joboutputs/urls",
        f"http://{gateway}:{port}/",
        f"POST {base}/jobfeatures/allocated_cpu"])
    assert [status for status, _ in refused.values()] == [404, 404, 404, 404, 405]
    assert read(docker_client, second, ["jobfeatures/job_id"]) == {"jobfeatures/job_id": [200, second.uuid]}

    # Clients that connect and send nothing hold a connection each, at most 16 from one
    # address, until their deadline; a machine's reader is answered meanwhile.
    idle = [socket.create_connection((gateway, port), timeout=3) for _ in range(20)]
    opened = time.monotonic()
    try:
        time.sleep(0.5)
        for extra in idle[16:]:
            assert extra.recv(100) == b"", "a peer's connections beyond its share are closed at once"
        started = time.monotonic()
        assert read(docker_client, first, ["jobfeatures/allocated_cpu"])["jobfeatures/allocated_cpu"] == [200, "1"]
        assert time.monotonic() - started < 3
        # And none of them holds its connection past its deadline.
        idle[0].settimeout(CLIENT_SECONDS + 5)
        assert idle[0].recv(100) == b""
        assert time.monotonic() - opened > CLIENT_SECONDS - 0.5
    finally:
        for sock in idle:
            sock.close()

    # Malformed requests are answered and closed; the server goes on.
    for garbage, status in ((b"\x00\xff garbage\r\n\r\n", b"400"), (b"GET /" + b"a" * 10000, b"431"),
                            (b"GET\r\n\r\n", b"400")):
        with socket.create_connection((gateway, port), timeout=5) as client:
            client.sendall(garbage)
            assert client.recv(100).startswith(b"HTTP/1.1 " + status), garbage[:20]
    with socket.create_connection((gateway, port), timeout=5) as client:
        client.sendall(b"GET /half")       # and gone before the end of its request
    assert read(docker_client, first, ["jobfeatures/job_id"])["jobfeatures/job_id"] == [200, first.uuid]

    # A global shutdown_time lowers the shutdown time; the next read shows it.
    lowered = int(time.time()) + 1200
    applied = daemon.text().count("configuration applied")
    site.extra_settings = listen + f"shutdown_time = {lowered}\n"
    site.write_config()
    daemon.wait_log("configuration applied", count=applied + 1)
    deadline = time.monotonic() + 15
    while value(site, first, "jobfeatures", "shutdowntime_job") != str(lowered):
        assert time.monotonic() < deadline, daemon.text()[-4000:]
        time.sleep(0.05)
    assert read(docker_client, first, ["jobfeatures/shutdowntime_job", "machinefeatures/shutdowntime"]) == {
        "jobfeatures/shutdowntime_job": [200, str(lowered)], "machinefeatures/shutdowntime": [200, str(lowered)]}

    # The mjf child killed: the root starts it again on the same address, and the URLs work again.
    killed = mjf_pid(daemon)
    psutil.Process(killed).kill()
    deadline = time.monotonic() + 20
    while True:
        answers = read(docker_client, first, ["jobfeatures/allocated_cpu"]) if mjf_pid(daemon) not in (None, killed) \
            else {}
        if answers.get("jobfeatures/allocated_cpu") == [200, "1"]:
            break
        assert time.monotonic() < deadline, daemon.text()[-4000:]
        time.sleep(0.2)

    site.extra_settings = listen
    site.write_config()
    time.sleep(FIZZLE_SECONDS)
    finish_and_check(site, daemon, docker_client, create_events, [])
