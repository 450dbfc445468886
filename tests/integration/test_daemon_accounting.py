"""A whole vacd on the real engine: what it accounts and decides across its own restarts, and a template bomb.

- a container removed while no vacd runs is accounted up to its last sign
  of life, never past its shutdown time (plus the wall-clock grace), and
  its record says the end was estimated;
- a machinetype that aborted before a restart stays in backoff after it;
- a user_data template whose options multiply fails that machine at once
  (700) without filling the disk, and the factory goes on.
"""

import json
import time

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import create_events  # noqa: F401 (a fixture)
from docker_daemon import GATED_USER_DATA, Machinetype, Site, finish_and_check

from vac.accounting import apel
from vac.machine.userdata import MAX_RENDERED_BYTES

# Waits to be released like the others, touching a heartbeat file meanwhile:
# the sign of life that accounting falls back on if nobody sees it end.
BEATING_USER_DATA = GATED_USER_DATA.replace(
    "while [ ! -e $out/go ]; do sleep 0.1; done",
    "while [ ! -e $out/go ]; do touch $out/heartbeat; sleep 0.2; done")
WALL_LIMIT = 8
WALLCLOCK_GRACE = 1


def record_of(site, uuid):
    return json.loads((site.state_dir / "machines" / uuid / "record.json").read_text())


@pytest.mark.docker
def test_a_container_removed_while_no_vacd_runs_is_not_billed_past_its_shutdown_time(
        tmp_path, factory_label, busybox_image, daemon_factory, docker_client, create_events):  # noqa: F811
    short = Machinetype("short", wallclock=WALL_LIMIT, user_data=BEATING_USER_DATA)
    site = Site(tmp_path, factory_label, busybox_image, [short], processors=1)
    first_daemon = daemon_factory(site.config, log_name="vacd-1.log")
    [machine] = site.wait_running(1, first_daemon)
    shutdown_time = record_of(site, machine.uuid)["shutdown_time"]
    first_daemon.stop()
    assert first_daemon.proc.returncode == 0

    # Nobody enforces the wall limit while no vacd runs: the payload lives on past
    # it, then its container is removed (by an operator, a reboot, a cleanup).
    time.sleep(max(0.0, shutdown_time + 3 - time.time()))
    docker_client.containers.get(machine.container_id).remove(force=True)
    time.sleep(2)
    restarted_at = time.time()

    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    done = site.wait_finished(machine.uuid, daemon)

    record = record_of(site, machine.uuid)
    assert record["end_estimated"] is True
    assert done.ended <= shutdown_time + WALLCLOCK_GRACE < restarted_at
    [text] = [text for text in site.apel_records() if machine.uuid in text]
    [accounted] = apel.parse_records(text)
    assert int(accounted["EndTime"]) <= shutdown_time + WALLCLOCK_GRACE
    assert int(accounted["WallDuration"]) <= WALL_LIMIT + WALLCLOCK_GRACE
    daemon.wait_log(f"machine {machine.uuid}: its end was not observed")
    daemon.wait_log(f"machine {machine.uuid} finalised: ")
    assert ", end estimated" in next(line for line in daemon.text().splitlines()
                                     if f"machine {machine.uuid} finalised: " in line)
    finish_and_check(site, daemon, docker_client, create_events, [first_daemon.text()])


@pytest.mark.docker
def test_an_abort_before_a_restart_keeps_its_machinetype_in_backoff_after_it(
        tmp_path, factory_label, busybox_image, daemon_factory, docker_client, create_events):  # noqa: F811
    backoff = 20
    no_work = Machinetype("no-work", "300 No more work", backoff=backoff)
    site = Site(tmp_path, factory_label, busybox_image, [no_work], processors=1)
    first_daemon = daemon_factory(site.config, log_name="vacd-1.log")
    [aborting] = site.wait_running(1, first_daemon)
    site.release(aborting.uuid)
    aborted = site.wait_finished(aborting.uuid, first_daemon)
    assert aborted.shutdown_code == 300
    first_daemon.wait_log("free slots stay empty: ")
    first_daemon.stop()

    daemon = daemon_factory(site.config, log_name="vacd-2.log")
    daemon.wait_log("last aborts remembered for no-work")
    daemon.wait_log("free slots stay empty: ")
    assert [m.uuid for m in site.machines()] == [aborting.uuid], "nothing starts during the backoff"

    # Once the backoff is over, the machinetype starts again.
    after = site.wait(lambda ms: next((m for m in ms if m.uuid != aborting.uuid), None),
                      "a machine after the backoff", timeout=backoff + 15, daemon=daemon)
    assert after.created >= aborted.ended + backoff
    finish_and_check(site, daemon, docker_client, create_events, [first_daemon.text()])


@pytest.mark.docker
def test_a_template_bomb_fails_its_machine_at_once_and_the_factory_goes_on(
        tmp_path, factory_label, busybox_image, daemon_factory, docker_client, create_events):  # noqa: F811
    # Replaced in turn, each pattern of the template would become 40 × 40 × 40
    # copies of the last value: gigabytes. In one pass it is 40 patterns each,
    # still past the rendered limit, so the machine is refused before any of it exists.
    copies = 40
    template = "#!/bin/sh\n" + "##user_data_option_a##\n" * (MAX_RENDERED_BYTES // (copies * 22) + 1)
    bomb = Machinetype("bomb", user_data=template, backoff=1000, options=(
        "user_data_option_a = " + "##user_data_option_b##" * copies,
        "user_data_option_b = " + "##user_data_option_c##" * copies,
        "user_data_option_c = " + "x" * 1000))
    gate = Machinetype("gate")
    site = Site(tmp_path, factory_label, busybox_image, [bomb, gate], processors=2)
    daemon = daemon_factory(site.config)

    failed = site.wait(lambda ms: next((m for m in ms if m.machinetype == "bomb" and m.finished), None),
                       "the bomb machine finalised", daemon=daemon)
    assert failed.shutdown_code == 700 and failed.started is None
    daemon.wait_log("the rendered user_data would be more than the limit")
    assert not (site.state_dir / "machines" / failed.uuid / "user_data").exists()
    written = sum(path.stat().st_size for path in site.state_dir.rglob("*") if path.is_file())
    assert written < 4 * len(template), f"{written} bytes in the state directory"
    # Its slot and the other go on: the bomb is in backoff, gate fills both.
    running = site.wait_running(2, daemon)
    assert sorted(m.machinetype for m in running) == ["gate", "gate"]
    finish_and_check(site, daemon, docker_client, create_events, [])
