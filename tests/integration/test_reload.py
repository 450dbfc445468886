"""Reloading the configuration of a real vacd: file edits, SIGHUP, a broken file."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import Machinetype, Site

CONFIG = """
[settings]
vac_space = reload.example.com
total_processors = 2
heartbeat_timeout_seconds = 20

{machinetypes}
"""

MACHINETYPE = """
[machinetype {name}]
machine_model = docker
root_image = docker://vac-nonexistent:latest
user_data = {name}.user_data
target_share = {share}
"""


def write_config(path, shares):
    body = "".join(MACHINETYPE.format(name=n, share=s) for n, s in shares.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(CONFIG.format(machinetypes=body))
    os.rename(tmp, path)  # as editors and configuration managers do


def test_file_edits_are_applied_without_touching_the_slots(tmp_path, daemon_factory):
    config = tmp_path / "vac.conf"
    write_config(config, {"alpha": 1, "beta": 1})
    daemon = daemon_factory(config)
    daemon.wait_log("supervisor running")
    slots = daemon.slot_pids()
    assert len(slots) == 2

    write_config(config, {"alpha": 5, "beta": 1})
    daemon.wait_log("changed ['alpha'], removed none")
    write_config(config, {"alpha": 5, "beta": 1, "gamma": 2})
    daemon.wait_log("added ['gamma'], changed none, removed none")
    write_config(config, {"alpha": 5, "gamma": 2})
    daemon.wait_log("added none, changed none, removed ['beta']")
    assert daemon.slot_pids() == slots, "slot workers kept running through every reload"

    config.write_text("[settings\nbroken")
    daemon.wait_log("reload refused, running configuration kept")
    os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_log("reload refused, running configuration kept", count=2)
    write_config(config, {"alpha": 5, "gamma": 2})
    daemon.wait_log("configuration applied", count=4)
    assert daemon.slot_pids() == slots
    daemon.stop()
    assert daemon.proc.returncode == 0


def test_a_bad_configuration_refuses_to_start_with_every_problem(tmp_path):
    config = tmp_path / "vac.conf"
    config.write_text("[settings]\ntotal_processors = many\n\n"
                      "[machinetype x]\nmachine_model = vm-raw\n")
    result = subprocess.run([sys.executable, "-m", "vac.daemon", "--config", str(config),
                             "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "total_processors" in result.stderr and "many" in result.stderr
    assert "vac_space" in result.stderr
    assert "vm-raw" in result.stderr
    assert "not starting" in result.stderr
    assert not (tmp_path / "state").exists()


def keeper_title(daemon):
    import psutil
    for child in psutil.Process(daemon.proc.pid).children():
        title = " ".join(child.cmdline())
        if "cvmfs-keeper" in title:
            return title.strip()
    return None


def test_a_reload_changes_the_repositories_the_keeper_watches(tmp_path, daemon_factory):
    config = tmp_path / "vac.conf"
    needs = "\ncvmfs_repositories = {}\n"
    config.write_text(CONFIG.format(machinetypes=MACHINETYPE.format(name="alpha", share=1)
                                    + needs.format("a.vac-test.example.org")))
    daemon = daemon_factory(config)
    daemon.wait_log("cvmfs repository a.vac-test.example.org: stat: cannot")

    config.write_text(CONFIG.format(machinetypes=MACHINETYPE.format(name="alpha", share=1)
                                    + needs.format("b.vac-test.example.org a.vac-test.example.org")))
    daemon.wait_log("cvmfs repository b.vac-test.example.org: watching")
    daemon.wait_log("cvmfs repository b.vac-test.example.org: stat: cannot")
    assert keeper_title(daemon) == ("vacd: cvmfs-keeper [0 ok, 2 failing: a.vac-test.example.org, "
                                    "b.vac-test.example.org]")

    config.write_text(CONFIG.format(machinetypes=MACHINETYPE.format(name="alpha", share=1)))
    daemon.wait_log("cvmfs repository a.vac-test.example.org: no longer needed")
    daemon.wait_log("cvmfs repository b.vac-test.example.org: no longer needed")
    assert keeper_title(daemon) == "vacd: cvmfs-keeper [0 of 0 repos ok]"
    daemon.stop()
    assert daemon.proc.returncode == 0


@pytest.mark.docker
def test_a_state_dir_reload_is_named_for_a_restart_and_placements_do_not_loop(
        tmp_path, factory_label, daemon_factory, docker_client, busybox_image):  # noqa: F811
    site = Site(tmp_path, factory_label, busybox_image, [Machinetype("gate")], processors=1)
    site.write_config(draining=True)
    # The state directory comes from a file here, not from --state-dir, so a reload can change it.
    where = tmp_path / "where.conf"
    where.write_text(f"[settings]\nstate_dir = {site.state_dir}\n")
    daemon = daemon_factory(site.config, extra_args=("--config", str(where)),
                            state_dir_option=False)
    daemon.wait_log("supervisor running")
    elsewhere = tmp_path / "elsewhere"

    where.write_text(f"[settings]\nstate_dir = {elsewhere}\n")
    daemon.wait_log("restart needed for: state_dir;")
    status = json.loads(vac(daemon, "status", "--json").stdout)
    assert status["restart_needed"] == ["state_dir"]
    assert "restart needed for:  state_dir" in vac(daemon, "status").stdout

    applied = daemon.text().count("configuration applied")
    site.write_config(draining=False)
    daemon.wait_log("configuration applied", count=applied + 1)
    machine, = site.wait_running(1, daemon)
    # Long enough for a refused placement to come round many times (it took milliseconds).
    time.sleep(2)
    log = daemon.text()
    assert log.count("slot 00: placing gate machine") == 1, log[-4000:]
    assert "placement refused" not in log
    assert not elsewhere.exists(), "nothing uses the new state_dir before a restart"
    assert json.loads(vac(daemon, "status", "--json").stdout)["restart_needed"] == ["state_dir"]

    # Put back, it needs no restart any more.
    where.write_text(f"[settings]\nstate_dir = {site.state_dir}\n")
    daemon.wait_log("configuration applied", count=applied + 2)
    assert json.loads(vac(daemon, "status", "--json").stdout)["restart_needed"] == []
    site.release(machine.uuid)
    site.wait_finished(machine.uuid, daemon)
    daemon.stop()
    assert daemon.proc.returncode == 0


def vac(daemon, *argv):
    """The `vac` command against this daemon's control socket."""
    socket_path = daemon.log_path.parent / "control.sock"
    result = subprocess.run([sys.executable, "-m", "vac.cli", "--socket", str(socket_path), *argv],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result
