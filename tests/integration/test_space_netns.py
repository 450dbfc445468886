"""Three vacds and a Vac 03.01 factory, each in a network namespace of its own, as a site runs a space.

Each factory has its own address on a bridge (veth pairs into a hub
namespace) and answers VacQuery on UDP 995. Asserted: every query type is
answered by every vacd, kept by a client using Vac's own query logic and
read by the other vacds (`vac space`, `vac machines --space`); a factory
that stops answering shows as silent on the others; hostile and oversized
datagrams change nothing. With real busybox machines on the shared Docker
engine (each vacd its own factory name and container label): with shares 1:1
and one factory full of alpha the others start beta until the space is within
one machine of the shares; a real machine's "300 No more work" on factory 1
holds alpha back on factories 2 and 3 after one round, until backoff_seconds
have passed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from docker_daemon import Machinetype, Site, containers
from vac import cli

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
SUBNET = "10.99.0"
CONFIG = """
[settings]
vac_space = {space}
factory_name = {name}
factories = . {factories}
udp_timeout_seconds = 1
total_processors = 2
heartbeat_timeout_seconds = 20
draining = yes
state_dir = {state_dir}
hs06_per_processor = 10

[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = 1
backoff_seconds = 600

[machinetype beta]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = beta.user_data
target_share = 1
"""


def run(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def netns_usable():
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"vacprobe{uuid.uuid4().hex[:6]}"
    try:
        run("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"ip netns add fails here: {error}"
    run("ip", "netns", "del", probe)
    return None


@pytest.fixture
def space_netns():
    """A hub namespace with a bridge, and four namespaces on it at SUBNET.1 to .4: their names."""
    why = netns_usable()
    if why is not None:
        if os.environ.get("VAC_REQUIRE_NETNS"):
            pytest.fail(why)
        pytest.skip(why)
    prefix = f"vs{uuid.uuid4().hex[:6]}"
    hub, names = f"{prefix}-hub", [f"{prefix}-f{i}" for i in range(1, 5)]
    made = []
    try:
        for name in [hub, *names]:
            run("ip", "netns", "add", name)
            made.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", hub, "addr", "add", f"{SUBNET}.254/24", "dev", "br0")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            run("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"vf{i}", "netns", hub)
            run("ip", "-n", name, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            run("ip", "-n", name, "link", "set", "eth0", "up")
            run("ip", "-n", hub, "link", "set", f"vf{i}", "master", "br0")
            run("ip", "-n", hub, "link", "set", f"vf{i}", "up")
        yield hub, names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class Factory:
    """A vacd in its namespace, with its control socket and log."""

    def __init__(self, namespace, directory, number, space, peers):
        self.name = f"f{number}.vac-netns.example.org"
        self.address = f"{SUBNET}.{number}"
        self.socket = os.path.join(directory, f"f{number}.sock")
        self.log_path = os.path.join(directory, f"f{number}.log")
        config = os.path.join(directory, f"f{number}.conf")
        with open(config, "w") as handle:
            handle.write(CONFIG.format(space=space, name=self.name, factories=" ".join(peers),
                                       state_dir=os.path.join(directory, f"state-f{number}")))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "vac.daemon", "--config", config,
             "--socket", self.socket], stdout=self.log, stderr=subprocess.STDOUT, cwd=CHECKOUT)

    def text(self):
        with open(self.log_path) as handle:
            return handle.read()

    def wait_log(self, needle, timeout=20):
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, f"{needle!r}:\n{self.text()}"
            time.sleep(0.1)

    def vac(self, *argv):
        done = subprocess.run([sys.executable, "-m", "vac.cli", "--socket", self.socket, *argv, "--json"],
                              capture_output=True, text=True, timeout=60, cwd=CHECKOUT)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.log.close()


def in_namespace(namespace, *argv, timeout=60):
    return subprocess.run(["ip", "netns", "exec", namespace, sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=HERE)


def test_a_space_of_namespaced_factories_on_port_995(space_netns):
    hub, namespaces = space_netns
    space = f"s{uuid.uuid4().hex[:8]}.vac-netns.example.org"
    directory = tempfile.mkdtemp(prefix="vac-netns-", dir="/tmp")
    everyone = [f"{SUBNET}.{i}" for i in range(1, 5)]
    vac_peer = subprocess.Popen(
        ["ip", "netns", "exec", namespaces[3], sys.executable, "vac_space_peers.py", "serve", space,
         "f4.vac-netns.example.org", f"{SUBNET}.4:995", "alpha=4", "gamma=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE)
    factories = []
    try:
        assert vac_peer.stdout.readline().strip() == "serving"
        for number in (1, 2, 3):
            factories.append(Factory(namespaces[number - 1], directory, number, space,
                                     [address for address in everyone if address != f"{SUBNET}.{number}"]))
        for factory in factories:
            factory.wait_log("vacquery: answering on 0.0.0.0:995")

        # From the hub, Vac's own client keeps every answer of every vacd, on port 995.
        for factory in factories:
            deadline = time.monotonic() + 20
            while True:
                asked = in_namespace(hub, "vac_space_peers.py", "ask", space, factory.name, f"{factory.address}:995")
                kept = json.loads(asked.stdout) if asked.returncode == 0 else {}
                if kept and [len(kept[kind]) for kind in ("machinetypes_query", "machines_query",
                                                          "factory_query")] == [2, 2, 1]:
                    break
                assert time.monotonic() < deadline, asked.stdout + asked.stderr
                time.sleep(0.5)
            assert kept["factory_query"]["factory"]["max_processors"] == 2

        # Each vacd reads the others and the Vac factory: four lines in vac space, nobody silent.
        for factory in factories:
            view = factory.vac("space", "--fresh")
            rows = {row["factory"]: row for row in view["factories"]}
            assert len(rows) == 4 and view["silent"] == [], view
            assert rows[f"{SUBNET}.4"]["machines"] == {"alpha": 4, "gamma": 2}
            assert rows[f"{SUBNET}.4"]["processors_total"] == 8
            machines = factory.vac("machines", "--space")["machines"]
            assert len(machines) == 2 + 2 + 2 + 2

        # Hostile and oversized datagrams, from the hub to every vacd, change nothing.
        hostile = in_namespace(hub, "-c", HOSTILE_SENDER, space, *[f.address for f in factories])
        assert hostile.returncode == 0, hostile.stderr
        for factory in factories:
            assert factory.proc.poll() is None
            factory.wait_log(f"vacquery: dropped an answer from {SUBNET}.254")
            view = factory.vac("space", "--fresh")
            assert len(view["factories"]) == 4 and view["silent"] == []

        # A factory that stops answering shows as silent on the others, with why.
        factories[2].stop()
        for factory in factories[:2]:
            view = factory.vac("space", "--fresh")
            assert [quiet["factory"] for quiet in view["silent"]] == [f"{SUBNET}.3"]
            assert view["silent"][0]["reason"].startswith("no answer within")
    finally:
        for factory in factories:
            factory.stop()
        vac_peer.kill()
        vac_peer.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


# Sends each vacd at port 995 garbage, oversized datagrams, answers nobody asked
# for, answers with hostile fields, and a flood of queries of every kind.
HOSTILE_SENDER = r"""
import json, socket, sys
space, addresses = sys.argv[1], sys.argv[2:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
answer = {"message_type": "machinetype_status", "space": space, "factory": "evil.example.org", "cookie": "c" * 64,
          "num_machinetypes": 1, "machinetype": "alpha", "running_hs06": 1e300}
datagrams = [b"\x00\xff" * 100, b"{" * 5000, b"x" * 60000, json.dumps([1] * 3000).encode(),
             json.dumps(answer).encode(), json.dumps(dict(answer, running_hs06=5.0)).encode(),
             json.dumps(dict(answer, message_type="factory_status", max_processors=-1)).encode(),
             json.dumps(dict(answer, message_type="machine_status", num_machines=10**9)).encode()]
datagrams += [json.dumps({"message_type": kind, "space": space, "cookie": "c"}).encode()
              for kind in ("machinetypes_query", "machines_query", "factory_query")] * 200
for address in addresses:
    for datagram in datagrams:
        try:
            sock.sendto(datagram, (address, 995))
        except OSError:
            pass
"""


# Three vacds in their namespaces running real busybox machines on the shared
# Docker engine: each its own factory name, hence its own container label.

class SiteFactory:
    """A vacd in its namespace running a docker_daemon.Site: its machines are real containers."""

    def __init__(self, namespace, site, directory, number):
        self.site = site
        self.socket = os.path.join(directory, f"f{number}.sock")
        self.log_path = os.path.join(directory, f"f{number}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "vac.daemon", "--config", str(site.config),
             "--state-dir", str(site.state_dir), "--socket", self.socket],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=CHECKOUT)

    def text(self):
        with open(self.log_path) as handle:
            return handle.read()

    def wait_log(self, needle, count=1, timeout=20):
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            assert self.proc.poll() is None and time.monotonic() < deadline, f"{needle!r}:\n{self.text()[-8000:]}"
            time.sleep(0.1)

    def vac(self, *argv):
        return Factory.vac(self, *argv)

    def set_draining(self, draining):
        """Drain or undrain by rewriting the configuration, and wait until the vacd has applied it."""
        applied = self.text().count("configuration applied")
        self.site.write_config(draining=draining)
        self.wait_log("configuration applied", count=applied + 1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def docker_space(space_netns, tmp_path, docker_client, busybox_image):
    """start(number, machinetypes, processors, draining): a SiteFactory at SUBNET.number in one space.

    Every vacd is stopped and every container of its factory removed afterwards, pass or fail.
    """
    _hub, namespaces = space_netns
    tag = uuid.uuid4().hex[:6]
    space = f"s{tag}.vac-netns.example.org"
    directory = tempfile.mkdtemp(prefix="vac-netns-", dir="/tmp")
    started = []

    def start(number, machinetypes, processors=2, draining=False):
        peers = " ".join(f"{SUBNET}.{i}" for i in (1, 2, 3) if i != number)
        site = Site(tmp_path / f"f{number}", f"f{number}-{tag}.vac-netns.example.org", busybox_image, machinetypes,
                    processors=processors, space=space,
                    extra_settings=f"factories = . {peers}\nudp_timeout_seconds = 1\n")
        site.write_config(draining=draining)
        factory = SiteFactory(namespaces[number - 1], site, directory, number)
        started.append(factory)
        factory.wait_log("vacquery: answering on 0.0.0.0:995")
        return factory

    try:
        yield start
    finally:
        for factory in started:
            factory.stop()
        for factory in started:
            for container in containers(docker_client, factory.site.factory):
                container.remove(force=True, v=True)
        shutil.rmtree(directory, ignore_errors=True)


def space_hs06(factory):
    """Machinetype -> HS06 the whole space runs, as a fresh round of `factory` finds it (1 processor = 10 HS06)."""
    view = factory.vac("space", "--fresh")
    assert view["silent"] == [], view
    total = {}
    for row in view["factories"]:
        for machinetype, machines in row["machines"].items():
            total[machinetype] = total.get(machinetype, 0) + 10.0 * machines
    return view, total


@pytest.mark.docker
def test_with_one_factory_full_of_alpha_the_others_start_beta_until_the_space_meets_the_shares(docker_space):
    alpha, beta = Machinetype("alpha", share=1), Machinetype("beta", share=1)
    f1 = docker_space(1, [alpha])
    f1.site.wait_running(2, f1)
    # Full of alpha; then the space's shares, 1:1, are its shares too.
    applied = f1.text().count("configuration applied")
    f1.site.write_config([alpha, beta])
    f1.wait_log("configuration applied", count=applied + 1)

    others = [docker_space(number, [alpha, beta], draining=True) for number in (2, 3)]
    for factory in others:
        view, hs06 = space_hs06(factory)
        assert hs06 == {"alpha": 20.0}, view
    for factory in others:
        factory.set_draining(False)
    for factory in others:
        started = factory.site.wait_running(2, factory)
        assert [m.machinetype for m in started] == ["beta", "beta"], started

    # Six machines of 10 HS06 at 1:1: each type within one machine of 30 HS06.
    for factory in [f1, *others]:
        view, hs06 = space_hs06(factory)
        assert sum(hs06.values()) == 60.0 and all(abs(hs06.get(t, 0) - 30.0) <= 10.0 for t in ("alpha", "beta")), view
        assert hs06 == {"alpha": 20.0, "beta": 40.0}, view
    assert [m.machinetype for m in f1.site.machines()] == ["alpha", "alpha"]


@pytest.mark.docker
def test_an_abort_on_factory_1_holds_the_type_back_on_factories_2_and_3_until_its_backoff_ends(docker_space):
    backoff = 20
    aborting = Machinetype("alpha", message="300 No more work", backoff=backoff)
    f1 = docker_space(1, [aborting], processors=1)
    alpha, beta = Machinetype("alpha", backoff=backoff), Machinetype("beta", backoff=backoff)
    others = [docker_space(number, [alpha, beta], draining=True) for number in (2, 3)]

    [machine] = f1.site.wait_running(1, f1)
    f1.site.release(machine.uuid)
    aborted = f1.site.wait_finished(machine.uuid, f1)
    assert aborted.shutdown_code == 300
    backoff_end = aborted.ended + backoff

    # One round later factories 2 and 3 hold alpha back until the abort's backoff_seconds have passed.
    for factory in others:
        view = factory.vac("space", "--fresh")
        [row] = [row for row in view["factories"] if row["factory"] == f"{SUBNET}.1"]
        assert row["last_abort"]["machinetype"] == "alpha" and row["last_abort"]["message"] == "300 No more work"
        kinds = factory.vac("machinetypes")
        assert kinds["alpha"]["backoff_until"] == pytest.approx(backoff_end, abs=1.5), kinds
        assert kinds["beta"]["backoff_until"] is None
    # Free slots meanwhile start only beta, though alpha's score is the lower one after the first.
    for factory in others:
        factory.set_draining(False)
    for factory in others:
        started = factory.site.wait_running(2, factory)
        assert [m.machinetype for m in started] == ["beta", "beta"], started
        assert all(m.created < backoff_end for m in started), (started, backoff_end)
    # Factory 1 holds alpha back too: nothing more started there before the backoff ended.
    early = [m for m in f1.site.machines() if m.uuid != machine.uuid and m.created < backoff_end]
    assert early == [], (early, backoff_end, f1.text()[-6000:])

    # After the backoff a freed slot starts alpha again.
    time.sleep(max(0.0, backoff_end + 0.5 - time.time()))
    for factory in others:
        first = factory.site.machines()[0]
        factory.site.release(first.uuid)
    for factory in others:
        resumed = factory.site.wait(lambda machines: [m for m in machines if m.machinetype == "alpha"],
                                    "an alpha machine after the backoff", daemon=factory)
        assert all(m.created >= backoff_end for m in resumed), (resumed, backoff_end)
