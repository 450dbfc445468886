"""The reaper's sweep against the real engine and a real state directory."""

import os
import threading
import time

import docker
import psutil
import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import Machinetype, Site, titles
from vac.accounting.apel import FinishedMachine, write_job_record
from vac.config.load import load_configuration
from vac.machine.layout import create_machine_directory
from vac.machine.prepare import MachineTerms, write_terms
from vac.machine.record import MachineRecord, is_finished, mark_finished, write_record
from vac.runtimes.docker import DockerRuntime
from vac.supervisor.scheduler import Placement
from vac.supervisor.machine_spec import machine_spec
from vac.vocabulary.live_set import ORPHAN_GRACE_FLOOR_SECONDS
from vac.workers import reaper
from vac.workers.reaper_rules import LiveSet, SlotView

UUIDS = ["0000000%d-1111-4222-8333-444444444444" % n for n in range(4)]


def make_machine(state_dir, factory, slot, uuid, started_at, fizzle=60, days=3):
    """A machine directory with terms and a running record, as a slot worker leaves it."""
    conf = state_dir.parent / f"vac-{uuid}.conf"
    conf.write_text(f"""[settings]
vac_space = reaper.example.com
factory_name = {factory}
total_processors = 8
state_dir = {state_dir}

[machinetype kind]
machine_model = docker
root_image = docker://busybox:latest
user_data = kind.user_data
target_share = 1
fizzle_seconds = {fizzle}
machines_dir_days = {days}
""")
    config = load_configuration([str(conf)])
    spec = machine_spec(uuid=uuid, slot=slot, factory_name=factory,
                        machine_name=f"m-{slot}", settings=config.settings,
                        machinetype=config.machinetypes["kind"],
                        placement=Placement("kind", 1, int(started_at) + 86400, slot, True),
                        placed_at=started_at)
    paths = create_machine_directory(state_dir, uuid)
    write_terms(paths, MachineTerms.from_spec(spec))
    write_record(paths, MachineRecord(
        machine_uuid=uuid, slot=slot, machine_name=f"m-{slot}", machinetype="kind",
        machine_model="docker", processors=1, created=started_at,
        shutdown_time=int(started_at) + 86400, state="running", started=started_at))
    return paths


def run_container(docker_client, image, factory, slot, uuid, command=("sleep", "1000")):
    return docker_client.containers.run(
        image, list(command), detach=True, init=True,
        labels={"vac.factory": factory, "vac.slot": str(slot), "vac.machine": uuid})


def apel_records(state_dir):
    archive = state_dir / "apel-archive"
    return [p for p in archive.rglob("*") if p.is_file()] if archive.exists() else []


@pytest.mark.docker
def test_orphans_are_finalised_once_and_removed_but_owned_ones_stay(
        docker_client, busybox_image, factory_label, tmp_state_dir):
    long_ago = time.time() - 3600
    outside = make_machine(tmp_state_dir, factory_label, 7, UUIDS[0], long_ago)
    held = make_machine(tmp_state_dir, factory_label, 0, UUIDS[1], long_ago)
    run_container(docker_client, busybox_image, factory_label, 7, UUIDS[0])
    held_container = run_container(docker_client, busybox_image, factory_label, 0, UUIDS[1])
    adopting = run_container(docker_client, busybox_image, factory_label, 1, UUIDS[2])
    unrecorded = run_container(docker_client, busybox_image, factory_label, 2, UUIDS[3],
                               command=("true",))
    live = LiveSet(time.time(), (SlotView(0, "running", UUIDS[1]), SlotView(1, "adopting", None),
                                 SlotView(2, "idle", None)))
    runtime = DockerRuntime(timeout=30)
    try:
        finished, removed = reaper.sweep(runtime, factory_label, tmp_state_dir, live, slots=3,
                                         grace_seconds=0)
        again, _ = reaper.sweep(runtime, factory_label, tmp_state_dir, live, slots=3,
                                grace_seconds=0)
    finally:
        runtime.close()
    assert [f.uuid for f in finished] == [UUIDS[0]]
    assert finished[0].code == 100, "a running orphan is ended with the factory's message"
    assert again == [], "finalised exactly once"
    assert removed == 0
    assert is_finished(outside) and not is_finished(held)
    assert len(apel_records(tmp_state_dir)) == 1
    left = {c.labels["vac.machine"] for c in docker_client.containers.list(
        all=True, filters={"label": f"vac.factory={factory_label}"})}
    assert left == {UUIDS[1], UUIDS[2]}, "the held and the adopting slots' containers stay"
    assert held_container.id and adopting.id and unrecorded.id


@pytest.mark.docker
def test_young_orphans_wait_for_the_grace_period(docker_client, busybox_image, factory_label,
                                                 tmp_state_dir):
    run_container(docker_client, busybox_image, factory_label, 5, UUIDS[0])
    runtime = DockerRuntime(timeout=30)
    try:
        finished, _ = reaper.sweep(runtime, factory_label, tmp_state_dir, LiveSet(time.time(), ()),
                                   slots=2, grace_seconds=600)
    finally:
        runtime.close()
    assert finished == []
    assert len(docker_client.containers.list(
        filters={"label": f"vac.factory={factory_label}"})) == 1


@pytest.mark.docker
def test_a_container_started_after_the_live_set_was_made_stays(docker_client, busybox_image,
                                                               factory_label, tmp_state_dir):
    made_at = time.time()
    # The slot is idle in that live set: it started the machine just after the root looked.
    container = run_container(docker_client, busybox_image, factory_label, 0, UUIDS[0])
    live = LiveSet(made_at, (SlotView(0, "idle", None),))

    def left():
        return [c.id for c in docker_client.containers.list(
            all=True, filters={"label": f"vac.factory={factory_label}"})]

    runtime = DockerRuntime(timeout=30)
    try:
        reaper.sweep(runtime, factory_label, tmp_state_dir, live, slots=1, grace_seconds=0)
        assert left() == [container.id]
        # A live set made after its start that still shows the slot idle does condemn it.
        reaper.sweep(runtime, factory_label, tmp_state_dir,
                     LiveSet(time.time(), (SlotView(0, "idle", None),)), slots=1, grace_seconds=0)
        assert left() == []
    finally:
        runtime.close()


@pytest.mark.docker
def test_without_a_fresh_live_set_directories_expire_and_orphans_wait(
        docker_client, busybox_image, factory_label, tmp_state_dir):
    now = time.time()
    old = make_machine(tmp_state_dir, factory_label, 0, UUIDS[0], now - 10 * 86400, days=3)
    mark_finished(old, now - 5 * 86400)
    os.utime(old.finished_marker, (now - 5 * 86400, now - 5 * 86400))
    run_container(docker_client, busybox_image, factory_label, 7, UUIDS[1])
    stale = LiveSet(now - 3600, ())
    runtime = DockerRuntime(timeout=30)
    try:
        for live in (None, stale):
            finished, removed = reaper.sweep(runtime, factory_label, tmp_state_dir, live, slots=1,
                                             grace_seconds=0)
            assert finished is None, "no container is judged without a fresh live set"
    finally:
        runtime.close()
    assert not old.root.exists(), "the expired directory went all the same"
    assert len(docker_client.containers.list(
        all=True, filters={"label": f"vac.factory={factory_label}"})) == 1


def test_expired_machine_directories_are_removed(tmp_state_dir):
    now = time.time()
    old = make_machine(tmp_state_dir, "f.example.com", 0, UUIDS[0], now - 10 * 86400, days=3)
    recent = make_machine(tmp_state_dir, "f.example.com", 1, UUIDS[1], now - 86400, days=3)
    running = make_machine(tmp_state_dir, "f.example.com", 2, UUIDS[2], now - 10 * 86400, days=3)
    for paths, ended in ((old, now - 5 * 86400), (recent, now - 3600)):
        mark_finished(paths, ended)
        os.utime(paths.finished_marker, (ended, ended))
    assert reaper.remove_expired(tmp_state_dir, now) == 1
    assert not old.root.exists()
    assert recent.root.exists() and running.root.exists()


class SlotKiller(threading.Thread):
    """SIGKILLs every worker of one slot as soon as its title shows, until the root parks it FATAL.

    Killed before it can report being idle, the slot never settles from the first kill on:
    the root's record of it stays 'worker gone' (or 'adopting') for good.
    """

    def __init__(self, daemon, slot):
        super().__init__(daemon=True)
        self.daemon_under_test, self.slot = daemon, slot
        self.kills = []            # (wall-clock time, pid)
        self.fatal = threading.Event()

    def run(self):
        prefix = f"vacd: slot {self.slot:02d} "
        fatal_line = f"slot-{self.slot:02d} failed to start"
        deadline = time.monotonic() + FATAL_WITHIN_SECONDS
        killed = set()
        while time.monotonic() < deadline and self.daemon_under_test.proc.poll() is None:
            for child in psutil.Process(self.daemon_under_test.proc.pid).children():
                try:
                    if child.pid not in killed and " ".join(child.cmdline()).startswith(prefix):
                        child.kill()
                        killed.add(child.pid)
                        self.kills.append((time.time(), child.pid))
                except psutil.NoSuchProcess:
                    pass
            if fatal_line in self.daemon_under_test.text():
                self.fatal.set()
                return
            time.sleep(0.01)


# Six failed starts make a slot FATAL; the backoffs between them add up to 31 s.
FATAL_WITHIN_SECONDS = 60
REAPER_CONF = """[settings]
slots = 2
reaper_interval_seconds = 1
orphan_grace_seconds = {grace}
"""


def reaper_title(daemon):
    return next((t for t in titles(daemon.proc.pid) if t.startswith("vacd: reaper")), None)


@pytest.mark.docker
def test_with_a_slot_fatal_a_young_machine_stays_and_old_directories_expire(
        tmp_path, factory_label, daemon_factory, docker_client, busybox_image):  # noqa: F811
    """Issue 9: one slot never settles (here: every worker killed at once, then FATAL) while
    another starts a machine. The reaper, with the shortest orphan_grace_seconds allowed and a
    sweep every second, must not remove that healthy machine once it is older than the grace;
    and machine directories must still expire long after the slot went bad."""
    grace = ORPHAN_GRACE_FLOOR_SECONDS
    # One processor, two slots: slot 00 gets the machine, slot 01 is the one that goes bad.
    site = Site(tmp_path, factory_label, busybox_image, [Machinetype("gate")], processors=1)
    site.write_config(draining=True)
    extra = tmp_path / "reaper.conf"
    extra.write_text(REAPER_CONF.format(grace=grace))
    daemon = daemon_factory(site.config, extra_args=("--config", str(extra)))
    daemon.wait_log("supervisor running")
    wait_for(lambda: "last sweep: 0 orphans" in (reaper_title(daemon) or ""),
             "a sweep on a live set of settled slots", daemon)

    killer = SlotKiller(daemon, 1)
    killer.start()
    wait_for(lambda: killer.kills, "slot 01's worker killed", daemon)
    unsettled_since = killer.kills[0][0]
    applied = daemon.text().count("configuration applied")
    site.write_config(draining=False)
    daemon.wait_log("configuration applied", count=applied + 1)
    machine, = site.wait_running(1, daemon)
    assert machine.slot == 0

    assert killer.fatal.wait(FATAL_WITHIN_SECONDS), daemon.text()[-4000:]
    # Past the grace, with a few sweeps to spare: the machine is old enough to be judged.
    time.sleep(max(0.0, machine.started + grace + 5 - time.time()))
    assert container_status(docker_client, machine.container_id) == "running", \
        "the reaper must leave the healthy machine alone"
    assert not site.machine(machine.uuid).finished
    assert "belongs to no slot" not in daemon.text()
    assert "last sweep: 0 orphans" in reaper_title(daemon), "it did judge the containers"

    # The slot has been bad for a minute: directories expire all the same.
    time.sleep(max(0.0, unsettled_since + 61 - time.time()))
    now = time.time()
    old = make_machine(site.state_dir, factory_label, 1, UUIDS[0], now - 10 * 86400, days=3)
    mark_finished(old, now - 5 * 86400)
    os.utime(old.finished_marker, (now - 5 * 86400, now - 5 * 86400))
    wait_for(lambda: not old.root.exists(), "the expired directory removed", daemon)
    assert f"reaper: removed machine directory {old.root}" in daemon.text()
    assert container_status(docker_client, machine.container_id) == "running"

    site.release(machine.uuid)
    site.wait_finished(machine.uuid, daemon)
    daemon.stop()
    assert daemon.proc.returncode == 0


def container_status(docker_client, container_id):
    try:
        return docker_client.containers.get(container_id).status
    except docker.errors.NotFound:
        return "removed"


def wait_for(predicate, what, daemon, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\n{daemon.text()[-4000:]}"
        time.sleep(0.1)


APEL_CONF = """[settings]
reaper_interval_seconds = 1
gocdb_sitename = UKI-REAPER-TEST
"""


@pytest.mark.docker
def test_vacd_s_reaper_queues_the_month_s_apel_sync_record_once(
        tmp_path, factory_label, daemon_factory, busybox_image):  # noqa: F811
    site = Site(tmp_path, factory_label, busybox_image, [Machinetype("gate")], processors=1)
    site.write_config(draining=True)
    (tmp_path / "apel.conf").write_text(APEL_CONF)
    now = time.time()
    for n in range(2):
        machine_dir = tmp_path / f"finished-{n}"
        machine_dir.mkdir()
        write_job_record(site.state_dir, machine_dir, FinishedMachine(
            machine_uuid=UUIDS[n], machinetype="gate", space="crash.vac.example", factory=factory_label,
            processors=1, start_time=int(now) - 7200, end_time=int(now) - 60, cpu_seconds=10,
            mb_per_processor=128, hs06_per_processor=10.0, gocdb_sitename="UKI-REAPER-TEST"), 60)
    daemon = daemon_factory(site.config, extra_args=("--config", str(tmp_path / "apel.conf")))

    def sync_messages():
        return [path.read_text() for path in (site.state_dir / "apel-outgoing").rglob("*")
                if path.is_file() and path.read_text().startswith("APEL-sync-message: v0.1")]
    wait_for(sync_messages, "the daily APEL sync message", daemon)
    ended = time.gmtime(int(now) - 60)
    [text] = sync_messages()
    assert (f"Site: UKI-REAPER-TEST\nSubmitHost: crash.vac.example/vac-{factory_label}\n"
            f"NumberOfJobs: 2\nMonth: {ended.tm_mon}\nYear: {ended.tm_year}\n%%\n") in text
    wait_for(lambda: "last sweep" in (reaper_title(daemon) or ""), "the reaper sweeping", daemon)
    time.sleep(3)   # three more sweeps: the message is due again only in a day
    assert len(sync_messages()) == 1
    assert "reaper (pid" not in daemon.text(), "the reaper never failed and restarted"
