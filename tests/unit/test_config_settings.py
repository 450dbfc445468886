"""[settings]: every option, its default, and every way it can be wrong."""

import dataclasses

import pytest

from vac.config import ConfigError, apply_overrides, load_configuration, try_load_configuration
from vac.config.model import Settings
from vac.config.settings import RESTART_ONLY, changed_restart_only, keep_restart_only


def load(tmp_path, text, cpu_count=8):
    path = tmp_path / "vac.conf"
    path.write_text("[settings]\nvac_space = space.example.com\n" + text)
    return load_configuration([str(path)], cpu_count=cpu_count)


def problems_of(tmp_path, text, cpu_count=8):
    path = tmp_path / "vac.conf"
    path.write_text(text)
    config, problems = try_load_configuration([str(path)], cpu_count=cpu_count)
    assert config is None
    return [str(problem) for problem in problems]


def test_defaults_are_vacs(tmp_path):
    settings = load(tmp_path, "", cpu_count=12).settings
    assert settings.vac_space == "space.example.com"
    assert settings.factories == (".",)
    assert settings.total_processors == 12
    assert settings.slots == 12
    assert settings.processors_per_superslot == 1
    assert settings.mb_per_processor == 2048
    assert settings.hs06_per_processor is None
    assert settings.hs06_per_processor_or_default == 1.0
    assert settings.disk_gb_per_processor is None
    assert settings.volume_group is None
    assert settings.shutdown_time is None
    assert settings.draining is False
    assert settings.overload_per_processor == 1.25
    assert settings.gocdb_sitename is None
    assert settings.udp_timeout_seconds == 10.0
    assert settings.vacmon_hostport == ()
    assert settings.singularity_user is None
    assert dict(settings.user_data_options) == {}
    assert dict(settings.machinefeatures_options) == {}


def test_our_own_defaults(tmp_path):
    settings = load(tmp_path, "").settings
    assert settings.state_dir == "/var/lib/vac"
    assert settings.machinetypes_dir == "/var/lib/vac/machinetypes"
    assert settings.control_socket == "/run/vac/control.sock"
    assert settings.admin_group is None and settings.readonly_group is None
    assert settings.scratch_backend == "directory"
    assert settings.effective_volume_group is None
    assert settings.docker_url == "unix:///var/run/docker.sock"
    assert settings.docker_timeout_seconds == 30
    assert settings.pids_limit is None
    assert settings.heartbeat_timeout_seconds == 30
    assert settings.metrics_listen is None
    assert settings.metrics_textfile is None
    assert settings.mjf_http_listen is None


@pytest.mark.parametrize("text, attribute, expected", [
    ("vac_space = Vac01.Example.COM", "vac_space", "vac01.example.com"),
    ("factories = F1.example.com . f2", "factories", ("f1.example.com", ".", "f2")),
    ("total_processors = 4", "total_processors", 4),
    ("processors_per_superslot = 8", "processors_per_superslot", 8),
    ("mb_per_processor = 4096", "mb_per_processor", 4096),
    ("hs06_per_processor = 12.5", "hs06_per_processor", 12.5),
    ("disk_gb_per_processor = 40", "disk_gb_per_processor", 40),
    ("volume_group = vg0\nscratch_backend = lvm", "volume_group", "vg0"),
    ("shutdown_time = 1700000000", "shutdown_time", 1700000000),
    ("draining = yes", "draining", True),
    ("draining = YES", "draining", True),
    ("draining = no", "draining", False),
    ("overload_per_processor = 2", "overload_per_processor", 2.0),
    ("gocdb_sitename = UKI-NORTHGRID-MAN-HEP", "gocdb_sitename", "UKI-NORTHGRID-MAN-HEP"),
    ("udp_timeout_seconds = 2.5", "udp_timeout_seconds", 2.5),
    ("vacmon_hostport = vacmon.example.com:8884 b.example:1", "vacmon_hostport",
     ("vacmon.example.com:8884", "b.example:1")),
    ("singularity_user = nobody", "singularity_user", "nobody"),
    ("singularity_command = /opt/apptainer/bin/apptainer", "singularity_command", "/opt/apptainer/bin/apptainer"),
    ("singularity_command = singularity", "singularity_command", "singularity"),
    ("singularity_cgroups = vac", "singularity_cgroups", "vac"),
    ("singularity_sweep_seconds = 5", "singularity_sweep_seconds", 5),
    ("state_dir = /srv/vac", "state_dir", "/srv/vac"),
    ("control_socket = /srv/vac/c.sock", "control_socket", "/srv/vac/c.sock"),
    ("admin_group = vacadmin", "admin_group", "vacadmin"),
    ("readonly_group = wheel", "readonly_group", "wheel"),
    ("slots = 3", "slots", 3),
    ("scratch_backend = loop", "scratch_backend", "loop"),
    ("docker_url = tcp://127.0.0.1:2375", "docker_url", "tcp://127.0.0.1:2375"),
    ("docker_timeout_seconds = 90", "docker_timeout_seconds", 90),
    ("pids_limit = 10000", "pids_limit", 10000),
    ("heartbeat_timeout_seconds = 5", "heartbeat_timeout_seconds", 5),
    ("factory_name = F1.Example.com", "factory_name", "f1.example.com"),
    ("reaper_interval_seconds = 5", "reaper_interval_seconds", 5),
    ("cvmfs_keepalive_seconds = 120", "cvmfs_keepalive_seconds", 120),
    ("orphan_grace_seconds = 40", "orphan_grace_seconds", 40),
    ("metrics_listen = 127.0.0.1:9712", "metrics_listen", "127.0.0.1:9712"),
    ("metrics_listen = 127.0.0.2:80", "metrics_listen", "127.0.0.2:80"),
    ("metrics_listen = [::1]:9712", "metrics_listen", "[::1]:9712"),
    ("metrics_textfile = /var/lib/node-exporter/vac.prom", "metrics_textfile",
     "/var/lib/node-exporter/vac.prom"),
    ("mjf_http_listen = 172.17.0.1:9713", "mjf_http_listen", "172.17.0.1:9713"),
    ("mjf_http_listen = 127.0.0.1:08080", "mjf_http_listen", "127.0.0.1:8080"),
    ("hs06_per_cpu = 9", "hs06_per_processor", 9.0),
    ("mb_per_cpu = 1024", "mb_per_processor", 1024),
    ("overload_per_cpu = 3", "overload_per_processor", 3.0),
    ("disk_gb_per_cpu = 20", "disk_gb_per_processor", 20),
    ("scratch_gb = 25", "disk_gb_per_processor", 25),
    ("cpu_per_machine = 4", "processors_per_superslot", 4),
    ("vcpu_per_machine = 2", "processors_per_superslot", 2),
])
def test_each_option_is_read(tmp_path, text, attribute, expected):
    assert getattr(load(tmp_path, text + "\n").settings, attribute) == expected


def test_prefixed_options_are_collected(tmp_path):
    settings = load(tmp_path, "user_data_option_cvmfs_proxy = http://squid:3128\n"
                    "user_data_file_hostcert = hostcert.pem\n"
                    "machinefeatures_option_site_name = Example\n").settings
    assert dict(settings.user_data_options) == {"cvmfs_proxy": "http://squid:3128"}
    assert dict(settings.user_data_files) == {"hostcert": "hostcert.pem"}
    assert dict(settings.machinefeatures_options) == {"site_name": "Example"}


def test_slots_follow_total_processors_unless_set(tmp_path):
    assert load(tmp_path, "total_processors = 6\n").settings.slots == 6
    assert load(tmp_path, "total_processors = 6\nslots = 2\n").settings.slots == 2


def test_lvm_backend_uses_vacs_volume_group_name_unless_set(tmp_path):
    assert load(tmp_path, "scratch_backend = lvm\n").settings.effective_volume_group == "vac_volume_group"
    assert load(tmp_path, "scratch_backend = lvm\nvolume_group = vg1\n").settings.effective_volume_group == "vg1"


@pytest.mark.parametrize("text, message", [
    ("total_processors = 0", "total_processors = '0': must be at least 1"),
    ("total_processors = 1.5", "total_processors = '1.5': not an integer (a whole number is needed here)"),
    ("total_processors = four", "total_processors = 'four': not an integer"),
    ("processors_per_superslot = -1", "processors_per_superslot = '-1': must be at least 1"),
    ("mb_per_processor = 2e3", "mb_per_processor = '2e3': not an integer (a whole number is needed here)"),
    ("hs06_per_processor = 0", "hs06_per_processor = '0': must be greater than 0"),
    ("hs06_per_processor = nan", "hs06_per_processor = 'nan': not a number"),
    ("hs06_per_processor = inf", "hs06_per_processor = 'inf': not a number"),
    ("hs06_per_processor = 1e999", "hs06_per_processor = '1e999': not a finite number"),
    ("disk_gb_per_processor = 0", "disk_gb_per_processor = '0': must be at least 1"),
    ("volume_group = -vg", "volume_group = '-vg': not a valid LVM volume group name"),
    ("shutdown_time = tomorrow", "shutdown_time = 'tomorrow': not an integer"),
    ("shutdown_time = -5", "shutdown_time = '-5': must not be negative"),
    ("overload_per_processor = -1", "overload_per_processor = '-1': must be greater than 0"),
    ("gocdb_sitename = Two Words", "gocdb_sitename = 'Two Words': must be one word"),
    ("udp_timeout_seconds = 0", "udp_timeout_seconds = '0': must be greater than 0"),
    ("vacmon_hostport = vacmon.example.com", "vacmon_hostport = 'vacmon.example.com': 'vacmon.example.com' is not host.domain:port"),
    ("factories = bad_name.example.com", "factories = 'bad_name.example.com': not a DNS-like name (letters, digits, - and .)"),
    ("singularity_user = root", "singularity_user = 'root': Singularity machines must not run as root"),
    ("singularity_user = no-such-user-vac", "singularity_user = 'no-such-user-vac': no such user on this host"),
    ("singularity_user = Bad;User", "singularity_user = 'Bad;User': not a valid user or group name"),
    ("singularity_user_prefix = Bad;", "singularity_user_prefix = 'Bad;': not a valid start of a user name"),
    ("singularity_user_prefix = nosuchvacprefix\nslots = 5", "singularity_user_prefix = 'nosuchvacprefix': each of the 5 slots needs its account: nosuchvacprefix00: no such user on this host; nosuchvacprefix01: no such user on this host; nosuchvacprefix02: no such user on this host and 2 more"),
    ("singularity_user = nobody\nsingularity_user_prefix = vacsing", "singularity_user_prefix = 'vacsing': set singularity_user (one account) or singularity_user_prefix (one per slot), not both"),
    ("singularity_command = bin/apptainer", "singularity_command = 'bin/apptainer': must be an absolute path"),
    ("singularity_cgroups = v1", "singularity_cgroups = 'v1': must be one of auto, systemd, vac"),
    ("singularity_sweep_seconds = 0", "singularity_sweep_seconds = '0': must be at least 1"),
    ("state_dir = relative/dir", "state_dir = 'relative/dir': must be an absolute path"),
    ("state_dir = /var/lib/../vac", "state_dir = '/var/lib/../vac': must not contain \"..\" components"),
    ("control_socket = /run/vac/$(x)", "control_socket = '/run/vac/$(x)': contains the shell metacharacter '$'"),
    ("admin_group = 0bad group", "admin_group = '0bad group': not a valid user or group name"),
    ("readonly_group = x:y", "readonly_group = 'x:y': not a valid user or group name"),
    ("slots = 0", "slots = '0': must be at least 1"),
    ("factory_name = f1_x.example.com", "factory_name = 'f1_x.example.com': not a DNS-like name (letters, digits, - and .)"),
    ("metrics_listen = 0.0.0.0:9712", "metrics_listen = '0.0.0.0:9712': 0.0.0.0 is not a loopback address: metrics are served on this host only"),
    ("metrics_listen = 192.0.2.1:9712", "metrics_listen = '192.0.2.1:9712': 192.0.2.1 is not a loopback address: metrics are served on this host only"),
    ("metrics_listen = [::]:9712", "metrics_listen = '[::]:9712': :: is not a loopback address: metrics are served on this host only"),
    ("metrics_listen = localhost:9712", "metrics_listen = 'localhost:9712': 'localhost' is not an IP address (names are not accepted)"),
    ("metrics_listen = 127.0.0.1", "metrics_listen = '127.0.0.1': must be IP:PORT, e.g. 127.0.0.1:9712 or [::1]:9712"),
    ("metrics_listen = 127.0.0.1:70000", "metrics_listen = '127.0.0.1:70000': must be IP:PORT, e.g. 127.0.0.1:9712 or [::1]:9712"),
    ("metrics_listen = 127.0.0.1:0", "metrics_listen = '127.0.0.1:0': the port must be between 1 and 65535"),
    ("metrics_textfile = vac.prom", "metrics_textfile = 'vac.prom': must be an absolute path"),
    ("metrics_textfile = /var/lib/node-exporter/vac.txt", "metrics_textfile = '/var/lib/node-exporter/vac.txt': must end in .prom, the files node_exporter reads"),
    ("mjf_http_listen = 0.0.0.0:9713", "mjf_http_listen = '0.0.0.0:9713': 0.0.0.0 is not one address of this host (machines' URLs name it)"),
    ("mjf_http_listen = [::1]:9713", "mjf_http_listen = '[::1]:9713': '[::1]' is not an IPv4 address"),
    ("mjf_http_listen = docker0:9713", "mjf_http_listen = 'docker0:9713': 'docker0' is not an IPv4 address"),
    ("mjf_http_listen = 172.17.0.1", "mjf_http_listen = '172.17.0.1': must be IP:PORT, e.g. 172.17.0.1:9713"),
    ("mjf_http_listen = 172.17.0.1:0", "mjf_http_listen = '172.17.0.1:0': '0' is not a port between 1 and 65535"),
    ("scratch_backend = zfs", "scratch_backend = 'zfs': must be one of directory, loop, lvm"),
    ("docker_url = /var/run/docker.sock", "docker_url = '/var/run/docker.sock': must start with one of unix://, tcp://, http://, https://, ssh://"),
    ("docker_timeout_seconds = 0", "docker_timeout_seconds = '0': must be at least 1"),
    ("pids_limit = 0", "pids_limit = '0': must be at least 1"),
    ("cvmfs_keepalive_seconds = 1", "cvmfs_keepalive_seconds = '1': must be at least 5"),
    ("orphan_grace_seconds = 39", "orphan_grace_seconds = '39': must be at least 40: the reaper "
     "acts on the root's record of the slots for up to 30 s, and a younger container may be one "
     "that record does not show yet"),
    ("heartbeat_timeout_seconds = 1.5", "heartbeat_timeout_seconds = '1.5': not an integer (a whole number is needed here)"),
    ("user_data_option_bad-name = 1", "user_data_option_bad-name = '1': the part after the prefix may contain only a-z, 0-9 and _"),
    ("user_data_file_cert = ../cert.pem", "user_data_file_cert = '../cert.pem': must not contain \"..\" components"),
    ("machinefeatures_option_x = a\n  b", "machinefeatures_option_x = 'a\\nb': contains the control character '\\n'"),
    ("mb_per_processor = 99999999999999999999999999999999999", "too long for a number"),
])
def test_each_bad_value_names_file_section_option_value_and_reason(tmp_path, text, message):
    problems = problems_of(tmp_path, "[settings]\nvac_space = space.example.com\n" + text + "\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'vac.conf'} [settings] ")
    assert problems[0].endswith(message)


def test_vac_space_is_required_and_must_be_a_dns_name(tmp_path):
    assert problems_of(tmp_path, "[settings]\nmb_per_processor = 1\n") == [
        f"{tmp_path / 'vac.conf'} [settings] vac_space: required option is missing"]
    assert problems_of(tmp_path, "[settings]\nvac_space = not a name\n") == [
        f"{tmp_path / 'vac.conf'} [settings] vac_space = 'not a name': not a DNS-like name (letters, digits, - and .)"]


def test_every_problem_is_collected_not_just_the_first(tmp_path):
    problems = problems_of(tmp_path, "[settings]\ntotal_processors = x\nmb_per_processor = y\n"
                           "slots = -3\n[machinetype a]\nmachine_model = vm-raw\n")
    where = tmp_path / "vac.conf"
    assert sorted(problems) == sorted([
        f"{where} [settings] total_processors = 'x': not an integer",
        f"{where} [settings] mb_per_processor = 'y': not an integer",
        f"{where} [settings] slots = '-3': must be at least 1",
        f"{where} [settings] vac_space: required option is missing",
        f"{where} [machinetype a] machine_model = 'vm-raw': "
        "VM machine models are not supported: only docker and singularity are",
        f"{where} [machinetype a] root_image: required option is missing",
        f"{where} [machinetype a] user_data: required option is missing"])


def test_config_error_carries_the_full_list(tmp_path):
    path = tmp_path / "vac.conf"
    path.write_text("[settings]\ntotal_processors = x\nmb_per_processor = y\n")
    with pytest.raises(ConfigError) as caught:
        load_configuration([str(path)], cpu_count=4)
    assert len(caught.value.problems) == 3
    assert "total_processors = 'x': not an integer" in str(caught.value)


def warnings_of(tmp_path, text, cpu_count=8):
    return [str(warning) for warning in load(tmp_path, text, cpu_count).warnings]


def test_unknown_options_are_warnings_not_errors(tmp_path):
    assert warnings_of(tmp_path, "fix_networking = false\n") == [
        f"{tmp_path / 'vac.conf'} [settings] fix_networking = 'false': unknown option, ignored"]


def test_deprecated_spellings_warn_and_lose_to_the_current_name(tmp_path):
    config = load(tmp_path, "mb_per_cpu = 1\nmb_per_processor = 2\n")
    assert config.settings.mb_per_processor == 2
    assert [warning.reason for warning in config.warnings] == [
        "deprecated Vac option ignored: mb_per_processor is also set"]


def test_draining_values_other_than_yes_or_no_warn(tmp_path):
    config = load(tmp_path, "draining = true\n")
    assert config.settings.draining is False
    assert [warning.reason for warning in config.warnings] == ["only 'yes' drains; read as not draining"]


def test_more_processors_than_the_host_has_warns(tmp_path):
    assert [warning.reason for warning in load(tmp_path, "total_processors = 9\n", 8).warnings] == [
        "more than the 8 logical processors of this host"]


def test_volume_group_without_lvm_backend_warns(tmp_path):
    assert [warning.reason for warning in load(tmp_path, "volume_group = vg\n").warnings] == [
        "not used: set scratch_backend = lvm to put scratch space in it"]


def test_unknown_sections_warn(tmp_path):
    config = load(tmp_path, "[targetshares]\nlhcb = 1\n")
    assert [str(warning) for warning in config.warnings] == [
        f"{tmp_path / 'vac.conf'} [targetshares]: unknown section, ignored"]


def test_command_line_overrides_replace_state_dir_and_socket(tmp_path, monkeypatch):
    config = load(tmp_path, "state_dir = /srv/vac\n")
    monkeypatch.chdir(tmp_path)
    overridden = apply_overrides(config, state_dir=".vac-demo", control_socket="/tmp/c.sock")
    assert overridden.settings.state_dir == str(tmp_path / ".vac-demo")
    assert overridden.settings.control_socket == "/tmp/c.sock"
    assert config.settings.state_dir == "/srv/vac"
    assert apply_overrides(config) is config


def test_configuration_is_frozen(tmp_path):
    config = load(tmp_path, "")
    with pytest.raises(AttributeError):
        config.settings.total_processors = 3
    with pytest.raises(TypeError):
        config.settings.user_data_options["x"] = "y"


def test_a_reload_names_the_restart_only_settings_it_changes_and_keeps_their_running_values(
        tmp_path):
    running = load(tmp_path, "total_processors = 2\n").settings
    loaded = load(tmp_path, "total_processors = 4\nstate_dir = /srv/vac\nadmin_group = vacadmin\n"
                  "metrics_listen = 127.0.0.1:9712\nscratch_backend = loop\n"
                  "overload_per_processor = 3\n").settings
    assert changed_restart_only(running, loaded) == (
        "state_dir", "admin_group", "slots", "metrics_listen")
    kept = keep_restart_only(running, loaded)
    assert (kept.state_dir, kept.admin_group, kept.slots, kept.metrics_listen) == (
        "/var/lib/vac", None, 2, None)
    # The scheduler reads these at each pass; each machine's terms carry its scratch backend.
    assert (kept.total_processors, kept.scratch_backend, kept.overload_per_processor) == (
        4, "loop", 3.0)
    assert changed_restart_only(running, kept) == ()


def test_every_restart_only_name_is_a_setting():
    assert set(RESTART_ONLY) <= {field.name for field in dataclasses.fields(Settings)}


def test_singularity_accounts_are_one_for_all_or_one_per_slot():
    shared = Settings(vac_space="s.example", total_processors=3, singularity_user="nobody")
    assert shared.singularity_account(2) == "nobody"
    assert shared.singularity_accounts == ("nobody",)
    per_slot = Settings(vac_space="s.example", total_processors=3, slots=12, singularity_user_prefix="vacsing")
    assert per_slot.singularity_account(3) == "vacsing03"
    assert per_slot.singularity_account(11) == "vacsing11"
    assert per_slot.singularity_accounts[0] == "vacsing00" and len(per_slot.singularity_accounts) == 12
    assert Settings(vac_space="s.example", total_processors=1).singularity_accounts == ()
