"""The Prometheus text the metrics exporter makes of a snapshot and of process measurements."""

import re

from prometheus_client.parser import text_string_to_metric_families

from vac.workers.metrics_exposition import Exposition

SNAPSHOT = {
    "version": 1,
    "taken_at": 1_800_000_000.5,
    "factory_state": "running",
    "slots": {"running": 2, "idle": 1, "backoff": 1, "fatal": 0, "preparing": 0},
    "children": [
        {"child": "reaper", "role": "helper", "state": "running", "pid": 11, "restarts": 2,
         "failed_starts": 0},
        {"child": "slot-00", "role": "slot", "state": "backoff", "pid": None, "restarts": 3,
         "failed_starts": 2},
    ],
    "processors": 8,
    "machinetypes": [
        {"machinetype": "lhcb-prod", "configured": True, "target_share": 3.0, "paused": False,
         "machines": 2, "processors": 4, "backoff_remaining": 0.0, "in_backoff": False,
         "started": 7, "placements": 8, "wall_limit_kills": 1},
        {"machinetype": "atlas", "configured": True, "target_share": 1.0, "paused": True,
         "machines": 0, "processors": 0, "backoff_remaining": 42.5, "in_backoff": True,
         "started": 1, "placements": 1, "wall_limit_kills": 0},
    ],
    "finished": [{"machinetype": "atlas", "code": None, "count": 1},
                 {"machinetype": "lhcb-prod", "code": 700, "count": 2}],
    "refusals": {"all_in_backoff": 4, "paused": 0},
    "refusing": "all_in_backoff",
    "pipes": [{"pipe": "lhcb", "fetched_at": 1_799_999_000.0, "stale": True, "usable": True}],
}
PROCESSES = [
    {"child": "vacd", "role": "supervisor", "pid": 1, "cpu_seconds": 12.5, "rss_bytes": 40e6,
     "uss_bytes": 20e6},
    {"child": "reaper", "role": "helper", "pid": 11, "cpu_seconds": 0.25, "rss_bytes": 30e6,
     "uss_bytes": None},
]


def render(snapshot=SNAPSHOT, processes=PROCESSES):
    exposition = Exposition()
    exposition.collector.snapshot = snapshot
    exposition.collector.processes = processes
    return exposition.render().decode()


def samples(text):
    """{(sample name, sorted label items): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_snapshot_values_appear_under_their_names_and_labels():
    values = samples(render())
    assert values[("vac_slots", (("state", "running"),))] == 2
    assert values[("vac_slots", (("state", "fatal"),))] == 0
    assert values[("vac_factory_state", (("state", "running"),))] == 1
    assert values[("vac_factory_state", (("state", "degraded"),))] == 0
    assert values[("vac_child_up", (("child", "reaper"), ("role", "helper")))] == 1
    assert values[("vac_child_up", (("child", "slot-00"), ("role", "slot")))] == 0
    assert values[("vac_child_restarts_total", (("child", "slot-00"), ("role", "slot")))] == 3
    assert values[("vac_machines", (("machinetype", "lhcb-prod"),))] == 2
    assert values[("vac_machine_processors", (("machinetype", "lhcb-prod"),))] == 4
    assert values[("vac_machinetype_backoff", (("machinetype", "atlas"),))] == 1
    assert values[("vac_machinetype_backoff_remaining_seconds", (("machinetype", "atlas"),))] == 42.5
    assert values[("vac_machinetype_paused", (("machinetype", "atlas"),))] == 1
    assert values[("vac_machines_started_total", (("machinetype", "lhcb-prod"),))] == 7
    assert values[("vac_machines_finished_total", (("code", "700"), ("machinetype", "lhcb-prod")))] == 2
    assert values[("vac_machines_finished_total", (("code", "none"), ("machinetype", "atlas")))] == 1
    assert values[("vac_wall_limit_kills_total", (("machinetype", "lhcb-prod"),))] == 1
    assert values[("vac_scheduler_placements_total", (("machinetype", "lhcb-prod"),))] == 8
    assert values[("vac_scheduler_refusals_total", (("reason", "all_in_backoff"),))] == 4
    assert values[("vac_scheduler_refusing", (("reason", "all_in_backoff"),))] == 1
    assert values[("vac_scheduler_refusing", (("reason", "paused"),))] == 0
    assert values[("vac_pipe_stale", (("pipe", "lhcb"),))] == 1
    assert values[("vac_factory_processors", ())] == 8
    assert values[("vac_snapshot_timestamp_seconds", ())] == 1_800_000_000.5
    assert values[("vac_process_cpu_seconds_total", (("child", "vacd"), ("role", "supervisor")))] == 12.5
    assert values[("vac_process_unique_memory_bytes", (("child", "vacd"), ("role", "supervisor")))] == 20e6
    assert ("vac_process_unique_memory_bytes", (("child", "reaper"), ("role", "helper"))) not in values, \
        "no USS where it could not be read"


def test_every_metric_is_vac_prefixed_documented_and_named_by_its_type():
    text = render()
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 25
    for family in families:
        assert family.name.startswith("vac_")
        assert family.documentation, family.name
    helped = set(re.findall(r"^# HELP (\S+) ", text, re.MULTILINE))
    typed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert helped == set(typed)
    for name, kind in typed.items():
        assert name.endswith("_total") == (kind == "counter"), name


def test_before_the_first_snapshot_only_the_processes_are_shown():
    names = {family.name for family in text_string_to_metric_families(render(snapshot=None))}
    assert names == {"vac_process_cpu_seconds", "vac_process_resident_memory_bytes",
                     "vac_process_unique_memory_bytes"}


def test_a_bare_tree_has_no_factory_metrics_and_empty_families_are_left_out():
    bare = {key: SNAPSHOT[key] for key in ("version", "taken_at", "factory_state", "slots",
                                            "children")}
    names = {family.name for family in text_string_to_metric_families(render(bare, []))}
    assert "vac_slots" in names and "vac_child_up" in names
    assert not any(name.startswith(("vac_machine", "vac_scheduler", "vac_pipe", "vac_process"))
                   for name in names)
