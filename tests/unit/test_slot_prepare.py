"""From the root's plain machine terms to MJF, user_data, scratch, the container request and the APEL record."""

import stat
from pathlib import Path

import pytest

from vac.machine.layout import MachinePaths
from vac.machine.mjf_http import FeaturesUrls, read_token
from vac.machine.prepare import (BadTerms, MachineTerms, container_request, create_directory, files_directory,
                                 prepare_machine, read_terms)
from vac.runtimes.docker_api import PAYLOAD_PATHS
from vac.workers.finishing import finished_machine

from slot_fakes import FACTORY, START, make_machinetype, make_settings, place_spec

MIB = 1048576


@pytest.fixture
def setup(tmp_path):
    state_dir = tmp_path / "state"
    settings = make_settings(state_dir, disk_gb_per_processor=3, user_data_options={"site_option": "factory-wide"},
                             machinefeatures_options={"rack": "r12"})
    files = Path(settings.machinetypes_dir) / "busy-test" / "files"
    files.mkdir(parents=True)
    (files / "template").write_text(
        "uuid=##user_data_uuid## host=##user_data_machine_hostname## space=##user_data_space##\n"
        "mjf=##user_data_machinefeatures_url## ##user_data_manager_jobfeatures_url## ##user_data_joboutputs_url##\n"
        "opt=##user_data_option_site_option## own=##user_data_option_own## file=##user_data_file_key##\n"
        "gone=##user_data_unknown_thing##\n")
    (files / "key.pem").write_text("KEY")
    machinetype = make_machinetype("template", user_data_options={"site_option": "factory-wide", "own": "mine"},
                                   user_data_files={"key": "key.pem"}, tmp_binds=("/tmp", "/var/tmp"),
                                   cvmfs_repositories=("lhcb.cern.ch",), max_processors=2)
    spec = place_spec(settings, machinetype, 5, START, processors=2, shutdown_at=int(START) + 7200)
    return MachineTerms.from_spec(spec), state_dir


def test_preparing_writes_every_mjf_key_and_a_templated_user_data(setup):
    terms, state_dir = setup
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, START + 10, PAYLOAD_PATHS)

    machinefeatures = {p.name: p.read_text() for p in paths.machinefeatures.iterdir()}
    jobfeatures = {p.name: p.read_text() for p in paths.jobfeatures.iterdir()}
    assert machinefeatures == {"total_cpu": "2", "hs06": "20.0", "shutdowntime": str(int(START) + 7200),
                               "phys_cores": "2", "log_cores": "2", "jobslots": "1", "grace_secs": "600",
                               "rack": "r12"}
    wall = 7200 - 10
    assert jobfeatures == {
        "allocated_cpu": "2", "wall_limit_secs": str(wall), "cpu_limit_secs": str(2 * wall),
        "jobstart_secs": str(int(START) + 10), "shutdowntime_job": str(int(START) + 7200),
        "max_rss_bytes": str(2000 * MIB), "hs06_job": "20.0", "job_id": terms.uuid, "max_swap_bytes": "0",
        "scratch_limit_bytes": str(6 * 10 ** 9), "grace_secs_job": "600", "allocated_CPU": "2",
        "cpufactor_lrms": "1.0", "cpu_limit_secs_lrms": str(2 * wall), "wall_limit_secs_lrms": str(wall),
        "mem_limit_MB": str(2000 * MIB // 10 ** 6)}
    assert paths.user_data.read_text() == (
        f"uuid={terms.uuid} host=f1-05.example.com space=vac01.example.com\n"
        "mjf=/etc/machinefeatures /etc/jobfeatures /var/spool/joboutputs\n"
        "opt=factory-wide own=mine file=KEY\n"
        "gone=\n")
    assert stat.S_IMODE(paths.user_data.stat().st_mode) == 0o755
    assert [container for _, container in prepared.tmp_binds] == ["/tmp", "/var/tmp"]
    assert all(host.is_dir() and str(host).startswith(str(paths.scratch)) for host, _ in prepared.tmp_binds)
    assert read_terms(paths) == terms


def test_the_container_request_carries_the_limits_labels_and_mounts(setup):
    terms, state_dir = setup
    paths = MachinePaths.for_machine(state_dir, terms.uuid)
    binds = [(paths.scratch / "binds" / "00-tmp", "/tmp")]
    request = container_request(terms, paths, binds, generation=1)
    assert (request.factory, request.slot, request.machine_uuid, request.machinetype, request.machine_name) == (
        FACTORY, 5, terms.uuid, "busy-test", "f1-05.example.com")
    assert (request.image, request.command, request.processors, request.memory_bytes, request.pids_limit) == (
        "docker://busybox:latest", "/user_data", 2, 2000 * MIB, 8192)
    assert (request.user_data, request.joboutputs) == (paths.user_data, paths.joboutputs)
    assert request.cvmfs_repositories == ("lhcb.cern.ch",) and request.tmp_binds == tuple(binds)


def _mjf_http_terms(setup, base_url="http://172.17.0.1:9713"):
    terms, state_dir = setup
    raw = {**terms.raw, "machinetype": {**terms.machinetype, "mjf_http": True},
           "factory": {**terms.factory, "mjf_http_url": base_url}}
    if base_url is None:
        del raw["factory"]["mjf_http_url"]
    return MachineTerms.from_spec(raw), state_dir


def test_an_mjf_http_machine_gets_urls_in_its_user_data_and_environment_and_keeps_its_files(setup):
    terms, state_dir = _mjf_http_terms(setup)
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, START + 10, PAYLOAD_PATHS)
    token = read_token(paths)
    base = f"http://172.17.0.1:9713/{terms.uuid}/{token}"
    assert prepared.urls == FeaturesUrls(f"{base}/machinefeatures", f"{base}/jobfeatures")
    assert f"mjf={base}/machinefeatures {base}/jobfeatures /var/spool/joboutputs\n" in paths.user_data.read_text()
    assert (paths.jobfeatures / "allocated_cpu").read_text() == "2", "the files are written as ever"
    request = container_request(terms, paths, list(prepared.tmp_binds), 1, prepared.urls)
    assert (request.machinefeatures_url, request.jobfeatures_url) == (prepared.urls.machinefeatures,
                                                                      prepared.urls.jobfeatures)
    assert request.machinefeatures == paths.machinefeatures, "and still mounted"
    # Preparing again after a restart gives the same URLs.
    assert prepare_machine(terms, paths, START + 20, PAYLOAD_PATHS).urls == prepared.urls


def test_a_machine_without_mjf_http_gets_paths_and_no_token(setup):
    terms, state_dir = setup
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, START + 10, PAYLOAD_PATHS)
    assert prepared.urls is None and read_token(paths) is None
    request = container_request(terms, paths, list(prepared.tmp_binds), 1, prepared.urls)
    assert (request.machinefeatures_url, request.jobfeatures_url) == (None, None)


def test_an_mjf_http_machine_whose_terms_name_no_server_is_not_prepared(setup):
    terms, state_dir = _mjf_http_terms(setup, base_url=None)
    paths = create_directory(terms)
    with pytest.raises(BadTerms, match="mjf_http: the terms name no server"):
        prepare_machine(terms, paths, START + 10, PAYLOAD_PATHS)


def test_the_apel_inputs_come_from_the_terms(setup):
    terms, _ = setup
    machine = finished_machine(terms, START, START + 1000, 1234.7)
    assert (machine.space, machine.factory, machine.processors, machine.cpu_seconds, machine.hs06_per_processor,
            machine.gocdb_sitename, machine.mb_per_processor) == (
        "vac01.example.com", FACTORY, 2, 1234, 10.0, "UKI-EXAMPLE", 1000)


def test_files_live_under_the_machinetypes_directory(setup):
    terms, state_dir = setup
    assert files_directory(terms) == state_dir / "machinetypes" / "busy-test" / "files"


@pytest.mark.parametrize("change", [
    lambda spec: spec.pop("uuid"),
    lambda spec: spec.update(uuid="../../etc"),
    lambda spec: spec.update(processors=0),
    lambda spec: spec.update(processors=True),
    lambda spec: spec.update(shutdown_at="soon"),
    lambda spec: spec["machinetype"].pop("root_image"),
    lambda spec: spec["factory"].update(state_dir=None),
])
def test_bad_terms_are_refused(setup, change):
    terms, _ = setup
    spec = {**terms.raw, "machinetype": dict(terms.machinetype), "factory": dict(terms.factory)}
    change(spec)
    with pytest.raises(ValueError):
        MachineTerms.from_spec(spec)


def test_terms_that_are_not_a_map_are_refused():
    with pytest.raises(BadTerms):
        MachineTerms.from_spec(["not", "a", "map"])


def _singularity_terms(tmp_path, **settings_changes):
    state_dir = tmp_path / "state"
    settings = make_settings(state_dir, **settings_changes)
    files = Path(settings.machinetypes_dir) / "busy-test" / "files"
    files.mkdir(parents=True)
    (files / "template").write_text("mjf=##user_data_machinefeatures_url##\n")
    machinetype = make_machinetype("template", machine_model="singularity", root_image="pilot.sif",
                                   tmp_binds=("/scratch",))
    return MachineTerms.from_spec(place_spec(settings, machinetype, 3, START)), files


def test_a_singularity_machine_belongs_to_its_slots_account(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    terms, files = _singularity_terms(tmp_path, singularity_user="nobody")
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, START, PAYLOAD_PATHS)
    owner = (nobody.pw_uid, nobody.pw_gid)
    root_info = paths.root.stat()
    # The account's group may enter the machine directory, not list it.
    assert (root_info.st_uid, root_info.st_gid, stat.S_IMODE(root_info.st_mode)) == (0, nobody.pw_gid, 0o710)
    user_data = paths.user_data.stat()
    assert (user_data.st_uid, user_data.st_gid, stat.S_IMODE(user_data.st_mode)) == (*owner, 0o500)
    for directory in (paths.joboutputs, paths.scratch, prepared.tmp_binds[0][0]):
        info = directory.stat()
        assert (info.st_uid, info.st_gid) == owner, directory
    request = container_request(terms, paths, list(prepared.tmp_binds), 1)
    # A file name is the machinetype's file; the account and the scratch area go to the runtime.
    assert request.image == str(files / "pilot.sif")
    assert (request.model, request.account, request.scratch) == ("singularity", "nobody", paths.scratch)


def test_a_singularity_machine_without_an_account_or_with_roots_is_refused(tmp_path):
    terms, _ = _singularity_terms(tmp_path)
    with pytest.raises(BadTerms, match="needs singularity_user or singularity_user_prefix"):
        create_directory(terms)
    raw = dict(terms.raw, factory={**terms.raw["factory"], "singularity_account": "root"})
    with pytest.raises(BadTerms, match="is root's: refused"):
        create_directory(MachineTerms.from_spec(raw))
