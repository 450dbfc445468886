"""The effective configuration printed by vacd --check-config."""

import dataclasses
import json

from vac.config import expand_pipe, load_configuration, render_effective

CONFIG = """
[settings]
vac_space = space.example.com
total_processors = 4
hs06_per_processor = 10.5
draining = yes
factories = f1.example.com f2.example.com
user_data_option_token = s3cr3t-token
user_data_file_cert = hostcert.pem
machinefeatures_option_site = Example
mistyped_user_data_option_key = hunter2

[machinetype lhcb]
machine_model = docker
root_image = docker://lhcb/pilot:1
user_data = https://lhcb.example.org/user_data
target_share = 2
tmp_binds = /scratch /tmp
user_data_option_password = pa55word
user_data_proxy = true

[vacuum_pipe atlas]
vacuum_pipe_url = https://atlas.example.org/atlas.pipe
target_share = 3
user_data_option_key = pipe-secret
backoff_seconds = 60

[machinetype atlas-prod]
max_wallclock_seconds = 3600
"""


def load(tmp_path, text=CONFIG, name="vac.conf"):
    path = tmp_path / name
    path.write_text(text)
    return load_configuration([str(path)], cpu_count=4)


def test_secrets_are_masked_and_file_paths_kept(tmp_path):
    text = render_effective(load(tmp_path))
    for secret in ("s3cr3t-token", "pa55word", "pipe-secret", "hunter2"):
        assert secret not in text
    assert "user_data_option_token = ********" in text
    assert "user_data_option_password = ********" in text
    assert "user_data_option_key = ********" in text
    assert "user_data_file_cert = hostcert.pem" in text
    assert "user_data_proxy = true" in text


def test_effective_values_include_defaults(tmp_path):
    text = render_effective(load(tmp_path))
    assert "mb_per_processor = 2048\n" in text
    assert "slots = 4\n" in text
    assert "draining = yes\n" in text
    assert "# shutdown_time is not set\n" in text
    assert "min_wallclock_seconds = 86400\n" in text
    assert "machinegroup = lhcb\n" in text
    assert "tmp_binds = /scratch /tmp\n" in text
    assert f"#   {tmp_path / 'vac.conf'}\n" in text


def test_warnings_are_shown_without_their_values(tmp_path):
    text = render_effective(load(tmp_path))
    assert (f"# warning: {tmp_path / 'vac.conf'} [settings] mistyped_user_data_option_key: "
            "unknown option, ignored") in text


def test_the_output_reads_back_as_the_same_configuration(tmp_path):
    unmasked = CONFIG.replace("user_data_option_token = s3cr3t-token\n", "").replace(
        "user_data_option_password = pa55word\n", "").replace("user_data_option_key = pipe-secret\n", "")
    config = load(tmp_path, unmasked)
    again = load(tmp_path, render_effective(config), "effective.conf")
    assert again.settings == config.settings
    assert again.machinetypes == config.machinetypes
    assert again.vacuum_pipes == {
        name: dataclasses.replace(pipe, file=str(tmp_path / "effective.conf"))
        for name, pipe in config.vacuum_pipes.items()}
    assert again.machinetype_options["atlas-prod"] == config.machinetype_options["atlas-prod"]


def test_pipe_machinetypes_and_their_problems_can_be_shown(tmp_path):
    config = load(tmp_path)
    document = json.dumps({"machinetypes": [
        {"suffix": "prod", "machine_model": "docker", "root_image": "docker://atlas/pilot:2",
         "user_data": "https://atlas.example.org/ud", "target_share": 1},
        {"suffix": "bad", "root_image": "docker://x;y"}]})
    expansion = expand_pipe(config.vacuum_pipes["atlas"], document, config.machinetype_options,
                            config.settings)
    text = render_effective(config, [expansion])
    assert "# [machinetype atlas-prod] from the pipe\n" in text
    assert "# max_wallclock_seconds = 3600\n" in text
    assert "# problem: https://atlas.example.org/atlas.pipe [vacuum_pipe atlas: machinetypes[1]]" in text
    assert "pipe-secret" not in text
