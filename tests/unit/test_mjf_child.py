"""The mjf child's decisions: the reply to each request, where it listens, what it tells the root."""

import errno

import pytest

from vac.machine.layout import create_machine_directory
from vac.machine.mjf import MjfInputs, write_mjf
from vac.machine.mjf_http import MAX_VALUE_BYTES, TOKEN_FILE_NAME
from vac.workers.mjf import MjfOptions, MjfService, SpecError, answer, listen_address, mjf_options

MACHINE = "0b8f7c1e-5a2d-4c3b-8e9f-1a2b3c4d5e6f"
TOKEN = "0123456789abcdef0123456789abcdef"
BASE = f"/{MACHINE}/{TOKEN}"


@pytest.fixture
def state_dir(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE)
    write_mjf(paths, MjfInputs(machine_uuid=MACHINE, processors=8, start_time=1700000000,
                               shutdown_time=1700086400, mb_per_processor=2048))
    (paths.root / TOKEN_FILE_NAME).write_text(TOKEN)
    (paths.machinefeatures / "huge").write_bytes(b"x" * (MAX_VALUE_BYTES + 1))
    return tmp_path


def test_get_of_a_key_is_its_value(state_dir):
    reply = answer(state_dir, b"GET", f"{BASE}/jobfeatures/allocated_cpu".encode())
    assert (reply.status, reply.body, reply.content_type) == (200, b"8", "text/plain; charset=utf-8")
    assert answer(state_dir, b"GET", f"{BASE}/machinefeatures/shutdowntime".encode()).body == b"1700086400"


def test_get_of_a_directory_lists_its_keys(state_dir):
    reply = answer(state_dir, b"GET", f"{BASE}/jobfeatures/".encode())
    assert reply.status == 200 and b"allocated_cpu\n" in reply.body and b"job_id\n" in reply.body


@pytest.mark.parametrize("method", [b"POST", b"HEAD", b"PUT", b"DELETE", b"get", b"OPTIONS"])
def test_every_other_method_is_405(state_dir, method):
    reply = answer(state_dir, method, f"{BASE}/jobfeatures/allocated_cpu".encode())
    assert (reply.status, reply.headers) == (405, (("Allow", "GET"),))


@pytest.mark.parametrize("target", [
    b"/", b"/metrics", f"/{MACHINE}/{'f' * 32}/jobfeatures/allocated_cpu".encode(),
    f"{BASE}/jobfeatures/no_such_key".encode(), f"{BASE}/joboutputs/x".encode(), b"*",
    b"http://172.17.0.1:9713" + f"{BASE}/jobfeatures/allocated_cpu".encode(),
])
def test_unknown_paths_and_tokens_are_404(state_dir, target):
    assert answer(state_dir, b"GET", target).status == 404


def test_a_value_beyond_the_bound_is_500_and_not_sent(state_dir):
    reply = answer(state_dir, b"GET", f"{BASE}/machinefeatures/huge".encode())
    assert reply.status == 500 and len(reply.body) < 100


def test_the_listen_setting_wins_else_the_bridges_address():
    options = mjf_options({"state_dir": "/var/lib/vac", "listen": "10.1.2.3:8080"})
    assert listen_address(options, lambda name: pytest.fail("not asked")) == ("10.1.2.3", 8080)
    default = mjf_options({"state_dir": "/var/lib/vac", "listen": None})
    assert (default.bridge, default.port) == ("docker0", 9713)
    assert listen_address(default, {"docker0": "172.17.0.1"}.__getitem__) == ("172.17.0.1", 9713)


def test_no_bridge_says_what_to_do():
    def absent(name):
        raise OSError(errno.ENODEV, "No such device")

    with pytest.raises(OSError, match="no IPv4 address on docker0 .No such device.: is Docker running. "
                                      "Set mjf_http_listen otherwise"):
        listen_address(mjf_options({"state_dir": "/var/lib/vac"}), absent)


@pytest.mark.parametrize("spec", [
    {"state_dir": "relative"}, {}, {"state_dir": "/v", "listen": "docker0:80"},
    {"state_dir": "/v", "listen": "[::1]:80"}, {"state_dir": "/v", "bridge": "a" * 16},
    {"state_dir": "/v", "client_timeout_seconds": 0},
])
def test_a_spec_that_cannot_work_is_refused(spec):
    with pytest.raises(SpecError):
        mjf_options(spec)


class FakeLoop:
    def __init__(self):
        self.reports, self.titles = [], []

    def report(self, state, **detail):
        self.reports.append((state, detail))

    def title(self, text):
        self.titles.append(text)


def test_the_root_hears_the_url_served_or_why_none_is_and_a_retry_binds_later(tmp_path):
    loop = FakeLoop()
    bridge = {}

    def find_address(name):
        if name not in bridge:
            raise OSError(errno.ENODEV, "No such device")
        return bridge[name]

    service = MjfService(loop, MjfOptions(tmp_path, None, "docker0", 0, 5.0), find_address)
    service.bind(now=100.0)
    service.report()
    assert loop.reports == [("failing", {"url": None, "error": "no IPv4 address on docker0 (No such device): "
                                                               "is Docker running? Set mjf_http_listen otherwise"})]
    assert service.next_deadline(100.0) == 110.0
    bridge["docker0"] = "127.0.0.1"
    service.on_pass(105.0)
    assert len(loop.reports) == 1, "nothing new to say before the retry"
    service.on_pass(110.0)
    try:
        state, detail = loop.reports[-1]
        assert state == "serving" and detail["error"] is None
        assert detail["url"].startswith("http://127.0.0.1:") and detail["url"] == service.url
        assert loop.titles[-1] == f"mjf [{service.url}]"
    finally:
        service.close()
