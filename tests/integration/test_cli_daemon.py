"""The `vac` command against a real vacd: tables, JSON, Nagios lines, watch, and its exit codes.

The machinetypes have a zero share, so nothing starts and no Docker work is
needed: what the tests see is the factory's own state changing under `vac`.
"""

import contextlib
import grp
import io
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import pytest

from accounts import ACCOUNT_TOOL_DEADLINE, account_tool, run_as

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from vac import cli


CONFIG = """[settings]
vac_space = cli.vac.example
factory_name = {factory}
total_processors = 2
{extra}
[machinetype alpha]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = alpha.user_data
target_share = 0

[machinetype beta]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = beta.user_data
target_share = 0
"""


@pytest.fixture
def socket_path():
    """A control socket path that is short (AF_UNIX) and that any account may reach."""
    directory = tempfile.mkdtemp(prefix="vac-cli-", dir="/tmp")
    os.chmod(directory, 0o755)
    yield os.path.join(directory, "control.sock")
    shutil.rmtree(directory, ignore_errors=True)


def start_vacd(daemon_factory, tmp_path, socket_path, extra=""):  # noqa: F811
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(factory=f"cli-{uuid.uuid4().hex[:8]}.vac.example",
                                    extra=extra))
    daemon = daemon_factory(config, extra_args=("--socket", socket_path))
    daemon.wait_log("supervisor running")
    return daemon


def vac(socket_path, *argv, timeout=30):
    """Run the `vac` command as a user would; the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "vac.cli", "--socket", socket_path, *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=_checkout())


def _checkout():
    return os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))


def test_status_slots_and_json(daemon_factory, tmp_path, socket_path):  # noqa: F811
    start_vacd(daemon_factory, tmp_path, socket_path)
    status = vac(socket_path, "status")
    assert status.returncode == 0, status.stderr
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in status.stdout.splitlines())
    assert fields["state"].startswith("running, up 0:00:")
    assert fields["slots"].startswith("2 slots: 0 running")
    assert fields["processors"] == "0 of 2 in use"
    assert fields["machinetypes"] == "alpha (0 running), beta (0 running)"

    as_json = json.loads(vac(socket_path, "status", "--json").stdout)
    assert as_json["slots"]["slots"] == 2
    assert sorted(as_json["machinetypes"]) == ["alpha", "beta"]

    slots = vac(socket_path, "slots")
    assert slots.returncode == 0
    lines = slots.stdout.splitlines()
    assert lines[0].split() == ["SLOT", "STATE", "MACHINETYPE", "MACHINE", "ELAPSED",
                                "WALL-LEFT", "RESTARTS", "LAST"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert [s["slot"] for s in json.loads(vac(socket_path, "slots", "--json").stdout)] == [0, 1]

    one = vac(socket_path, "slot", "1")
    assert one.returncode == 0 and one.stdout.startswith("slot:")
    missing = vac(socket_path, "slot", "7")
    assert missing.returncode == 1
    assert missing.stderr == "vac: no slot 7; this factory has slots 0 to 1\n"


def test_pause_and_resume_change_the_machinetypes(daemon_factory, tmp_path, socket_path):  # noqa: F811
    start_vacd(daemon_factory, tmp_path, socket_path)
    paused = vac(socket_path, "pause", "beta")
    assert (paused.returncode, paused.stdout) == (0, "paused machinetypes: beta\n")
    rows = {line.split()[0]: line.split() for line in
            vac(socket_path, "machinetypes").stdout.splitlines()}
    assert rows["NAME"][5] == "PAUSED"
    assert (rows["alpha"][5], rows["beta"][5]) == ("no", "yes")
    assert json.loads(vac(socket_path, "machinetypes", "--json").stdout)["beta"]["paused"] is True

    assert vac(socket_path, "resume", "beta").stdout == "paused machinetypes: none\n"
    assert json.loads(vac(socket_path, "machinetypes", "--json").stdout)["beta"]["paused"] is False
    unknown = vac(socket_path, "pause", "gamma")
    assert (unknown.returncode, unknown.stderr) == (1, "vac: no machinetype 'gamma'\n")


def test_check_is_ok_then_warns_while_draining(daemon_factory, tmp_path, socket_path):  # noqa: F811
    start_vacd(daemon_factory, tmp_path, socket_path)
    check = vac(socket_path, "check")
    assert check.returncode == 0, check.stdout
    assert re.fullmatch(
        r"VAC OK - 2 slots: 0 running, \d idle, \d backoff; 0/2 processors used \| "
        r"slots=2;;; running=0;;; idle=\d;;; backoff=\d;;; fatal=0;;; "
        r"processors_used=0;;;0;2 processors_total=2;;; running_alpha=0;;; running_beta=0;;;\n",
        check.stdout)

    assert vac(socket_path, "drain", "--deadline", "3600").stdout == \
        "draining: no new machines start; running machines end in 1:00:00\n"
    check = vac(socket_path, "check")
    assert check.returncode == 1
    assert check.stdout.startswith("VAC WARNING - draining; 2 slots:")

    assert vac(socket_path, "undrain").returncode == 0
    # Idle since start counts once the threshold is below the uptime.
    idle = vac(socket_path, "check", "--idle-warning", "0")
    assert idle.returncode == 1
    assert idle.stdout.startswith("VAC WARNING - no machine running for 0:00:")


class Lines:
    """A child's output read line by line, each wait bounded."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buffer = b""
        self.lines = []

    def wait_for(self, pattern, timeout):
        """The first line (seen so far or arriving within timeout) matching pattern, or None."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
                *complete, self.buffer = self.buffer.split(b"\n")
                self.lines += [line.decode() for line in complete]


def kill_slot_worker(daemon, slot):
    """SIGKILL this daemon's worker of `slot` (found among its own children)."""
    for child in psutil.Process(daemon.proc.pid).children():
        if f"slot {slot:02d}" in " ".join(child.cmdline()):
            child.kill()
            return child.pid
    raise AssertionError(f"no worker of slot {slot} under vacd {daemon.proc.pid}")


def test_watch_prints_events_and_ends_cleanly(daemon_factory, tmp_path, socket_path):  # noqa: F811
    daemon = start_vacd(daemon_factory, tmp_path, socket_path)
    command = [sys.executable, "-m", "vac.cli", "--socket", socket_path, "watch"]
    plain = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=_checkout())
    as_json = subprocess.Popen(command + ["--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=_checkout())
    try:
        plain_lines, json_lines = Lines(plain.stdout), Lines(as_json.stdout)
        # The watchers subscribe at their own pace: kill again until both saw a worker die.
        for attempt in range(5):
            pid = kill_slot_worker(daemon, 0)
            if (plain_lines.wait_for(rf"^\d\d:\d\d:\d\d exited slot-00 pid={pid} ", 3)
                    and json_lines.wait_for(rf'"event":"exited","pid":{pid},', 3)):
                break
            daemon.wait_log("slot-00 started", count=attempt + 2)
        else:
            raise AssertionError(f"no exited event: {plain_lines.lines} {json_lines.lines}")
        assert plain_lines.wait_for(r"^\d\d:\d\d:\d\d started slot-00 pid=\d+$", 10)
        events = [json.loads(line) for line in json_lines.lines]
        assert any(e["event"] == "exited" and e["child"] == "slot-00"
                   and e["status"] == "killed by SIGKILL" for e in events)

        # Ctrl-C ends a watch quietly with 0.
        plain.send_signal(signal.SIGINT)
        assert plain.wait(10) == 0
        assert plain.stderr.read() == b""

        # vacd stopping ends the other: its last events, then exit 3 with a message.
        assert vac(socket_path, "shutdown").stdout == \
            "vacd is stopping; running containers are left running\n"
        assert json_lines.wait_for(r'"event":"stopped"', 30)
        assert as_json.wait(10) == 3
        assert as_json.stderr.read() == b"vac: vacd closed the connection: the watch has ended\n"
    finally:
        for process in (plain, as_json):
            if process.poll() is None:
                process.kill()
                process.wait(5)
    daemon.proc.wait(30)

    # Now nothing answers: exit 3 and say so; the Nagios check says UNKNOWN.
    gone = vac(socket_path, "status")
    assert gone.returncode == 3
    assert gone.stderr == f"vac: vacd is not running ({socket_path}: No such file or directory)\n"
    check = vac(socket_path, "check")
    assert (check.returncode, check.stdout) == (
        3, f"VAC UNKNOWN - vacd is not running ({socket_path}: No such file or directory)\n")


# Other accounts.

@pytest.fixture
def account(request):
    """A throwaway account with its own group, and a read-only group it is not in."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating a throwaway account needs root and useradd")
    suffix = uuid.uuid4().hex[:6]
    user, readonly = f"vaccli-{suffix}", f"vaccliro-{suffix}"

    def remove():
        subprocess.run(["userdel", user], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)
        for group in (user, readonly):
            subprocess.run(["groupdel", group], capture_output=True, timeout=ACCOUNT_TOOL_DEADLINE)

    request.addfinalizer(remove)
    account_tool("groupadd", readonly)
    account_tool("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                 user)
    entry = pwd.getpwnam(user)
    return {"uid": entry.pw_uid, "gid": entry.pw_gid, "readonly": readonly,
            "readonly_gid": grp.getgrnam(readonly).gr_gid}


def vac_as(uid, gid, groups, argv, timeout=30):
    """Run `vac` as uid/gid/groups in a forked child: (exit code, output)."""

    def work():
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = cli.main(argv)
        return {"code": code, "output": sink.getvalue()}

    outcome = run_as(uid, gid, groups, work, timeout=timeout, what=f"vac {argv} as uid {uid}",
                     # Import everything main() needs while files are still readable.
                     prepare=lambda: cli.build_parser().parse_args(argv))
    if "crash" in outcome:
        return 70, outcome["crash"]
    return outcome["code"], outcome["output"]


def test_access_is_refused_with_exit_4(daemon_factory, tmp_path, socket_path, account):  # noqa: F811
    start_vacd(daemon_factory, tmp_path, socket_path,
               extra=f"readonly_group = {account['readonly']}\n")
    uid, gid = account["uid"], account["gid"]

    # Outside the factory's groups: refused at once, for every command.
    for argv in (["status"], ["drain"], ["watch"]):
        code, output = vac_as(uid, gid, [], ["--socket", socket_path, *argv])
        assert code == 4, output
        assert output == (f"vac: permission denied: uid {uid} is not root and not in the admin "
                          "or read-only group of this factory\n")
    code, output = vac_as(uid, gid, [], ["--socket", socket_path, "check"])
    assert code == 3 and output.startswith("VAC UNKNOWN - permission denied: uid ")

    # In the read-only group: reading works, changing is refused.
    reader = [account["readonly_gid"]]
    code, output = vac_as(uid, gid, reader, ["--socket", socket_path, "machinetypes"])
    assert code == 0 and output.startswith("NAME"), output
    code, output = vac_as(uid, gid, reader, ["--socket", socket_path, "drain"])
    assert (code, output) == (4, f"vac: permission denied: drain changes the factory; uid {uid} "
                                 "may only read\n")
    assert json.loads(vac(socket_path, "status", "--json").stdout)["draining"] is False

    # A socket directory the account cannot enter: permission denied too, not "not running".
    os.chmod(os.path.dirname(socket_path), 0o700)
    code, output = vac_as(uid, gid, reader, ["--socket", socket_path, "status"])
    assert (code, output) == (4, f"vac: permission denied: cannot connect to {socket_path} "
                                 "(Permission denied)\n")
