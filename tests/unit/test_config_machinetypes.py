"""[machinetype NAME] and [vacuum_pipe PREFIX]: every option, defaults, and every error."""

import pytest

from vac.config import load_configuration, try_load_configuration

SETTINGS = "[settings]\nvac_space = space.example.com\nsingularity_user = nobody\n"
DOCKER = ("[machinetype lhcb]\nmachine_model = docker\n"
          "root_image = docker://gitlab-registry.cern.ch/lhcb/pilot:1.2\nuser_data = user_data\n")


def load(tmp_path, text):
    path = tmp_path / "vac.conf"
    path.write_text(SETTINGS + text)
    return load_configuration([str(path)], cpu_count=8)


def problems_of(tmp_path, text):
    path = tmp_path / "vac.conf"
    path.write_text(SETTINGS + text)
    config, problems = try_load_configuration([str(path)], cpu_count=8)
    assert config is None
    return [str(problem) for problem in problems]


def test_defaults_are_vacs(tmp_path):
    lhcb = load(tmp_path, DOCKER).machinetypes["lhcb"]
    assert lhcb.container_command == "/user_data"
    assert lhcb.cvmfs_repositories == () and lhcb.tmp_binds == ()
    assert lhcb.target_share == 0.0 and not lhcb.started
    assert (lhcb.min_processors, lhcb.max_processors) == (1, 1)
    assert (lhcb.max_wallclock_seconds, lhcb.min_wallclock_seconds) == (86400, 86400)
    assert (lhcb.backoff_seconds, lhcb.fizzle_seconds) == (10, 600)
    assert (lhcb.heartbeat_file, lhcb.heartbeat_seconds) == (None, 0)
    assert lhcb.accounting_fqan is None and lhcb.machinegroup == "lhcb"
    assert lhcb.machines_dir_days == 3.0
    assert lhcb.disk_gb_per_processor is None and lhcb.image_signing_dn is None
    assert lhcb.user_data_proxy is False and lhcb.legacy_proxy is False
    assert lhcb.mjf_http is False
    assert lhcb.files_name == "lhcb" and lhcb.pipe is None


@pytest.mark.parametrize("text, attribute, expected", [
    ("container_command = /usr/bin/run-pilot", "container_command", "/usr/bin/run-pilot"),
    ("cvmfs_repositories = lhcb.cern.ch grid.cern.ch", "cvmfs_repositories", ("lhcb.cern.ch", "grid.cern.ch")),
    ("tmp_binds = /scratch\n  /tmp", "tmp_binds", ("/scratch", "/tmp")),
    ("target_share = 2.5", "target_share", 2.5),
    ("target_share = -1", "target_share", -1.0),
    ("min_processors = 2\nmax_processors = 8", "min_processors", 2),
    ("max_processors = 8", "max_processors", 8),
    ("max_wallclock_seconds = 172800", "max_wallclock_seconds", 172800),
    ("min_wallclock_seconds = 3600", "min_wallclock_seconds", 3600),
    ("backoff_seconds = 0", "backoff_seconds", 0),
    ("fizzle_seconds = 1200", "fizzle_seconds", 1200),
    ("heartbeat_file = vm-heartbeat", "heartbeat_file", "vm-heartbeat"),
    ("heartbeat_seconds = 900", "heartbeat_seconds", 900),
    ("accounting_fqan = /lhcb/Role=NULL/Capability=NULL", "accounting_fqan", "/lhcb/Role=NULL/Capability=NULL"),
    ("machinegroup = lhcb-all", "machinegroup", "lhcb-all"),
    ("machines_dir_days = 0.5", "machines_dir_days", 0.5),
    ("disk_gb_per_processor = 20", "disk_gb_per_processor", 20),
    ("image_signing_dn = /DC=ch/DC=cern/CN=x", "image_signing_dn", "/DC=ch/DC=cern/CN=x"),
    ("user_data_proxy = true", "user_data_proxy", True),
    ("legacy_proxy = yes", "legacy_proxy", True),
    ("mjf_http = true", "mjf_http", True),
    ("user_data = https://lhcb.example.org/user_data?site=x&y=%2F", "user_data",
     "https://lhcb.example.org/user_data?site=x&y=%2F"),
    ("user_data = /etc/vac/lhcb.user_data", "user_data", "/etc/vac/lhcb.user_data"),
    ("vm_model = docker", "machine_model", "docker"),
    ("machineoutputs_days = 7", "machines_dir_days", 7.0),
    ("cernvm_signing_dn = /CN=y", "image_signing_dn", "/CN=y"),
])
def test_each_option_is_read(tmp_path, text, attribute, expected):
    assert getattr(load(tmp_path, DOCKER + text + "\n").machinetypes["lhcb"], attribute) == expected


def test_singularity_images_may_be_paths_urls_or_file_names(tmp_path):
    for image in ("/cvmfs/unpacked.cern.ch/registry.hub.docker.com/lhcb/slc6:latest",
                  "/srv/images/lhcb.sif", "https://images.example.org/lhcb.sif", "lhcb.sif"):
        config = load(tmp_path, "[machinetype s]\nmachine_model = singularity\n"
                      f"root_image = {image}\nuser_data = user_data\n")
        assert config.machinetypes["s"].root_image == image


def test_machinegroup_defaults_to_the_fqan(tmp_path):
    config = load(tmp_path, DOCKER + "accounting_fqan = /lhcb/Role=pilot\n")
    assert config.machinetypes["lhcb"].machinegroup == "/lhcb/Role=pilot"


def test_min_wallclock_defaults_to_max(tmp_path):
    config = load(tmp_path, DOCKER + "max_wallclock_seconds = 7200\n")
    assert config.machinetypes["lhcb"].min_wallclock_seconds == 7200


def test_a_machinetype_with_no_share_is_still_valid(tmp_path):
    config = load(tmp_path, DOCKER + "target_share = 0\n")
    assert "lhcb" in config.machinetypes and not config.machinetypes["lhcb"].started


def test_settings_user_data_values_are_defaults_a_machinetype_overrides(tmp_path):
    config = load(tmp_path, "user_data_option_proxy = http://squid:3128\nuser_data_option_x = 1\n"
                  "user_data_file_cert = cert.pem\n" + DOCKER + "user_data_option_x = 2\n")
    lhcb = config.machinetypes["lhcb"]
    assert dict(lhcb.user_data_options) == {"proxy": "http://squid:3128", "x": "2"}
    assert dict(lhcb.user_data_files) == {"cert": "cert.pem"}


def test_disk_per_processor_falls_back_to_settings(tmp_path):
    config = load(tmp_path, "disk_gb_per_processor = 30\n" + DOCKER)
    assert config.machinetypes["lhcb"].disk_gb_per_processor == 30


def test_section_names_are_lower_cased_as_vac_did(tmp_path):
    config = load(tmp_path, DOCKER.replace("[machinetype lhcb]", "[MachineType LHCb]"))
    assert list(config.machinetypes) == ["lhcb"]


def test_vmtype_sections_are_read_as_machinetypes_with_a_warning(tmp_path):
    config = load(tmp_path, DOCKER.replace("[machinetype lhcb]", "[vmtype lhcb]"))
    assert list(config.machinetypes) == ["lhcb"]
    assert [warning.reason for warning in config.warnings] == ["deprecated: read as [machinetype lhcb]"]


def test_unknown_machinetype_options_are_warnings(tmp_path):
    config = load(tmp_path, DOCKER + "root_device = vda\n")
    assert [str(warning) for warning in config.warnings] == [
        f"{tmp_path / 'vac.conf'} [machinetype lhcb] root_device = 'vda': unknown option, ignored"]


def with_option(text):
    return DOCKER + text + "\n"


BAD = [
    (with_option("max_wallclock_seconds = abc"), "[machinetype lhcb] max_wallclock_seconds = 'abc': not an integer"),
    (with_option("max_wallclock_seconds = 0"), "[machinetype lhcb] max_wallclock_seconds = '0': must be at least 1"),
    (with_option("min_wallclock_seconds = -1"), "[machinetype lhcb] min_wallclock_seconds = '-1': must not be negative"),
    (with_option("backoff_seconds = 1.5"), "[machinetype lhcb] backoff_seconds = '1.5': not an integer (a whole number is needed here)"),
    (with_option("fizzle_seconds = -600"), "[machinetype lhcb] fizzle_seconds = '-600': must not be negative"),
    (with_option("heartbeat_seconds = x"), "[machinetype lhcb] heartbeat_seconds = 'x': not an integer"),
    (with_option("min_processors = 0"), "[machinetype lhcb] min_processors = '0': must be at least 1"),
    (with_option("max_processors = 3000000000"), "[machinetype lhcb] max_processors = '3000000000': too large (more than 2.14748e+09)"),
    (with_option("target_share = lots"), "[machinetype lhcb] target_share = 'lots': not a number"),
    (with_option("machines_dir_days = -1"), "[machinetype lhcb] machines_dir_days = '-1': must not be negative"),
    (with_option("disk_gb_per_processor = 0"), "[machinetype lhcb] disk_gb_per_processor = '0': must be at least 1"),
    (with_option("user_data_proxy = maybe"), "[machinetype lhcb] user_data_proxy = 'maybe': not true or false"),
    (with_option("legacy_proxy = 2"), "[machinetype lhcb] legacy_proxy = '2': not true or false"),
    (with_option("mjf_http = http"), "[machinetype lhcb] mjf_http = 'http': not true or false"),
    (with_option("container_command = /user_data --debug"), "[machinetype lhcb] container_command = '/user_data --debug': contains whitespace"),
    (with_option("container_command = user_data"), "[machinetype lhcb] container_command = 'user_data': must be an absolute path"),
    (with_option("container_command = /bin/sh;reboot"), "[machinetype lhcb] container_command = '/bin/sh;reboot': contains the shell metacharacter ';'"),
    (with_option("cvmfs_repositories = lhcb.cern.ch ../etc"), "[machinetype lhcb] cvmfs_repositories = 'lhcb.cern.ch ../etc': must be a file name, without \"/\""),
    (with_option("tmp_binds = /scratch/../etc"), "[machinetype lhcb] tmp_binds = '/scratch/../etc': must not contain \"..\" components"),
    (with_option("tmp_binds = /a:/b"), "[machinetype lhcb] tmp_binds = '/a:/b': a tmp_binds path must not contain \":\" or \",\""),
    (with_option("tmp_binds = /"), "[machinetype lhcb] tmp_binds = '/': must be a clean absolute path of letters, digits and ._+@=:- (no \".\", \"//\", trailing \"/\" or names starting with . or -)"),
    (with_option("heartbeat_file = logs/heartbeat"), "[machinetype lhcb] heartbeat_file = 'logs/heartbeat': must be a file name, without \"/\""),
    (with_option("accounting_fqan = /lhcb\n  /Role=x"), "[machinetype lhcb] accounting_fqan = '/lhcb\\n/Role=x': contains the control character '\\n'"),
    (with_option("user_data_option_bad-name = 1"), "[machinetype lhcb] user_data_option_bad-name = '1': the part after the prefix may contain only a-z, 0-9 and _"),
    (with_option("user_data_file_x = sub/../x"), "[machinetype lhcb] user_data_file_x = 'sub/../x': must not contain \"..\" components"),
    (DOCKER.replace("user_data = user_data", "user_data = ftp://x/y"), "[machinetype lhcb] user_data = 'ftp://x/y': must be an http(s):// URL, an absolute path or a file name"),
    (DOCKER.replace("machine_model = docker", "machine_model = singularity").replace("docker://gitlab-registry.cern.ch/lhcb/pilot:1.2", "images/x.sif"), "[machinetype lhcb] root_image = 'images/x.sif': must be docker://IMAGE, an http(s):// URL, an absolute path or a file name"),
    (DOCKER.replace("docker://gitlab-registry.cern.ch/lhcb/pilot:1.2", "docker://Bad/Image"), "[machinetype lhcb] root_image = 'docker://Bad/Image': not a valid Docker image reference"),
    (DOCKER.replace("docker://gitlab-registry.cern.ch/lhcb/pilot:1.2", "/cvmfs/x/image"), "[machinetype lhcb] root_image = '/cvmfs/x/image': a docker machinetype needs a docker://IMAGE root_image"),
    (DOCKER.replace("machine_model = docker", "machine_model = singularity"), "[machinetype lhcb] root_image = 'docker://gitlab-registry.cern.ch/lhcb/pilot:1.2': docker:// images need machine_model = docker"),
    (with_option("min_processors = 4\nmax_processors = 2"), "[machinetype lhcb] min_processors = '4': greater than max_processors (2)"),
    (with_option("min_wallclock_seconds = 100\nmax_wallclock_seconds = 50"), "[machinetype lhcb] min_wallclock_seconds = '100': greater than max_wallclock_seconds (50)"),
    ("[machinetype lhcb]\nmachine_model = docker\nuser_data = u\n", "[machinetype lhcb] root_image: required option is missing"),
    ("[machinetype lhcb]\nroot_image = docker://x\nuser_data = u\n", "[machinetype lhcb] machine_model: required option is missing"),
    ("[machinetype lhcb]\nmachine_model = docker\nroot_image = docker://x\n", "[machinetype lhcb] user_data: required option is missing"),
    ("[machinetype lhcb_prod]\n", "[machinetype lhcb_prod]: the name may contain only a-z, 0-9 and -"),
    ("[vacuum_pipe lhcb.x]\nvacuum_pipe_url = https://x/y\n", "[vacuum_pipe lhcb.x]: the name may contain only a-z, 0-9 and -"),
    ("[vacuum_pipe lhcb]\ntarget_share = 1\n", "[vacuum_pipe lhcb] vacuum_pipe_url: required option is missing"),
    ("[vacuum_pipe lhcb]\nvacuum_pipe_url = file:///etc/passwd\n", "[vacuum_pipe lhcb] vacuum_pipe_url = 'file:///etc/passwd': must be an http:// or https:// URL"),
    ("[vacuum_pipe lhcb]\nvacuum_pipe_url = https://x/y\ntarget_share = half\n", "[vacuum_pipe lhcb] target_share = 'half': not a number"),
    ("[vacuum_pipe lhcb]\nvacuum_pipe_url = https://x/y\nmax_processors = 0\n", "[vacuum_pipe lhcb] max_processors = '0': must be at least 1"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[message[:80] for _, message in BAD])
def test_each_bad_machinetype_value_is_one_clear_problem(tmp_path, text, message):
    assert problems_of(tmp_path, text) == [f"{tmp_path / 'vac.conf'} {message}"]


@pytest.mark.parametrize("model", ["vm-raw", "vm-cernvm3", "cernvm3", "vm-cernvm4", "kvm", "podman"])
def test_vm_and_other_models_are_rejected_clearly(tmp_path, model):
    problems = problems_of(tmp_path, DOCKER.replace("machine_model = docker", f"machine_model = {model}"))
    assert len(problems) == 1
    assert f"machine_model = '{model}'" in problems[0]
    assert "only docker and singularity are" in problems[0]


def test_singularity_machinetypes_need_a_singularity_user(tmp_path):
    path = tmp_path / "vac.conf"
    path.write_text("[settings]\nvac_space = s.example\n[machinetype s]\nmachine_model = singularity\n"
                    "root_image = /cvmfs/x/y\nuser_data = u\n")
    _, problems = try_load_configuration([str(path)], cpu_count=8)
    assert [str(problem) for problem in problems] == [
        f"{path} [machinetype s] machine_model = 'singularity': "
        "singularity machinetypes need singularity_user or singularity_user_prefix in [settings]"]


def test_a_bad_value_is_not_echoed_by_cross_checks(tmp_path):
    problems = problems_of(tmp_path, with_option("max_wallclock_seconds = abc\nmin_wallclock_seconds = 100000"))
    assert problems == [f"{tmp_path / 'vac.conf'} [machinetype lhcb] max_wallclock_seconds = 'abc': not an integer"]


def test_problems_in_several_files_name_the_file_each_value_came_from(tmp_path):
    first = tmp_path / "10-a.conf"
    first.write_text(SETTINGS + DOCKER)
    second = tmp_path / "20-b.conf"
    second.write_text("[machinetype lhcb]\nmax_wallclock_seconds = abc\n[settings]\nslots = 0\n")
    _, problems = try_load_configuration([str(first), str(second)], cpu_count=8)
    assert sorted(map(str, problems)) == [
        f"{second} [machinetype lhcb] max_wallclock_seconds = 'abc': not an integer",
        f"{second} [settings] slots = '0': must be at least 1"]


def test_pipe_sections_are_read_with_their_options(tmp_path):
    config = load(tmp_path, "[vacuum_pipe lhcb]\nvacuum_pipe_url = https://lhcb.example.org/lhcb.pipe\n"
                  "target_share = 4\naccounting_fqan = /lhcb\nmax_processors = 8\n")
    pipe = config.vacuum_pipes["lhcb"]
    assert (pipe.prefix, pipe.url, pipe.target_share) == ("lhcb", "https://lhcb.example.org/lhcb.pipe", 4.0)
    assert dict(pipe.options) == {"accounting_fqan": "/lhcb", "max_processors": 8}
    assert pipe.file == str(tmp_path / "vac.conf")


def test_a_pipe_share_defaults_to_zero(tmp_path):
    config = load(tmp_path, "[vacuum_pipe lhcb]\nvacuum_pipe_url = https://x.example/p\n")
    assert config.vacuum_pipes["lhcb"].target_share == 0.0


def test_incomplete_sections_named_after_a_pipe_wait_for_the_pipe(tmp_path):
    config = load(tmp_path, "[vacuum_pipe lhcb]\nvacuum_pipe_url = https://x.example/p\n"
                  "[machinetype lhcb-prod]\ntarget_share = 3\n")
    assert "lhcb-prod" not in config.machinetypes
    assert dict(config.machinetype_options["lhcb-prod"]) == {"target_share": 3.0}


def test_a_vmtype_and_a_machinetype_of_one_name_merge_with_the_machinetype_winning(tmp_path):
    config = load(tmp_path, "[vmtype lhcb]\nbackoff_seconds = 5\nfizzle_seconds = 7\n"
                  + DOCKER + "backoff_seconds = 50\n")
    lhcb = config.machinetypes["lhcb"]
    assert (lhcb.backoff_seconds, lhcb.fizzle_seconds) == (50, 7)


def test_a_broken_pipe_section_does_not_turn_its_overrides_into_errors(tmp_path):
    problems = problems_of(tmp_path, "[vacuum_pipe lhcb]\nvacuum_pipe_url = ftp://x/p\n"
                           "[machinetype lhcb-prod]\ntarget_share = 3\n")
    assert problems == [f"{tmp_path / 'vac.conf'} [vacuum_pipe lhcb] vacuum_pipe_url = "
                        "'ftp://x/p': must be an http:// or https:// URL"]
