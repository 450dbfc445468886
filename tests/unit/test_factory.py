"""The root's placement logic fed scripted worker reports, with a fake clock."""

import math
import random

import pytest

from vac.config.load import load_configuration
from vac.ipc import messages
from vac.machine.mjf import SHUTDOWN_NOTICE_SECONDS
from vac.supervisor.factory import Factory
from vac.supervisor.helper_handshakes import LOCAL_STATUS_MIN_SECONDS

CONFIG = """
[settings]
vac_space = space.example.com
total_processors = {processors}
{extra}

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 3
max_wallclock_seconds = 3600
backoff_seconds = 100
fizzle_seconds = 60

[machinetype other]
machine_model = docker
root_image = docker://other:latest
user_data = other.user_data
target_share = 1
max_wallclock_seconds = 3600
backoff_seconds = 100
fizzle_seconds = 60
"""


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def config_file(tmp_path, processors=4, extra="", text=CONFIG):
    path = tmp_path / "vac.conf"
    path.write_text(text.format(processors=processors, extra=extra))
    return load_configuration([str(path)])


@pytest.fixture
def clock():
    return Clock()


def make_factory(config, clock):
    return Factory(config, factory_name="f1.example.com", rng=random.Random(1), clock=clock,
                   load_average=lambda: 0.0)


def tick(factory, may_start=True):
    """What the factory sends to slots (the reaper's live set is tested on its own)."""
    return [(child, msg) for child, msg in factory.tick(may_start) if child != "reaper"]


def report_idle(factory, slots):
    for slot in slots:
        factory.on_message(f"slot-{slot:02d}", messages.StateReport(
            child_id=f"slot-{slot:02d}", state="idle", detail={"slot": slot, "machine": None}))


def report_running(factory, slot, machine):
    factory.on_message(f"slot-{slot:02d}", messages.StateReport(
        child_id=f"slot-{slot:02d}", state="running", detail={"slot": slot, "machine": machine}))


def summary(place):
    m = place.machine
    return {"uuid": m["uuid"], "machinetype": m["machinetype"]["name"],
            "processors": m["processors"], "started_at": m["placed_at"],
            "shutdown_at": m["shutdown_at"], "superslot": m["superslot"], "container_id": "c"}


def test_every_idle_slot_gets_a_placement_in_one_tick_by_share(tmp_path, clock):
    factory = make_factory(config_file(tmp_path), clock)
    assert tick(factory) == [], "no worker has reported yet"
    report_idle(factory, range(4))
    sent = tick(factory)
    assert [child for child, _ in sent] == ["slot-00", "slot-01", "slot-02", "slot-03"]
    kinds = sorted(place.machine["machinetype"]["name"] for _, place in sent)
    assert kinds == ["other", "work", "work", "work"], "shares 3:1 over four processors"
    first = sent[0][1].machine
    assert first["machine_name"] == "f1-00.example.com"
    assert first["shutdown_at"] == int(clock.now) + 3600
    assert first["factory"]["vac_space"] == "space.example.com"
    assert first["factory"]["factory_name"] == "f1.example.com"
    assert len({place.machine["uuid"] for _, place in sent}) == 4
    assert tick(factory) == [], "placements in flight are not repeated"


def test_nothing_is_placed_while_starting_is_not_allowed(tmp_path, clock):
    factory = make_factory(config_file(tmp_path), clock)
    report_idle(factory, range(4))
    assert tick(factory, may_start=False) == []
    assert len(tick(factory)) == 4


def test_a_restarting_worker_keeps_its_machine_but_loses_its_unacknowledged_placement(
        tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=2), clock)
    report_idle(factory, [0, 1])
    (_, place0), (_, place1) = tick(factory)
    report_running(factory, 0, summary(place0))
    factory.on_child_exit("slot-00")
    factory.on_child_exit("slot-01")
    assert [m["uuid"] for _, m in factory.table.machines()] == [place0.machine["uuid"]]
    report_idle(factory, [1])
    sent = tick(factory)
    assert [child for child, _ in sent] == ["slot-01"], "slot 0's processor is still taken"


def test_an_abort_backs_the_machinetype_off_and_a_completed_machine_does_not(tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=1), clock)
    report_idle(factory, [0])
    (_, place), = tick(factory)

    def finish(place, code, lived):
        m = place.machine
        report_running(factory, 0, summary(place))
        factory.on_message("slot-00", messages.MachineFinished(
            uuid=m["uuid"], machinetype=m["machinetype"]["name"], started_at=clock.now - lived,
            ended_at=clock.now, code=code, text="", processors=1, cpu_seconds=1.0))
        report_idle(factory, [0])
        (_, nxt), = tick(factory)
        return nxt

    first = place.machine["machinetype"]["name"]
    clock.now += 1000
    nxt = finish(place, 300, lived=1000)
    second = nxt.machine["machinetype"]["name"]
    assert second != first, "300: the first type backs off, the other one starts"
    assert set(factory.backoff()) == {first}
    clock.now += 1000
    third = finish(nxt, 200, lived=1000)
    assert factory.backoff() == {}, "200: no backoff, and the first type's has expired"
    clock.now += 10
    finish(third, None, lived=10)
    assert set(factory.backoff()) == {third.machine["machinetype"]["name"]}, \
        "no message before fizzle_seconds: an abort"


def test_global_shutdown_time_lowers_running_machines_once(tmp_path, clock):
    shutdown = int(clock.now) + 600
    factory = make_factory(config_file(tmp_path, processors=1,
                                       extra=f"shutdown_time = {shutdown}"), clock)
    report_idle(factory, [0])
    assert tick(factory) == [], "min_wallclock 3600 > 600 s left"
    machine = {"uuid": "11111111-2222-4333-8444-555555555555", "machinetype": "work",
               "processors": 1, "started_at": clock.now, "shutdown_at": int(clock.now) + 3600,
               "superslot": 0, "container_id": "c"}
    report_running(factory, 0, machine)
    sent = tick(factory)
    assert sent == [("slot-00", messages.LowerShutdown(uuid=machine["uuid"], shutdown_at=shutdown))]
    assert tick(factory) == []


def test_global_shutdown_time_gives_running_machines_the_announced_notice(tmp_path, clock):
    # A shutdown_time already past (or sooner than grace_secs) ends machines after the notice, not at once.
    factory = make_factory(config_file(tmp_path, processors=2,
                                       extra=f"shutdown_time = {int(clock.now) - 60}"), clock)
    report_idle(factory, [0, 1])
    tick(factory)
    soon = {"uuid": "11111111-2222-4333-8444-555555555551", "machinetype": "work", "processors": 1,
            "started_at": clock.now, "shutdown_at": int(clock.now) + 300, "superslot": 0, "container_id": "c"}
    later = dict(soon, uuid="11111111-2222-4333-8444-555555555552", shutdown_at=int(clock.now) + 3600,
                 superslot=1, container_id="d")
    report_running(factory, 0, soon)
    report_running(factory, 1, later)
    floor = math.ceil(clock.now) + SHUTDOWN_NOTICE_SECONDS
    assert tick(factory) == [("slot-01", messages.LowerShutdown(uuid=later["uuid"], shutdown_at=floor))]


def test_reload_changes_shares_adds_and_removes_without_touching_running(tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=2), clock)
    report_idle(factory, [0, 1])
    (_, place0), (_, place1) = tick(factory)
    report_running(factory, 0, summary(place0))
    report_running(factory, 1, summary(place1))
    running_before = sorted(m["uuid"] for _, m in factory.table.machines())

    text = CONFIG.replace("[machinetype other]", "[machinetype newer]") + """
[machinetype other]
machine_model = docker
root_image = docker://other:latest
user_data = other.user_data
target_share = 0
"""
    changes = factory.apply_config(config_file(tmp_path, processors=2, text=text.replace(
        "target_share = 3", "target_share = 5")))
    assert changes == {"added": ["newer"], "changed": ["other", "work"], "removed": []}
    assert sorted(m["uuid"] for _, m in factory.table.machines()) == running_before

    removed = factory.apply_config(config_file(tmp_path, processors=2))
    assert removed["removed"] == ["newer"]
    assert sorted(m["uuid"] for _, m in factory.table.machines()) == running_before


def test_a_reload_keeps_restart_only_settings_and_names_them_until_restored(tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=2), clock)
    report_idle(factory, [0, 1])
    moved = config_file(tmp_path, processors=2, extra="state_dir = /srv/elsewhere\n"
                                                      "docker_url = tcp://127.0.0.1:2375\n"
                                                      "mb_per_processor = 1024")
    factory.apply_config(moved)
    assert factory.restart_needed == ["state_dir", "docker_url"]
    assert factory.config.settings.state_dir == "/var/lib/vac", "the running state_dir stays"
    assert factory.config.settings.mb_per_processor == 1024, "what can change at reload does"
    placed = [m.machine for _, m in tick(factory) if isinstance(m, messages.Place)]
    assert [m["factory"]["state_dir"] for m in placed] == ["/var/lib/vac"] * 2, \
        "placements are for the state directory the slots use"
    assert [m["factory"]["mb_per_processor"] for m in placed] == [1024] * 2

    factory.apply_config(config_file(tmp_path, processors=2))
    assert factory.restart_needed == [], "a reload that restores them clears the list"


def test_slots_following_total_processors_need_a_restart_but_total_processors_does_not(
        tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=2), clock)
    factory.apply_config(config_file(tmp_path, processors=4))
    assert factory.restart_needed == ["slots"]
    assert (factory.config.settings.slots, factory.config.settings.total_processors) == (2, 4)
    assert len(factory.table.entries) == 2


def test_an_idle_report_crossing_a_placement_does_not_free_the_slot_but_a_rejection_does(
        tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=1), clock)
    report_idle(factory, [0])
    (_, place), = tick(factory)
    report_idle(factory, [0])
    assert tick(factory) == [], "the placement may still be on its way"
    factory.on_message("slot-00", messages.StateReport(
        child_id="slot-00", state="idle",
        detail={"slot": 0, "machine": None, "rejected": place.machine["uuid"],
                "error": "bad spec"}))
    (_, again), = tick(factory)
    assert again.machine["uuid"] != place.machine["uuid"]


def test_a_refused_placement_frees_the_slot_and_a_repeated_finish_counts_once(tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=1), clock)
    report_idle(factory, [0])
    (_, place), = tick(factory)
    factory.on_message("slot-00", messages.StateReport(
        child_id="slot-00", state="idle",
        detail={"slot": 0, "machine": None, "error": "placement refused: busy"}))
    (_, place), = tick(factory)
    report_running(factory, 0, summary(place))
    m = place.machine
    finished = messages.MachineFinished(
        uuid=m["uuid"], machinetype=m["machinetype"]["name"], started_at=clock.now - 1000,
        ended_at=clock.now, code=300, text="", processors=1, cpu_seconds=1.0)
    factory.on_message("slot-00", finished)
    history = factory.histories[finished.machinetype]
    factory.on_message("slot-00", finished)
    assert factory.histories[finished.machinetype] == history


def live_sets(factory, may_start=False):
    return [m for c, m in factory.tick(may_start) if c == "reaper" and isinstance(m, messages.LiveSet)]


def test_the_reaper_gets_the_live_set_whatever_the_slots_do_with_the_unsettled_marked(
        tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=3), clock)
    factory.on_message("slot-00", messages.StateReport(
        child_id="slot-00", state="adopting", detail={"slot": 0, "machine": None}))
    report_idle(factory, [1])
    sent = live_sets(factory)
    assert sent == [messages.LiveSet(made_at=clock.now, slots=[
        {"slot": 0, "state": "adopting", "uuid": None, "settled": False},
        {"slot": 1, "state": "idle", "uuid": None, "settled": True},
        {"slot": 2, "state": "unknown", "uuid": None, "settled": False}])], \
        "sent although slot 0 adopts and slot 2 never reported"
    assert live_sets(factory) == [], "not again at once"
    clock.now += 10
    report_idle(factory, [0, 2])
    sent = factory.tick(True)
    places = [m.machine["uuid"] for c, m in sent if c != "reaper"]
    live, = [m for c, m in sent if c == "reaper" and isinstance(m, messages.LiveSet)]
    assert live.made_at == clock.now
    assert [s["uuid"] for s in live.slots] == places, "placements in flight count as held"
    assert all(s["settled"] for s in live.slots)


def test_a_slot_whose_worker_died_is_unsettled_in_the_live_set_but_keeps_its_machine(
        tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=2), clock)
    report_idle(factory, [0, 1])
    (_, place), _ = tick(factory)
    report_running(factory, 0, summary(place))
    factory.on_child_exit("slot-00")
    clock.now += 10
    live, = live_sets(factory)
    assert live.slots[0] == {"slot": 0, "state": "running", "uuid": place.machine["uuid"],
                             "settled": False}


def keeper_reports(factory, checks):
    factory.on_message("cvmfs-keeper", messages.StateReport(
        child_id="cvmfs-keeper", state="checking", detail={"repositories": checks}))


def to_keeper(factory):
    return [msg.names for child, msg in factory.tick(False) if child == "cvmfs-keeper"]


def test_the_keeper_is_told_the_repositories_the_machinetypes_need_whenever_they_change(tmp_path, clock):
    needs_a = CONFIG.replace("fizzle_seconds = 60\n", "fizzle_seconds = 60\ncvmfs_repositories = a.example.org\n", 1)
    factory = make_factory(config_file(tmp_path, text=needs_a), clock)
    assert to_keeper(factory) == [], "nothing is sent before the keeper has reported"
    keeper_reports(factory, {"a.example.org": {"ok": None, "reason": "not checked yet"}})
    assert to_keeper(factory) == [], "it watches what is needed"

    needs_a_and_b = needs_a.replace("user_data = other.user_data\n",
                                    "user_data = other.user_data\ncvmfs_repositories = b.example.org a.example.org\n")
    factory.apply_config(config_file(tmp_path, text=needs_a_and_b))
    assert to_keeper(factory) == [["a.example.org", "b.example.org"]]
    assert to_keeper(factory) == [], "asked once until the keeper reports again"
    keeper_reports(factory, {"a.example.org": {"ok": True, "reason": "ok"},
                             "b.example.org": {"ok": False, "reason": "no answer within 10 s"}})
    assert to_keeper(factory) == []
    assert factory.unavailable_repositories == {"b.example.org"}

    # A restarted keeper starts from the list the root was started with.
    keeper_reports(factory, {"a.example.org": {"ok": None, "reason": "not checked yet"}})
    assert to_keeper(factory) == [["a.example.org", "b.example.org"]]

    factory.apply_config(config_file(tmp_path))
    assert to_keeper(factory) == [[]], "no machinetype needs a repository any more"
    keeper_reports(factory, {})
    assert to_keeper(factory) == [] and factory.unavailable_repositories == frozenset()


def test_space_answers_count_until_stale_and_vacquery_hears_local_changes(tmp_path, clock):
    factory = make_factory(config_file(tmp_path), clock)
    sent = lambda: [msg.statuses for child, msg in factory.tick(False) if child == "vacquery"]  # noqa: E731
    assert sent() == [], "nothing is sent before vacquery has reported"
    factory.on_message("vacquery", messages.StateReport(child_id="vacquery", state="waiting", detail={}))
    (statuses,) = sent()
    assert [(s["machinetype"], s["running_hs06"]) for s in statuses] == [("other", 0.0), ("work", 0.0)]
    assert sent() == [], "unchanged statuses are not sent again"

    answer = {"answered_at": clock.now, "factory": None, "short": [], "machinetypes": {"work": {
        "running_hs06": 8.0, "running_machines": 1, "running_processors": 1, "num_before_fizzle": 0,
        "shutdown_message": None, "shutdown_time": None, "shutdown_machine": None}}}
    factory.on_message("vacquery", messages.SpaceStatus(factories={"f2": answer, "f3": answer},
                                                        polled=["f2", "f3"]))
    assert factory.space_hs06() == {"work": 16.0}
    # f3 is silent this round (its answer still counts); f2 was dropped from the list.
    factory.on_message("vacquery", messages.SpaceStatus(factories={}, polled=["f3"]))
    assert factory.space_hs06() == {"work": 8.0}
    clock.now += 1000
    assert factory.space_hs06() == {}, "an answer that old no longer counts"


def test_vacquery_gets_every_slot_and_the_factory_to_answer_with_and_hears_from_the_root_twice_a_minute(
        tmp_path, clock):
    extra = "hs06_per_processor = 10\nvacmon_hostport = vacmon.example.org:8884\n"
    factory = make_factory(config_file(tmp_path, processors=2, extra=extra), clock)
    sent = lambda: [msg for child, msg in factory.tick(False) if child == "vacquery"]  # noqa: E731
    factory.on_message("vacquery", messages.StateReport(child_id="vacquery", state="waiting", detail={}))
    report_idle(factory, range(2))
    report_running(factory, 0, {"uuid": "u1", "machinetype": "work", "processors": 1, "started_at": clock.now - 100,
                                "shutdown_at": int(clock.now) + 3500, "superslot": 1, "container_id": "c",
                                "created_at": clock.now - 110, "cpu_seconds": 90.0, "heartbeat_at": clock.now - 5})
    (first,) = sent()
    assert [(m["machine"], m["state"], m["uuid"], m["cpu_seconds"]) for m in first.machines] == [
        ("f1-00.example.com", "Running", "u1", 90.0), ("f1-01.example.com", "Shut down", None, 0.0)]
    assert (first.factory["running_processors"], first.factory["running_hs06"], first.factory["max_processors"],
            first.factory["max_hs06"]) == (1, 10.0, 2, 20.0)
    assert first.vacmon == ["vacmon.example.org:8884"] and first.made_at == clock.now
    clock.now += 10
    assert sent() == [], "nothing changed"
    clock.now += 25
    (again,) = sent()
    assert again.made_at == clock.now and again.machines == first.machines, "its heartbeat for factory_status"
    # A machine ends: the slot tells of it, its machinetype of the abort.
    factory.on_message("slot-00", messages.MachineFinished(
        uuid="u1", machinetype="work", started_at=clock.now - 135, ended_at=clock.now, code=300,
        text="Nothing to do", processors=1, cpu_seconds=120.0))
    report_idle(factory, [0])
    # Built at most once a second: this pass waits, and the root is woken for it.
    assert sent() == [], "within LOCAL_STATUS_MIN_SECONDS of the last"
    assert factory.vacquery.next_deadline() == clock.now + LOCAL_STATUS_MIN_SECONDS
    assert factory.next_deadline() <= factory.vacquery.next_deadline()
    clock.now += LOCAL_STATUS_MIN_SECONDS
    (ended,) = sent()
    assert (ended.machines[0]["state"], ended.machines[0]["shutdown_message"]) == ("Shut down", "300 Nothing to do")
    assert {s["machinetype"]: s["shutdown_message"] for s in ended.statuses}["work"] == "300 Nothing to do"


def test_an_abort_anywhere_in_the_space_holds_the_machinetype_back_here_for_its_backoff(tmp_path, clock):
    factory = make_factory(config_file(tmp_path, processors=1), clock)

    def space(message, at, young=0):
        answer = {"answered_at": clock.now, "factory": None, "short": [], "machinetypes": {
            "work": {"running_hs06": 0.0, "running_machines": 0, "running_processors": 0, "num_before_fizzle": young,
                     "shutdown_message": message, "shutdown_time": at, "shutdown_machine": "f2-01.example.com"}}}
        factory.on_message("vacquery", messages.SpaceStatus(factories={"f2.example.com": answer},
                                                            polled=["f2.example.com"]))

    report_idle(factory, [0])
    # work's share (3 of 4) puts it first, but f2 has just seen it abort.
    space("300 Nothing to do", int(clock.now) - 10)
    (placed,) = tick(factory)
    assert placed[1].machine["machinetype"]["name"] == "other"
    assert factory.backoff() == {"work": clock.now + 90}
    # A machine of it still before fizzle on f2 holds it fizzle_seconds longer.
    space("300 Nothing to do", int(clock.now) - 10, young=1)
    assert factory.backoff() == {"work": clock.now + 90 + 60}
    clock.now += 95
    assert factory.backoff() == {"work": clock.now - 95 + 150}
    space("300 Nothing to do", int(clock.now) - 105, young=0)
    assert factory.backoff() == {}, "backoff_seconds have passed and nothing is young any more"
    # Codes below 300 are no aborts, wherever they come from.
    space("200 Work completed", int(clock.now))
    assert factory.backoff() == {}


def test_the_reaper_learns_with_each_live_set_whether_to_write_apel_sync_records(tmp_path, clock):
    site = "gocdb_sitename = UKI-EXAMPLE\n"
    factory = make_factory(config_file(tmp_path, processors=1, extra=site), clock)

    def sync_sites():
        return [m.site for c, m in factory.tick(False) if isinstance(m, messages.ApelSyncSite)]

    assert sync_sites() == [None], "no outgoing records without hs06_per_processor"
    # A reload that turns outgoing records on reaches the reaper with the next live set.
    factory.apply_config(config_file(tmp_path, processors=1, extra=site + "hs06_per_processor = 10\n"))
    assert sync_sites() == []
    clock.now += 10
    assert sync_sites() == ["UKI-EXAMPLE"]


def mjf_report(factory, state, **detail):
    factory.on_message("mjf", messages.StateReport(child_id="mjf", state=state, detail=detail))


def test_mjf_http_machinetypes_get_the_served_url_and_wait_while_there_is_none(tmp_path, clock):
    config = config_file(tmp_path, text=CONFIG.replace("target_share = 3\n", "target_share = 3\nmjf_http = true\n"))
    factory = Factory(config, factory_name="f1.example.com", rng=random.Random(1), clock=clock,
                      load_average=lambda: 0.0, mjf_child=True)
    mjf_report(factory, "failing", url=None, error="no IPv4 address on docker0")
    report_idle(factory, range(4))
    waiting = tick(factory)
    assert [place.machine["machinetype"]["name"] for _, place in waiting] == ["other"] * 4
    assert all("mjf_http_url" not in place.machine["factory"] for _, place in waiting)
    for slot, place in waiting:
        report_running(factory, int(slot[-2:]), summary(place))

    mjf_report(factory, "serving", url="http://172.17.0.1:9713", error=None)
    for slot, place in waiting[2:]:
        factory.on_message(slot, messages.MachineFinished(
            uuid=place.machine["uuid"], machinetype="other", code=200, text="done", started_at=clock.now,
            ended_at=clock.now + 100, cpu_seconds=1.0, processors=1))
    report_idle(factory, range(2, 4))
    served = tick(factory)
    assert [place.machine["machinetype"]["name"] for _, place in served] == ["work", "work"]
    assert {place.machine["factory"]["mjf_http_url"] for _, place in served} == {"http://172.17.0.1:9713"}

    factory.on_child_exit("mjf")
    assert factory.mjf.url is None and "restarting" in factory.mjf.why_not


def test_a_served_url_that_is_not_http_ipv4_port_is_not_believed(tmp_path, clock):
    factory = Factory(config_file(tmp_path), factory_name="f1.example.com", mjf_child=True)
    for url in ("http://evil.example/", "http://172.17.0.1:0", "http://300.1.1.1:80", "file:///etc", 7):
        mjf_report(factory, "serving", url=url, error=None)
        assert factory.mjf.url is None
    mjf_report(factory, "serving", url="http://127.0.0.1:8080", error=None)
    assert factory.mjf.url == "http://127.0.0.1:8080"


def test_without_an_mjf_child_mjf_http_machinetypes_say_a_restart_is_needed(tmp_path, clock):
    config = config_file(tmp_path, processors=1, text=CONFIG.replace(
        "target_share = 3\n", "target_share = 3\nmjf_http = true\n").replace("target_share = 1\n",
                                                                           "target_share = 0\n"))
    factory = make_factory(config, clock)
    report_idle(factory, [0])
    assert tick(factory) == []
    assert "work: mjf_http, but Machine/Job Features are not served over HTTP: no mjf child runs" \
        in factory.last_refusal.text
    assert "restart vacd" in factory.last_refusal.text
