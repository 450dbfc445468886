"""vacd run by the shipped vacd.service under a real systemd (252, Debian 12) booted in a container:
start and READY, `systemctl status`, the journal's priorities, reload, the watchdog on a hung root,
a crashed root, restart and stop with running machines, and a configuration vacd refuses at every start.

systemd_host.py boots systemd as PID 1 in a container of the host's engine
(the flags and why, per cgroup layout, are in its docstring) from a
debootstrap'ed Debian 12 root cached by systemd_root.py, installs vac from
this checkout into /opt/vac and the unit unchanged into /etc/systemd/system.
vacd there drives the host's engine through its socket, so its machines are
containers of the host, beside the systemd container, not in it.

The unit's own settings are tested as they are, except two time spans
shortened by a drop-in of the test that needs it, where the unit's would
only make the test slower: WatchdogSec=5 for the hung root (the unit's 60 s
would take a minute), and RestartSec=1 for the start limit (the unit's 10 s
would take the five failed starts 50 s); the burst and interval are the unit's.

Run time: about 75 s on the 2-CPU development machine with the root cached
(5 s of it to boot systemd and install vac; the watchdog and crash test
alone takes 30 s, two RestartSec=10 among them); the first run on a machine
builds the root first (about 2 minutes more, mostly debootstrap).
Where this engine cannot boot systemd (or no root can be built), the tests
skip with the reason, in CI too; once systemd booted, every check counts.
"""

import re
import signal
import time

import pytest

from docker_daemon import Machinetype, containers, create_events  # noqa: F401 (a fixture)
from systemd_host import UNIT
from systemd_site import short_id, systemd_factory  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

ALPHA = Machinetype("alpha")
WATCHDOG_SECONDS = 5
# From the watchdog's timeout to systemd acting on it, on a loaded 2-CPU machine.
WATCHDOG_MARGIN_SECONDS = 3
STATUS_TEXT = re.compile(r"\d+ slots: \d+ running, \d+ idle, \d+ backoff.*")


def running_ids(docker_client, factory):
    """Ids of the factory's containers that are running."""
    return sorted(container.id for container in containers(docker_client, factory) if container.status == "running")


def test_start_returns_once_vacd_is_ready_and_status_and_journal_show_it(
        systemd_host, systemd_factory, docker_client, create_events):  # noqa: F811
    factory = systemd_factory([ALPHA])
    host = systemd_host
    # The units as installed, with vacd where the install steps put it: nothing to say.
    verified = host.run("systemd-analyze", "verify", UNIT, "vac.slice")
    assert verified.stdout + verified.stderr == ""
    assert factory.start() < 30
    shown = host.show(UNIT, "ActiveState", "SubState", "MainPID", "StatusText",
                      "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    # Type=notify: active only when the main process said READY=1, a Python start-up after its exec.
    assert int(shown["ActiveEnterTimestampMonotonic"]) - int(shown["ExecMainStartTimestampMonotonic"]) > 50_000
    # READY=1 came once the control socket listened: vac answers as soon as systemctl returns.
    status = host.vac_status()
    assert status["state"] == "running" and status["summary"].startswith("2 slots")
    assert STATUS_TEXT.fullmatch(shown["StatusText"]), shown["StatusText"]

    machines = factory.wait_running(2)
    text = host.systemctl("status", UNIT, "--no-pager", "--lines=0", check=False).stdout
    line = re.search(r'Status: "(.*)"', text)
    assert line and STATUS_TEXT.fullmatch(line.group(1)), text
    assert f"Main PID: {shown['MainPID']} (vacd: superviso" in text

    entries = factory.journal.entries()
    main_pid = shown["MainPID"]
    starting = [e for e in entries if "vacd 0.1" in e["MESSAGE"] and " starting: " in e["MESSAGE"]]
    assert [(e["_PID"], e["PRIORITY"]) for e in starting] == [(main_pid, "6")]
    for machine in machines:
        placed = [e for e in entries if f"machine {machine.uuid}: started container" in e["MESSAGE"]]
        assert [e["PRIORITY"] for e in placed] == ["6"], placed
    # NotifyAccess=main: nothing but the main process notified (systemd would say it dropped it).
    assert not [e for e in entries if "reception only permitted for main PID" in e["MESSAGE"]]
    # --check-config --quiet: the start's check put nothing of the configuration in the journal.
    assert not [e for e in entries if e["MESSAGE"].startswith("[settings]")]
    factory.finish(docker_client, create_events)


def test_systemctl_reload_rereads_the_file_and_a_refused_one_is_an_error_in_the_journal(
        systemd_host, systemd_factory, docker_client, create_events):  # noqa: F811
    host = systemd_host
    factory = systemd_factory([ALPHA])
    factory.start()
    main_pid = factory.main_pid()
    assert sorted(host.vac_status()["machinetypes"]) == ["alpha"]

    factory.site.write_config([ALPHA, Machinetype("beta")])
    factory.reload()
    assert sorted(host.vac_status()["machinetypes"]) == ["alpha", "beta"]
    assert factory.main_pid() == main_pid, "a reload is not a restart"

    config = factory.site.config
    config.write_text(config.read_text().replace("total_processors = 2", "total_processors = many"))
    host.systemctl("reload", UNIT)
    factory.journal.wait_for("reload refused, running configuration kept")
    # As a site looks for errors (journalctl 252 finds none with --after-cursor and a priority at once).
    errors = host.run("journalctl", "--no-pager", "--output=cat", "--priority=err", f"--unit={UNIT}").stdout
    assert "reload refused, running configuration kept: /etc/vac.conf [settings] total_processors" in errors
    status = host.vac_status()
    assert sorted(status["machinetypes"]) == ["alpha", "beta"] and status["config_problems"]

    factory.site.write_config()
    factory.reload()
    assert host.vac_status()["config_problems"] == []
    factory.finish(docker_client, create_events)


def test_a_hung_root_is_killed_by_the_watchdog_a_crashed_one_restarted_and_each_new_vacd_adopts_every_container(
        systemd_host, systemd_factory, docker_client, create_events):  # noqa: F811
    host = systemd_host
    host.drop_in("watchdog", f"[Service]\nWatchdogSec={WATCHDOG_SECONDS}\n")
    factory = systemd_factory([ALPHA])
    factory.start()
    machines = factory.wait_running(2)
    ids = running_ids(docker_client, factory.site.factory)
    assert sorted(m.container_id for m in machines) == ids
    hung_pid = factory.main_pid()
    tree = set(host.vacd_processes())
    restart_sec = float(host.show(UNIT, "RestartUSec")["RestartUSec"].removesuffix("s"))

    host.run("kill", f"-{signal.SIGSTOP.name}", str(hung_pid))
    stopped_at = time.monotonic()
    factory.journal.wait_for("Watchdog timeout", timeout=WATCHDOG_SECONDS + WATCHDOG_MARGIN_SECONDS)
    assert time.monotonic() - stopped_at <= WATCHDOG_SECONDS + WATCHDOG_MARGIN_SECONDS
    factory.journal.wait_for(f"Killing process {hung_pid} (vacd: superviso) with signal SIGABRT")
    # PYTHONFAULTHANDLER: where the root was, in the journal.
    factory.journal.wait_for("Fatal Python error: Aborted")
    factory.journal.wait_for("Failed with result 'watchdog'")

    # Restart=on-failure, after RestartSec: a new root, none of the old tree, the same containers.
    factory.journal.wait_for("Scheduled restart job", timeout=restart_sec + 10)
    factory.wait_adopted(machines)
    shown = host.show(UNIT, "ActiveState", "MainPID", "NRestarts")
    assert (shown["ActiveState"], shown["NRestarts"]) == ("active", "1")
    assert int(shown["MainPID"]) != hung_pid
    assert not tree & set(host.vacd_processes()), "a process of the hung tree survived"
    assert running_ids(docker_client, factory.site.factory) == ids

    # A crash: the root dies at once. The same restart, and the rest of its tree killed.
    crashed_pid = int(shown["MainPID"])
    tree = set(host.vacd_processes())
    host.run("kill", f"-{signal.SIGKILL.name}", str(crashed_pid))
    factory.journal.wait_for("Main process exited, code=killed, status=9/KILL")
    factory.journal.wait_for("Scheduled restart job, restart counter is at 2", timeout=restart_sec + 10)
    factory.wait_adopted(machines, after_count=2)
    shown = host.show(UNIT, "ActiveState", "MainPID", "NRestarts")
    assert (shown["ActiveState"], shown["NRestarts"]) == ("active", "2")
    assert not tree & set(host.vacd_processes()), "a process of the crashed tree survived"
    assert running_ids(docker_client, factory.site.factory) == ids
    factory.finish(docker_client, create_events)


def test_restart_and_stop_end_the_whole_tree_and_no_container_and_the_next_vacd_adopts_each(
        systemd_host, systemd_factory, docker_client, create_events):  # noqa: F811
    host = systemd_host
    factory = systemd_factory([ALPHA])
    factory.start()
    machines = factory.wait_running(2)
    ids = running_ids(docker_client, factory.site.factory)
    tree = set(host.vacd_processes())
    assert factory.main_pid() in tree and len(tree) >= 7, "the root, four helpers and two slots"

    host.systemctl("restart", UNIT)
    factory.wait_adopted(machines)
    assert not tree & set(host.vacd_processes()), "a process of the old tree survived the restart"
    assert running_ids(docker_client, factory.site.factory) == ids

    stop_started = time.monotonic()
    host.systemctl("stop", UNIT)
    stop_seconds = time.monotonic() - stop_started
    shown = host.show(UNIT, "ActiveState", "Result")
    assert (shown["ActiveState"], shown["Result"]) == ("inactive", "success")
    assert host.unit_pids() == [] and host.vacd_processes() == {}
    # KillMode=mixed: the ordered stop ended the tree; systemd had nothing left to kill.
    assert not [e for e in factory.journal.entries() if "with signal SIGKILL" in e["MESSAGE"]]
    assert stop_seconds < 15
    assert running_ids(docker_client, factory.site.factory) == ids
    assert not any(m.finished for m in factory.site.machines())

    factory.start()
    factory.wait_adopted(machines, after_count=2)
    assert [m.uuid for m in factory.site.machines()] == [m.uuid for m in machines], "no second machine per slot"
    factory.finish(docker_client, create_events)


def test_a_configuration_vacd_refuses_fails_each_start_until_the_start_limit_leaves_the_unit_failed(
        systemd_host, systemd_factory):  # noqa: F811
    host = systemd_host
    host.drop_in("restart-sooner", "[Service]\nRestartSec=1\n")
    factory = systemd_factory([ALPHA])
    config = factory.site.config
    config.write_text(config.read_text().replace("total_processors = 2", "total_processors = many"))
    limits = host.show(UNIT, "StartLimitBurst", "StartLimitIntervalUSec")
    burst = int(limits["StartLimitBurst"])
    assert (burst, limits["StartLimitIntervalUSec"]) == (5, "10min")

    result = host.systemctl("start", UNIT, check=False)
    assert result.returncode != 0 and "control process exited with error code" in result.stderr
    factory.journal.wait_for("Start request repeated too quickly", timeout=60)
    time.sleep(3)  # three more RestartSec: nothing more is tried
    shown = host.show(UNIT, "ActiveState", "NRestarts")
    assert (shown["ActiveState"], shown["NRestarts"]) == ("failed", str(burst))
    problems = [e for e in factory.journal.entries() if "total_processors = 'many'" in e["MESSAGE"]]
    assert len(problems) == burst, "one check, and so one problem, per start"
    assert {e["PRIORITY"] for e in problems} == {"3"}, "the problems are errors in the journal"
    assert not [e for e in factory.journal.entries() if " starting: " in e["MESSAGE"]], \
        "the check refused the file before vacd ran"

    # Fixing the file is not enough: a site must reset the unit.
    factory.site.write_config()
    refused = host.systemctl("start", UNIT, check=False)
    assert refused.returncode != 0
    factory.journal.wait_for("Start request repeated too quickly", count=2)
    host.systemctl("reset-failed", UNIT)
    factory.start()
    assert host.show(UNIT, "ActiveState")["ActiveState"] == "active"
