"""The shipped systemd unit: systemd accepts it, its settings fit vacd, and a
real vacd speaks sd_notify as Type=notify with NotifyAccess=main expects."""

import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest

from vac.config.load import load_configuration
from vac.daemon import parse_args, tree_settings
from vac.supervisor.build import build_tree
from vac.supervisor.tree import BRUTAL_KILL, Tree

UNIT_PATH = pathlib.Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "vacd.service"
UNIT_NAME = "vacd.service"
# Where the README's install steps put vacd: python3 -m venv /opt/vac && /opt/vac/bin/pip install .
INSTALLED_VACD = "/opt/vac/bin/vacd"
SYSTEM_UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")
# What vacd's stop needs beyond the root's own shutdown budget: reaping, exiting.
STOP_MARGIN_SECONDS = 10

# Each of these gives the unit its own mount namespace, from which systemd lets
# no mount propagate to the host: dockerd would never see a slot's loop or LVM
# scratch mount (systemd.exec(5), MountFlags=).
MOUNT_NAMESPACE_SETTINGS = (
    "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateIPC", "PrivateNetwork",
    "ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "RootDirectory", "RootImage",
    "MountImages", "MountFlags", "MountAPIVFS",
)
# Settings that would break Singularity machines or the scratch devices (see the unit).
BREAKING_SETTINGS = ("NoNewPrivileges", "RestrictSUIDSGID", "ProtectClock", "DeviceAllow",
                     "DevicePolicy", "User", "DynamicUser")

MINIMAL_CONFIG = """
[settings]
vac_space = systemd.example.com
total_processors = 2
heartbeat_timeout_seconds = 20

[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
"""


def systemd_analyze():
    """The systemd-analyze binary; CI must have it, elsewhere its absence skips."""
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is required in CI (Debian package systemd)", pytrace=False)
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def unit_settings(text):
    """(section, key, value) of every setting in a unit file's text."""
    settings, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def executable_paths(text):
    """The programs the unit runs: the first word of each Exec*= line, prefixes removed."""
    return sorted({value.split()[0].lstrip("-@:+!")
                   for _, key, value in unit_settings(text) if key.startswith("Exec")})


def make_root(root, text):
    """A filesystem root for `systemd-analyze verify --root`: systemd's own units,
    vacd where the install steps put it, the host's tools at their paths."""
    for relative in SYSTEM_UNIT_DIRS:
        source = pathlib.Path("/") / relative
        if (source / "sysinit.target").exists():
            shutil.copytree(source, root / relative, symlinks=True)
            break
    else:
        pytest.fail("no systemd unit directory with sysinit.target on this host", pytrace=False)
    for path in executable_paths(text):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path == INSTALLED_VACD:
            # What pip's console script does: run this checkout's vacd.
            target.write_text(f"#!{sys.executable}\nimport sys\nfrom vac.daemon import main\n"
                              "sys.exit(main())\n")
            target.chmod(0o755)
        else:
            assert os.access(path, os.X_OK), f"the unit runs {path}, which this host lacks"
            shutil.copy2(path, target)
    (root / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)


def verify(root, text, debug=False):
    """Install `text` as the unit under `root` and run systemd-analyze verify on it."""
    (root / "etc" / "systemd" / "system" / UNIT_NAME).write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYSTEMD_")}
    if debug:
        env["SYSTEMD_LOG_LEVEL"] = "debug"  # then verify prints its reading of the unit
    return subprocess.run([systemd_analyze(), "verify", "--man=no", f"--root={root}", UNIT_NAME],
                          capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory):
    systemd_analyze()
    root = tmp_path_factory.mktemp("root")
    make_root(root, UNIT_PATH.read_text())
    return root


def test_systemd_analyze_verify_accepts_the_unit(unit_root):
    result = verify(unit_root, UNIT_PATH.read_text())
    # verify exits 0 on an unknown key or a bad value (it ignores them): any
    # message at all is a problem in the unit.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("good, bad", [
    ("Type=notify", "Type=notfy"),
    ("KillMode=mixed", "KillMode=mixd"),
    ("WatchdogSec=60", "WatchdogSec=sixty"),
    ("NotifyAccess=main", "NotifyAcess=main"),
    ("StartLimitBurst=5", "StartLimitBurst=five"),
    (f"ExecStart={INSTALLED_VACD}", f"ExecStart={INSTALLED_VACD}d"),
    ("[Service]", "[Servce]"),
])
def test_systemd_analyze_verify_rejects_a_corrupted_copy(unit_root, good, bad):
    text, replaced = re.subn(rf"^{re.escape(good)}$", bad, UNIT_PATH.read_text(), flags=re.M)
    assert replaced == 1
    result = verify(unit_root, text)
    assert result.returncode != 0 or result.stdout + result.stderr != ""


def systemd_reading(root):
    """The unit as systemd reads it: key -> list of values, from verify's debug dump."""
    result = verify(root, UNIT_PATH.read_text(), debug=True)
    assert result.returncode == 0, result.stderr[-3000:]
    reading, in_unit, exec_key = {}, False, None
    for line in result.stdout.splitlines():
        if line.startswith("\t-> Unit "):
            in_unit = line.strip() == f"-> Unit {UNIT_NAME}:"
            continue
        if not in_unit:
            continue
        if line.startswith("\t\t-> "):
            exec_key = line.strip()[3:].rstrip(":")
            continue
        if line.startswith("\t\t\tCommand Line: ") and exec_key:
            reading.setdefault(exec_key, []).append(line.strip()[len("Command Line: "):])
            continue
        if line.startswith("\t\t") and not line.startswith("\t\t\t") and ": " in line:
            key, _, value = line.strip().partition(": ")
            reading.setdefault(key, []).append(value)
    assert reading.get("Fragment Path"), f"no dump of {UNIT_NAME} in:\n{result.stdout[:3000]}"
    return reading


def seconds(timespan):
    """A systemd time span as it prints one ('1min 30s', '45s', '100ms') in seconds."""
    units = {"h": 3600, "min": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|ms|us|s)", timespan)
    assert parts and "".join(n + u for n, u in parts) == timespan.replace(" ", ""), timespan
    return sum(float(number) * units[unit] for number, unit in parts)


def shutdown_budget(config):
    """The root's longest stop: each phase waits for its slowest child's budget."""
    tree = Tree(build_tree(tree_settings(config)))
    total = 0.0
    for phase in tree.shutdown_phases():
        budgets = [tree.leaves[child].spec.shutdown for child in phase]
        total += max(0.0 if budget == BRUTAL_KILL else budget for budget in budgets)
    return total


def test_systemd_reads_the_settings_vacd_relies_on(unit_root, tmp_path):
    reading = systemd_reading(unit_root)
    one = {key: values[0] for key, values in reading.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["KillMode"] == "mixed" and one["SendSIGKILL"] == "yes"
    assert one["Restart"] == "on-failure"
    assert seconds(one["WatchdogSec"]) > 0
    # One OOM-killed child is the tree's to restart, not a reason to stop the factory.
    assert one["OOMPolicy"] == "continue"

    config_file = tmp_path / "vac.conf"
    config_file.write_text(MINIMAL_CONFIG)
    config = load_configuration([str(config_file)])
    budget = shutdown_budget(config)
    assert budget > 0
    assert seconds(one["TimeoutStopSec"]) >= budget + STOP_MARGIN_SECONDS, \
        f"systemd would SIGKILL the tree before its {budget:g} s ordered stop ends"

    # vacd's defaults lie in the directories systemd creates for it.
    assert reading["StateDirectory"] == ["vac"] and reading["RuntimeDirectory"] == ["vac"]
    assert config.settings.state_dir == "/var/lib/vac"
    assert os.path.dirname(config.settings.control_socket) == "/run/vac"

    # vacd accepts the command lines systemd runs, from where the install steps put it.
    (pre,), (start,) = reading["ExecStartPre"], reading["ExecStart"]
    assert pre.split()[0] == start.split()[0] == INSTALLED_VACD
    pre_args = parse_args(pre.split()[1:])
    # Only the problems reach the journal, not the whole configuration at every start.
    assert pre_args.check_config and pre_args.quiet
    start_args = parse_args(start.split()[1:])
    assert not start_args.check_config and start_args.config is None
    assert reading["ExecReload"] == ['/bin/kill -HUP "\\$MAINPID"']


def test_the_unit_leaves_mounts_devices_and_setuid_to_the_host(unit_root):
    reading = systemd_reading(unit_root)
    for key in ("PrivateTmp", "PrivateDevices", "PrivateNetwork", "ProtectSystem", "ProtectHome",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "MountAPIVFS", "RestrictSUIDSGID"):
        assert reading[key] == ["no"], key
    assert reading["ProtectProc"] == ["default"] and reading["ProcSubset"] == ["all"]
    assert reading["RootDirectory"] == ["/"] and reading["DevicePolicy"] == ["auto"]
    # Settings the dump may not show: read them from the unit itself.
    keys = {key for _, key, _ in unit_settings(UNIT_PATH.read_text())}
    assert keys.isdisjoint(MOUNT_NAMESPACE_SETTINGS + BREAKING_SETTINGS), \
        sorted(keys & set(MOUNT_NAMESPACE_SETTINGS + BREAKING_SETTINGS))


def test_restarts_stop_at_the_start_limit():
    # systemd takes the start limit from [Unit]; and a burst that cannot happen
    # within the interval would restart a broken vacd for ever.
    settings = unit_settings(UNIT_PATH.read_text())
    limits = {key: (section, value) for section, key, value in settings if key.startswith("StartLimit")}
    assert limits["StartLimitIntervalSec"][0] == limits["StartLimitBurst"][0] == "Unit"
    interval, burst = seconds(limits["StartLimitIntervalSec"][1] + "s"), int(limits["StartLimitBurst"][1])
    restart_sec = next(value for _, key, value in settings if key == "RestartSec")
    # Otherwise the restarts could never add up to the limit within its interval.
    assert burst * seconds(restart_sec + "s") < interval


# ---------------------------------------------------------------- sd_notify


class NotifySocket:
    """The AF_UNIX datagram socket systemd would listen on, with sender credentials."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.received = []  # (sender pid, KEY=VALUE lines, monotonic arrival time)

    def receive(self, timeout):
        """One datagram within `timeout` s, or None."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pids = [struct.unpack("3i", payload)[0] for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        assert len(pids) == 1, "every datagram carries its sender's credentials"
        message = (pids[0], data.decode().split("\n"), time.monotonic())
        self.received.append(message)
        return message

    def wait_for(self, predicate, what, timeout=20):
        """Receive until predicate(received) holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} within {timeout} s; received {self.received}"
            self.receive(left)

    def keys(self):
        """The KEY= of each line of each datagram, in order of arrival."""
        return [line.split("=")[0] for _, lines, _ in self.received for line in lines]

    def close(self):
        self.sock.close()


def count(received, assignment):
    return sum(assignment in lines for _, lines, _ in received)


def after_last(received, assignment):
    """The datagrams after the last one holding `assignment`."""
    index = max(i for i, (_, lines, _) in enumerate(received) if assignment in lines)
    return received[index + 1:]


# systemd sets WATCHDOG_PID to the main pid, known only after the fork: set it
# in the started process, then exec vacd, which keeps the pid.
LAUNCH_WITH_WATCHDOG_PID = (
    "import os, sys; os.environ['WATCHDOG_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, '-m', 'vac.daemon', *sys.argv[1:]])")


WATCHDOG_SECONDS = 2.0


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def vacd_under_notify(tmp_path, notify_socket):
    """A real vacd, started as systemd starts it with Type=notify and WatchdogSec=2."""
    config = tmp_path / "vac.conf"
    config.write_text(MINIMAL_CONFIG)
    log = open(tmp_path / "vacd.log", "w")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
               WATCHDOG_USEC=str(int(WATCHDOG_SECONDS * 1e6)))
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_WITH_WATCHDOG_PID, "--config", str(config),
         "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "control.sock")],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    yield proc
    leftovers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for process in leftovers:
        if process.is_running():
            process.kill()
    log.close()


def test_vacd_notifies_ready_watchdog_reload_and_stop_from_its_main_pid(
        vacd_under_notify, notify_socket):
    vacd, sock = vacd_under_notify, notify_socket
    sock.wait_for(lambda r: count(r, "READY=1") and count(after_last(r, "READY=1"), "WATCHDOG=1") >= 2,
                  "READY=1 and two WATCHDOG=1 after it")
    ready = next(lines for _, lines, _ in sock.received if "READY=1" in lines)
    assert any(re.fullmatch(r"STATUS=2 slots: \d+ running, \d+ idle, \d+ backoff.*", line)
               for line in ready), ready
    # The tree is up: the children that must never notify exist.
    children = psutil.Process(vacd.pid).children()
    assert len(children) >= 5, "two slot workers and three helpers"

    vacd.send_signal(signal.SIGHUP)
    sock.wait_for(lambda r: count(r, "RELOADING=1") and count(after_last(r, "RELOADING=1"), "READY=1"),
                  "RELOADING=1 then READY=1")
    sock.wait_for(lambda r: count(after_last(r, "RELOADING=1"), "WATCHDOG=1") >= 1,
                  "WATCHDOG=1 after the reload")

    vacd.send_signal(signal.SIGTERM)
    sock.wait_for(lambda r: count(r, "STOPPING=1"), "STOPPING=1")
    assert vacd.wait(30) == 0, "a clean stop: Restart=on-failure leaves it stopped"
    while sock.receive(0.2) is not None:
        pass

    keys = [key for key in sock.keys() if key != "STATUS"]
    significant = [key for key in keys if key != "WATCHDOG"]
    assert significant == ["READY", "RELOADING", "READY", "STOPPING"], keys
    # Once stopping, systemd has disarmed the watchdog; the root stops petting it.
    assert keys[-1] == "STOPPING"
    # From READY=1 to STOPPING=1 no gap reached WatchdogSec (systemd would have
    # killed vacd), and the pets came at half of it, not once per loop pass.
    times = [t for _, lines, t in sock.received
             if {"READY=1", "WATCHDOG=1", "STOPPING=1"} & set(lines)]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert max(gaps) < WATCHDOG_SECONDS, gaps
    pets = [t for _, lines, t in sock.received if "WATCHDOG=1" in lines]
    assert min(later - earlier for earlier, later in zip(pets, pets[1:])) > WATCHDOG_SECONDS / 2 * 0.9
    # NotifyAccess=main: systemd would drop anything a child sent.
    senders = {pid for pid, _, _ in sock.received}
    assert senders == {vacd.pid}, f"datagrams from {senders}, main pid {vacd.pid}"
    assert set(sock.keys()) <= {"READY", "STATUS", "WATCHDOG", "RELOADING", "STOPPING"}
