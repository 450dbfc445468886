"""Vacuum Pipes in a real vacd: fetched, checked and expanded by the fetcher child from a
local server; the root only takes in checked machinetypes.

Regression tests for documents that took the whole factory down: a lone surrogate
(the root died encoding it, and again on every restart from the cached copy),
`cache_seconds: 0` (a refetch and a re-expansion every second), 16,000
repositories (the keeper crash-looped and the factory sat DEGRADED), a non-ASCII
FQAN (it would have stopped ssmsend's queue), and hundreds of problems.
"""

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import GATED_USER_DATA, Site, assert_accounted_once, containers, drain_and_finish

import vac
from vac.control.commands import STATUS_PROBLEMS_SHOWN
from vac.config.machinetypes import MAX_REPOSITORIES
from vac.config.pipes import SHORTEST_CACHE_SECONDS

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(vac.__file__)))
ENTRY = {"machine_model": "docker", "root_image": "docker://exp:latest",
         "user_data": "https://exp.example.org/user_data", "max_wallclock_seconds": 3600}
CONFIG = """
[settings]
vac_space = pipes.example.com
total_processors = 1
{extra}

[vacuum_pipe exp]
vacuum_pipe_url = {url}
target_share = {share}
"""


class PipeServer:
    """A pipe document served on 127.0.0.1 for any path; `status` and `document` can be changed.

    `body`, when set, is served as it is instead of `document` as JSON (bytes that
    are no JSON at all, a document past the size limit). `paths` counts the
    requests per path.
    """

    def __init__(self):
        self.status = 200
        self.document = {}
        self.body = None
        self.requests = []
        self.paths = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("User-Agent"))
                server.paths[self.path] = server.paths.get(self.path, 0) + 1
                # ensure_ascii: a lone surrogate goes out as the escape \\ud800, as a
                # publisher's JSON library would write it.
                body = json.dumps(server.document).encode() if server.body is None else server.body
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # the fetcher stops reading a document past its size limit

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base}/pipe.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pipe_server():
    server = PipeServer()
    yield server
    server.close()


def write_config(tmp_path, pipe_server, extra="", share=1):
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG.format(url=pipe_server.url, extra=extra, share=share))
    return config


def vac(tmp_path, *argv):
    """`vac --json` as an operator runs it against the test's vacd; the parsed reply."""
    done = subprocess.run([sys.executable, "-m", "vac.cli", "--socket", str(tmp_path / "control.sock"),
                           *argv, "--json"], capture_output=True, text=True, timeout=30, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def age_cached_copies(state_dir, seconds):
    """Make every cached pipe document look fetched `seconds` ago (as after a long stop)."""
    for path in (state_dir / "pipes").glob("*.pipe"):
        header, _, document = path.read_bytes().partition(b"\n")
        meta = json.loads(header)
        meta["fetched_at"] -= seconds
        path.write_bytes(json.dumps(meta).encode() + b"\n" + document)


def fetcher_children(daemon):
    return [p for p in psutil.Process(daemon.proc.pid).children()
            if p.cmdline()[0].startswith("vacd: pipe-fetcher")]


def test_pipe_machinetypes_arrive_through_the_fetcher_and_survive_a_failed_refresh(
        tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 600, "machinetypes": [
        dict(ENTRY, suffix="prod", target_share=3),
        dict(ENTRY, suffix="test", target_share=1),
        dict(ENTRY, suffix="evil", heartbeat_file="../../etc/shadow"),
    ]}
    config = write_config(tmp_path, pipe_server)
    daemon = daemon_factory(config, log_name="vacd-1.log")
    daemon.wait_log("pipe exp: 2 machinetype(s): exp-prod, exp-test")
    assert "exp-evil" in daemon.text() and "heartbeat_file" in daemon.text(), \
        "the hostile entry is skipped with its own message"
    assert pipe_server.requests[0].startswith("vac/")
    assert len(fetcher_children(daemon)) == 1, "fetching happens in its own child, not in the root"
    assert list((tmp_path / "state" / "pipes").iterdir()), "the last good copy is cached"
    daemon.stop()
    assert daemon.proc.returncode == 0

    # An hour later the copy is due for a refresh, and the server fails.
    age_cached_copies(tmp_path / "state", 3600)
    pipe_server.status = 500
    daemon = daemon_factory(config, log_name="vacd-2.log")
    daemon.wait_log("pipe exp: refresh failed", timeout=15)
    daemon.wait_log("pipe exp: 2 machinetype(s): exp-prod, exp-test")
    status = vac(tmp_path, "status")["pipes"]["exp"]
    assert status["stale"] is True and "500" in status["error"]
    assert status["machinetypes"] == ["exp-prod", "exp-test"], "the last good copy is still used"
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_a_reload_expands_the_document_in_hand_again_with_the_new_local_options(
        tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 3600, "machinetypes": [
        dict(ENTRY, suffix="prod", target_share=1)]}
    config = write_config(tmp_path, pipe_server, share=2)
    daemon = daemon_factory(config)
    daemon.wait_log("pipe exp: 1 machinetype(s): exp-prod")
    assert vac(tmp_path, "machinetypes")["exp-prod"]["target_share"] == 2

    write_config(tmp_path, pipe_server, share=5)
    deadline = time.monotonic() + 15
    while vac(tmp_path, "machinetypes")["exp-prod"]["target_share"] != 5:
        assert time.monotonic() < deadline, daemon.text()
        time.sleep(0.2)
    assert len(pipe_server.requests) == 1, "the cached document was expanded again, not refetched"
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_cache_seconds_zero_is_raised_to_the_floor(tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 0, "machinetypes": [dict(ENTRY, suffix="prod")]}
    daemon = daemon_factory(write_config(tmp_path, pipe_server))
    daemon.wait_log("pipe exp: 1 machinetype(s), 1 problem(s); next fetch in")
    [next_fetch] = re.findall(r"next fetch in (\d+) s", daemon.text())
    assert SHORTEST_CACHE_SECONDS - 10 < int(next_fetch) <= SHORTEST_CACHE_SECONDS
    # Before the floor, this document was fetched, expanded and logged again every second.
    time.sleep(4)
    assert len(pipe_server.requests) == 1
    assert daemon.text().count(f"less than vac's floor of {SHORTEST_CACHE_SECONDS} seconds") == 1
    [problem] = vac(tmp_path, "status")["pipes"]["exp"]["problems"]
    assert f"cache_seconds = '0': less than vac's floor of {SHORTEST_CACHE_SECONDS} seconds" in problem
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_sixteen_thousand_repositories_refuse_that_entry_and_the_keeper_goes_on(
        tmp_path, daemon_factory, pipe_server):  # noqa: F811
    many = " ".join(f"r{i}.cern.ch" for i in range(16000))
    pipe_server.document = {"cache_seconds": 3600, "machinetypes": [
        dict(ENTRY, suffix="many", target_share=1, cvmfs_repositories=many),
        dict(ENTRY, suffix="few", target_share=0, cvmfs_repositories="exp.cern.ch grid.cern.ch")]}
    daemon = daemon_factory(write_config(tmp_path, pipe_server))
    daemon.wait_log("pipe exp: 1 machinetype(s): exp-few")
    daemon.wait_log("cvmfs-keeper: asking it to watch exp.cern.ch grid.cern.ch")
    daemon.wait_log("cvmfs repository grid.cern.ch: watching")
    status = vac(tmp_path, "status")
    assert status["degraded"] is False
    assert status["helpers"]["cvmfs-keeper"]["state"] == "running"
    assert status["helpers"]["cvmfs-keeper"]["starts"] == 1, "the keeper never restarted"
    [problem] = status["pipes"]["exp"]["problems"]
    assert f"lists 16000 entries, more than the {MAX_REPOSITORIES} allowed per machinetype" in problem
    assert "machinetype exp-many not created" in problem
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_a_pipe_full_of_problems_gives_a_short_status(tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 3600, "machinetypes": [
        dict(ENTRY, suffix=f"e{i}", max_processors=0, tmp_binds="relative") for i in range(256)]}
    daemon = daemon_factory(write_config(tmp_path, pipe_server))
    daemon.wait_log("pipe exp: 0 machinetype(s): none")
    problems = vac(tmp_path, "status")["pipes"]["exp"]["problems"]
    assert len(problems) == STATUS_PROBLEMS_SHOWN + 1
    assert problems[-1] == f"and {512 - STATUS_PROBLEMS_SHOWN} more"
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_a_non_ascii_fqan_is_refused_from_a_pipe_and_from_the_files(
        tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 3600, "machinetypes": [
        dict(ENTRY, suffix="prod", target_share=1, accounting_fqan="/exp/Role=pilot"),
        dict(ENTRY, suffix="accent", target_share=1, accounting_fqan="/exp/Rôle=pilot"),
        dict(ENTRY, suffix="long", target_share=1, accounting_fqan="/exp/" + "x" * 251)]}
    daemon = daemon_factory(write_config(tmp_path, pipe_server))
    daemon.wait_log("pipe exp: 1 machinetype(s): exp-prod")
    problems = vac(tmp_path, "status")["pipes"]["exp"]["problems"]
    assert any("accounting_fqan" in p and "APEL records take printable ASCII only" in p
               and "exp-accent not created" in p for p in problems), problems
    assert any("accounting_fqan" in p and "longer than 255 characters" in p
               and "exp-long not created" in p for p in problems), problems
    daemon.stop()

    local = tmp_path / "local.conf"
    local.write_text("[settings]\nvac_space = pipes.example.com\n\n[machinetype prod]\n"
                     "machine_model = docker\nroot_image = docker://exp:latest\nuser_data = ud\n"
                     "accounting_fqan = /exp/Rôle=pilot\n", encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "vac.daemon", "--config", str(local),
                              "--check-config"], capture_output=True, text=True, timeout=30,
                             cwd=CHECKOUT)
    assert checked.returncode == 1
    assert "[machinetype prod] accounting_fqan = '/exp/Rôle=pilot': contains 'ô': " \
           "APEL records take printable ASCII only" in checked.stdout + checked.stderr


# On the real engine: the valid entries of a hostile document still start machines.

class PipeSite(Site):
    """A factory whose only machinetypes come from the pipe at `pipe_url`."""

    def __init__(self, tmp_path, factory, image, pipe_url):
        self.pipe_url = pipe_url
        super().__init__(tmp_path, factory, image, [], processors=1)

    def write_config(self, machinetypes=None, draining=False):
        super().write_config(machinetypes, draining)
        files = self.state_dir / "machinetypes" / "exp" / "files"
        files.mkdir(parents=True, exist_ok=True)
        (files / "gated.user_data").write_text(GATED_USER_DATA)
        text = self.config.read_text() + (f"\n[vacuum_pipe exp]\nvacuum_pipe_url = {self.pipe_url}\n"
                                          "target_share = 1\n")
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.rename(tmp, self.config)


@pytest.mark.docker
def test_a_lone_surrogate_in_a_pipe_leaves_the_root_alive_and_the_valid_entries_start(
        tmp_path, factory_label, daemon_factory, pipe_server, busybox_image, docker_client):  # noqa: F811
    gated = {"machine_model": "docker", "root_image": f"docker://{busybox_image}",
             "user_data": "gated.user_data", "max_wallclock_seconds": 300, "fizzle_seconds": 1,
             "user_data_option_message": "200 Work completed"}
    surrogate = "\ud800"
    pipe_server.document = {"cache_seconds": 3600, "machinetypes": [
        dict(gated, suffix="fqan", target_share=1, accounting_fqan=surrogate),
        dict(gated, suffix="dn", target_share=1, image_signing_dn="/CN=" + surrogate),
        dict(gated, suffix="option", target_share=1, user_data_option_x="a" + surrogate),
        dict(gated, suffix="good", target_share=1),
        dict(gated, suffix="group", target_share=0, machinegroup=surrogate),
    ]}
    site = PipeSite(tmp_path, factory_label, busybox_image, pipe_server.url)
    first = daemon_factory(site.config, log_name="vacd-1.log")
    first.wait_log("pipe exp: 2 machinetype(s): exp-good, exp-group")
    [machine] = site.wait_running(1, first)
    assert machine.machinetype == "exp-good"
    status = vac(tmp_path, "status")
    assert status["state"] == "running" and status["slots"]["running"] == 1
    problems = status["pipes"]["exp"]["problems"]
    for suffix in ("fqan", "dn", "option"):
        assert any(f"machinetype exp-{suffix} not created" in p and "lone surrogate" in p
                   and "\\ud800" in p for p in problems), (suffix, problems)
    first.stop()
    assert first.proc.returncode == 0, "the root never died"

    # Restarted on the cached copy (the server gone): vacd starts and adopts the machine.
    pipe_server.close()
    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    daemon.wait_log("pipe exp: 2 machinetype(s): exp-good, exp-group")
    daemon.wait_log(f"slot 00 machine {machine.uuid}: adopted container")
    assert vac(tmp_path, "status")["state"] == "running"
    site.release(machine.uuid)
    done = site.wait_finished(machine.uuid, daemon)
    assert done.shutdown_code == 200
    drain_and_finish(site, daemon, docker_client)
    daemon.stop()
    assert daemon.proc.returncode == 0
    assert containers(docker_client, site.factory) == []
    assert_accounted_once(site, [first.text(), daemon.text()])
