"""What a value may hold, from a pipe or a local file: valid Unicode, no control characters,
bounded lengths and counts, and printable ASCII wherever it ends up in an APEL record.

Whatever passes is encodable by construction: every machinetype that comes out of a
pipe is packed here as a placement carries it to a slot (where a lone surrogate
once made the root's msgpack raise and vacd exit).
"""

import json

import msgpack
import pytest

from vac.config import Settings, VacuumPipe, expand_pipe, try_load_configuration
from vac.config.machinetypes import MAX_REPOSITORIES, MAX_TMP_BINDS
from vac.config.plain import to_plain
from vac.config.values import APEL_FIELD_CHARS, MAX_VALUE_CHARS

SETTINGS = Settings(vac_space="space.example.com", total_processors=8)
PIPE = VacuumPipe(prefix="exp", url="https://exp.example.org/exp.pipe", target_share=1.0)
LONE_SURROGATE = "\ud800"


def entry(suffix, **options):
    return {"suffix": suffix, "machine_model": "docker", "root_image": "docker://exp/pilot:1",
            "user_data": "https://exp.example.org/user_data", "target_share": 1, **options}


def expand(*entries):
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile publisher would.
    document = json.dumps({"machinetypes": list(entries)}).encode()
    expansion = expand_pipe(PIPE, document, {}, SETTINGS)
    for machinetype in expansion.machinetypes.values():
        msgpack.packb(to_plain(machinetype), use_bin_type=True)
    return expansion


def refused(key, value):
    """The one problem of a pipe whose entry b has `key` = `value`, entries a and c still made."""
    expansion = expand(entry("a"), entry("b", **{key: value}), entry("c"))
    assert list(expansion.machinetypes) == ["exp-a", "exp-c"]
    [problem] = expansion.problems
    assert (problem.file, problem.section, problem.option) == (
        PIPE.url, "vacuum_pipe exp: machinetypes[1]", key), "names the pipe, the entry, the option"
    assert problem.reason.endswith("; machinetype exp-b not created")
    str(problem).encode("utf-8")  # the problem text itself is encodable
    return problem.reason


@pytest.mark.parametrize("key", ["accounting_fqan", "image_signing_dn", "user_data_option_x",
                                 "heartbeat_file", "container_command", "cvmfs_repositories"])
@pytest.mark.parametrize("value", [LONE_SURROGATE, "a\udfffb", "/exp/Role=" + LONE_SURROGATE])
def test_a_lone_surrogate_is_refused_for_its_entry_alone(key, value):
    assert "lone surrogate, which is not valid Unicode" in refused(key, value)


@pytest.mark.parametrize("value", [LONE_SURROGATE, "grüppe", "\x1b[2J"])
def test_a_pipe_cannot_set_machinegroup_so_any_value_there_is_only_ignored(value):
    # machinegroup is no pipe key (INTERFACES 2): the group is the FQAN's or the name.
    expansion = expand(entry("b", machinegroup=value), entry("c", accounting_fqan="/exp"))
    assert expansion.machinetypes["exp-b"].machinegroup == "exp-b"
    assert expansion.machinetypes["exp-c"].machinegroup == "/exp"
    assert [problem.reason for problem in expansion.problems] == [
        "unknown keys ignored: machinegroup"]


@pytest.mark.parametrize("key, value, reason", [
    ("accounting_fqan", "/exp\x1b[2J", "contains the control character '\\x1b'"),
    ("accounting_fqan", "/exp\x7f", "contains the control character '\\x7f'"),
    ("accounting_fqan", "/exp\x85group", "contains the control character '\\x85'"),
    ("image_signing_dn", "/CN=a\tb", "contains the control character '\\t'"),
    ("user_data_option_x", "line\r\n", "contains the control character '\\r'"),
    ("user_data_option_x", "bell\x07", "contains the control character '\\x07'"),
    ("user_data_option_x", "x" * (MAX_VALUE_CHARS + 1), f"longer than {MAX_VALUE_CHARS} characters"),
])
def test_control_characters_and_overlong_values_are_refused(key, value, reason):
    assert reason in refused(key, value)


def test_user_data_option_values_may_hold_lines_and_tabs():
    expansion = expand(entry("a", user_data_option_script="#!/bin/sh\n\techo ok\n"))
    assert expansion.problems == ()
    assert expansion.machinetypes["exp-a"].user_data_options["script"] == "#!/bin/sh\n\techo ok\n"


@pytest.mark.parametrize("value, reason", [
    ("/exp/Rôle=pilot", "contains 'ô': APEL records take printable ASCII only"),
    ("/exp/\u00a0", "contains '\\xa0': APEL records take printable ASCII only"),
    ("/exp/" + "x" * (APEL_FIELD_CHARS - 4), f"longer than {APEL_FIELD_CHARS} characters"),
])
def test_an_fqan_goes_into_apel_records_so_it_is_printable_ascii_within_apels_column(value, reason):
    assert reason in refused("accounting_fqan", value)


def test_an_fqan_of_255_characters_is_accepted():
    fqan = "/exp/" + "x" * (APEL_FIELD_CHARS - 5)
    expansion = expand(entry("a", accounting_fqan=fqan))
    assert expansion.machinetypes["exp-a"].accounting_fqan == fqan


@pytest.mark.parametrize("key, limit, word", [
    ("cvmfs_repositories", MAX_REPOSITORIES, "r{}.cern.ch"),
    ("tmp_binds", MAX_TMP_BINDS, "/scratch{}"),
])
def test_lists_longer_than_their_limit_are_refused_for_that_entry(key, limit, word):
    at_limit = " ".join(word.format(i) for i in range(limit))
    assert len(getattr(expand(entry("a", **{key: at_limit})).machinetypes["exp-a"], key)) == limit
    reason = refused(key, " ".join(word.format(i) for i in range(limit + 1)))
    assert f"lists {limit + 1} entries, more than the {limit} allowed per machinetype" in reason


def test_a_pipe_of_16000_repositories_is_refused_for_that_entry():
    reason = refused("cvmfs_repositories", " ".join(f"r{i}.cern.ch" for i in range(16000)))
    assert f"lists 16000 entries, more than the {MAX_REPOSITORIES}" in reason


# The same rules for the local files.

LOCAL = """[settings]
vac_space = space.example.com
{settings}

[machinetype local]
machine_model = docker
root_image = docker://local/pilot:1
user_data = user_data
{options}
"""


def local_problems(tmp_path, options="", settings=""):
    path = tmp_path / "vac.conf"
    path.write_text(LOCAL.format(options=options, settings=settings), encoding="utf-8")
    config, problems = try_load_configuration([str(path)], cpu_count=8)
    return config, [str(problem) for problem in problems]


@pytest.mark.parametrize("options, expected", [
    ("accounting_fqan = /local/Rôle", "accounting_fqan = '/local/Rôle': contains 'ô': APEL records"),
    ("machinegroup = grüppe", "machinegroup = 'grüppe': contains 'ü': APEL records"),
    (f"accounting_fqan = /{'x' * APEL_FIELD_CHARS}", f"longer than {APEL_FIELD_CHARS} characters"),
    ("image_signing_dn = /CN=a\x1bb", "contains the control character '\\x1b'"),
    ("user_data_option_x = a\x7fb", "contains the control character '\\x7f'"),
    ("cvmfs_repositories = " + " ".join(f"r{i}.cern.ch" for i in range(MAX_REPOSITORIES + 1)),
     f"lists {MAX_REPOSITORIES + 1} entries, more than the {MAX_REPOSITORIES} allowed"),
    ("tmp_binds = " + " ".join(f"/t{i}" for i in range(MAX_TMP_BINDS + 1)),
     f"lists {MAX_TMP_BINDS + 1} entries, more than the {MAX_TMP_BINDS} allowed"),
])
def test_the_local_files_are_held_to_the_same_rules(tmp_path, options, expected):
    config, problems = local_problems(tmp_path, options=options)
    assert config is None
    assert any("[machinetype local]" in problem and expected in problem for problem in problems), \
        problems


@pytest.mark.parametrize("settings, expected", [
    ("gocdb_sitename = UKI-Sïte", "gocdb_sitename = 'UKI-Sïte': contains 'ï': APEL records"),
    ("user_data_option_x = a\x1bb", "contains the control character '\\x1b'"),
    ("machinefeatures_option_x = a\x9bb", "contains the control character '\\x9b'"),
])
def test_settings_are_held_to_the_same_rules(tmp_path, settings, expected):
    config, problems = local_problems(tmp_path, settings=settings)
    assert config is None
    assert any("[settings]" in problem and expected in problem for problem in problems), problems
