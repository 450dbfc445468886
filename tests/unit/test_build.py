"""The factory's supervision tree built from settings (vac.supervisor.build)."""

import pytest

from vac.supervisor.build import TreeSettings, build_tree
from vac.supervisor.policy import Intensity, SlotRestartPolicy
from vac.supervisor.tree import ChildSpec, SupervisorSpec, Tree, validate_tree
from vac.vocabulary.child_states import Restart, Strategy
from vac.workers import cvmfs_keeper, mjf, reaper, slot_worker


@pytest.mark.parametrize("slots", [0, 1, 16, 128])
def test_services_first_then_a_pool_of_slots(slots):
    spec = build_tree(TreeSettings(slots=slots))
    assert validate_tree(spec) == []
    services, pool = spec.children
    assert [c.id for c in services.children[:2]] == ["cvmfs-keeper", "reaper"]
    assert [c.target for c in services.children[:2]] == [cvmfs_keeper.run, reaper.run]
    assert all(c.restart is Restart.PERMANENT and c.role == "helper" for c in services.children)
    assert services.pool is None
    assert pool.pool is not None and pool.strategy is Strategy.ONE_FOR_ONE
    assert [c.id for c in pool.children] == [f"slot-{n:02d}" for n in range(slots)]
    assert all(isinstance(c, ChildSpec) and c.target is slot_worker.run and c.restart is Restart.TRANSIENT
               and c.role == "slot" for c in pool.children)
    assert [c.args["slot"] for c in pool.children] == list(range(slots))


def test_start_and_stop_order_of_the_factory():
    spec = build_tree(TreeSettings(slots=3))
    helpers = [c.id for c in spec.children[0].children]
    slots = ["slot-00", "slot-01", "slot-02"]
    tree = Tree(spec)
    assert [a.child_id for a in tree.start(0.0)] == helpers + slots
    # Slots stop first, all at once; helpers after them, last started first stopped.
    assert tree.shutdown_phases() == [slots] + [[h] for h in reversed(helpers)]


def test_settings_reach_the_specs():
    settings = TreeSettings(
        slots=2, cvmfs_repositories=("atlas.cern.ch", "lhcb.cern.ch"), state_dir="/srv/vac",
        heartbeat_interval=1.0, heartbeat_timeout=7.0, slot_shutdown=30.0, helper_shutdown=3.0,
        helper_intensity=Intensity(2, 9.0), top_intensity=Intensity(1, 99.0), degraded_retry=45.0,
        slot_restart=SlotRestartPolicy(max_failed_starts=3), cvmfs_keepalive_seconds=45.0,
        singularity={"command": None, "cgroups": "vac", "accounts": ["vacsing00", "vacsing01"],
                     "sweep_seconds": 2.0})
    spec = build_tree(settings)
    services, pool = spec.children
    keeper, reaper_spec = services.children[:2]
    assert keeper.args == {"repositories": ["atlas.cern.ch", "lhcb.cern.ch"], "interval_seconds": 45.0}
    assert reaper_spec.args == {
        "state_dir": "/srv/vac", "slots": 2, "factory_name": "localhost",
        "docker_url": "unix:///var/run/docker.sock", "docker_timeout_seconds": 30.0,
        "interval_seconds": 60.0, "grace_seconds": 120.0, "apel_sync_site": None,
        "singularity": settings.singularity, "machine_models": ["docker"]}
    slot_args = pool.children[1].args
    assert (slot_args["slot"], slot_args["state_dir"]) == (1, "/srv/vac")
    assert slot_args["singularity"]["accounts"] == ["vacsing00", "vacsing01"]
    every_child = (*services.children, *pool.children)
    assert {(c.heartbeat_interval, c.heartbeat_timeout) for c in every_child} == {(1.0, 7.0)}
    assert {c.shutdown for c in services.children} == {3.0}
    assert {c.shutdown for c in pool.children} == {30.0}
    assert services.intensity == Intensity(2, 9.0)
    assert spec.intensity == Intensity(1, 99.0) and spec.degraded_retry == 45.0
    assert pool.pool.slot_restart.max_failed_starts == 3
    assert isinstance(spec, SupervisorSpec) and spec.strategy is Strategy.ONE_FOR_ONE


def test_bad_timings_are_caught_by_validation():
    spec = build_tree(TreeSettings(slots=2, heartbeat_interval=20.0, heartbeat_timeout=20.0))
    problems = validate_tree(spec)
    # Every child names the fault.
    assert len(problems) == len(spec.children[0].children) + 2
    assert all("heartbeat_interval" in p for p in problems)


def test_the_mjf_child_serves_from_the_state_directory_when_asked_for():
    assert "mjf" not in [c.id for c in build_tree(TreeSettings(slots=1)).children[0].children]
    spec = build_tree(TreeSettings(slots=1, state_dir="/srv/vac", mjf={"listen": "172.17.0.1:9713"}))
    [child] = [c for c in spec.children[0].children if c.id == "mjf"]
    assert child.target is mjf.run and child.restart is Restart.PERMANENT and child.role == "helper"
    assert child.args == {"state_dir": "/srv/vac", "listen": "172.17.0.1:9713"}
    assert validate_tree(spec) == []


MJF_CONFIG = """[settings]
vac_space = space.example.com
{settings}
[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
{machinetype}
{pipe}
"""


@pytest.mark.parametrize("settings, machinetype, pipe, expected", [
    ("", "", "", None),
    ("mjf_http_listen = 127.0.0.1:9999", "", "", {"listen": "127.0.0.1:9999"}),
    ("", "mjf_http = true", "", {"listen": None}),
    ("", "mjf_http = false", "[vacuum_pipe lhcb]\nvacuum_pipe_url = https://example.org/lhcb.pipe\n",
     {"listen": None}),
])
def test_vacd_runs_an_mjf_child_when_a_machinetype_may_ask_for_mjf_http(tmp_path, settings, machinetype, pipe,
                                                                        expected):
    from vac.config.load import load_configuration
    from vac.daemon import tree_settings
    path = tmp_path / "vac.conf"
    path.write_text(MJF_CONFIG.format(settings=settings, machinetype=machinetype, pipe=pipe))
    assert tree_settings(load_configuration([str(path)], cpu_count=2)).mjf == expected
