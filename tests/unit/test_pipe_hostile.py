"""A corpus of hostile pipe values: each is refused with its own message, alone."""

import dataclasses
import json

import pytest

from vac.config import PipeError, Settings, VacuumPipe, expand_pipe

SETTINGS = Settings(vac_space="space.example.com", total_processors=8, singularity_user="nobody")
PIPE = VacuumPipe(prefix="exp", url="https://exp.example.org/exp.pipe", target_share=9.0)
OTHER_PIPE = VacuumPipe(prefix="other", url="https://other.example.org/p", target_share=1.0)


def entry(suffix, **options):
    return {"suffix": suffix, "machine_model": "docker", "root_image": "docker://exp/pilot:1",
            "user_data": "https://exp.example.org/user_data", "target_share": 1, **options}


def singularity(suffix, **options):
    return {**entry(suffix, machine_model="singularity", root_image="/cvmfs/exp.cern.ch/image"),
            **options}


TRAVERSAL = [
    ("root_image", "/cvmfs/../etc/shadow", 'must not contain ".." components'),
    ("root_image", "/etc/shadow", "from a pipe, a root_image with / must be docker://, /cvmfs/... or http(s)://"),
    ("root_image", "docker://../etc", 'must not contain ".." components'),
    ("root_image", "https://exp.example.org/a/../../b", 'must not contain ".." components'),
    ("root_image", "../image.sif", 'must not contain ".." components'),
    ("root_image", "..", 'must not contain ".." components'),
    ("user_data", "/etc/shadow", "from a pipe, a user_data with / must be an http(s):// URL"),
    ("user_data", "../../etc/passwd", 'must not contain ".." components'),
    ("user_data", "https://exp.example.org/../secret", 'must not contain ".." components'),
    ("user_data", "file:///etc/passwd", "from a pipe, a user_data with / must be an http(s):// URL"),
    ("user_data", "..", 'must not contain ".." components'),
    ("container_command", "/bin/../bin/sh", 'must not contain ".." components'),
    ("container_command", "../user_data", 'must not contain ".." components'),
    ("container_command", "user_data", "must be an absolute path"),
    ("heartbeat_file", "../heartbeat", 'must be a file name, without "/"'),
    ("heartbeat_file", "logs/heartbeat", 'must be a file name, without "/"'),
    ("heartbeat_file", "..", "must be a file name of letters"),
    ("user_data_file_cert", "../../etc/shadow", 'must be a file name, without "/"'),
    ("user_data_file_cert", "/etc/shadow", 'must be a file name, without "/"'),
    ("user_data_file_cert", "..", "must be a file name of letters"),
    ("cvmfs_repositories", "exp.cern.ch ../../etc", 'must be a file name, without "/"'),
    ("cvmfs_repositories", "..", "must be a file name of letters"),
    ("cvmfs_repositories", "a/b", 'must be a file name, without "/"'),
    ("tmp_binds", "/scratch/../etc", 'must not contain ".." components'),
    ("tmp_binds", "scratch", "must be an absolute path"),
    ("tmp_binds", "/a//b", "must be a clean absolute path"),
    ("tmp_binds", "/a/./b", "must be a clean absolute path"),
    ("tmp_binds", "/a/", "must be a clean absolute path"),
    ("tmp_binds", "/", "must be a clean absolute path"),
]

SHELL = [
    ("container_command", "/bin/sh -c reboot", "contains whitespace"),
    ("container_command", "/bin/sh;reboot", "contains the shell metacharacter ';'"),
    ("container_command", "/bin/$(reboot)", "contains the shell metacharacter '$'"),
    ("container_command", "/bin/`id`", "contains the shell metacharacter '`'"),
    ("container_command", "/bin/a|b", "contains the shell metacharacter '|'"),
    ("container_command", "/bin/a&b", "contains the shell metacharacter '&'"),
    ("container_command", "/bin/a>b", "contains the shell metacharacter '>'"),
    ("container_command", "/bin/a*", "contains the shell metacharacter '*'"),
    ("container_command", "/bin/a\nb", "contains the control character '\\n'"),
    ("container_command", "/bin/a\x00b", "contains a NUL character"),
    ("container_command", "/bin/-rf", "must be a clean absolute path"),
    ("tmp_binds", "/tmp;rm", "contains the shell metacharacter ';'"),
    ("tmp_binds", "/tmp$(id)", "contains the shell metacharacter '$'"),
    ("tmp_binds", "/a|b", "contains the shell metacharacter '|'"),
    ("tmp_binds", "/a:/etc", 'a tmp_binds path must not contain ":" or ","'),
    ("tmp_binds", "/a,ro", 'a tmp_binds path must not contain ":" or ","'),
    ("tmp_binds", "/a\x00", "contains a NUL character"),
    ("root_image", "docker://img rm", "contains whitespace"),
    ("root_image", "docker://img;rm", "contains the shell metacharacter ';'"),
    ("root_image", "docker://img$(id)", "contains the shell metacharacter '$'"),
    ("root_image", "docker://img`id`", "contains the shell metacharacter '`'"),
    ("root_image", "docker://Img", "not a valid Docker image reference"),
    ("root_image", "docker://img:-tag", "not a valid Docker image reference"),
    ("root_image", "https://exp.example.org/x;y", "contains the shell metacharacter ';'"),
    ("root_image", "https://exp.example.org/x y", "contains whitespace"),
    ("root_image", "https://exp.example.org/x'y", "contains the shell metacharacter \"'\""),
    ("root_image", "docker://img\nx", "contains the control character '\\n'"),
    ("user_data", "https://exp.example.org/$(id)", "contains the shell metacharacter '$'"),
    ("user_data", "https:///no-host", "URL has no host"),
    ("user_data", "ud;rm", "contains the shell metacharacter ';'"),
    ("accounting_fqan", "/exp\nSite: forged", "contains the control character '\\n'"),
    ("image_signing_dn", "/CN=x\r", "contains the control character '\\r'"),
    ("user_data_option_x", "a\x00b", "contains a NUL character"),
    ("user_data_option_x", "\x1b[31m", "contains the control character '\\x1b'"),
    ("user_data_option_x", "a" * 70000, "longer than 65536 characters"),
]

TYPES = [
    ("max_processors", "eight", "not an integer"),
    ("max_processors", [8], "a list where an integer is needed"),
    ("max_processors", {"n": 8}, "an object where an integer is needed"),
    ("max_processors", None, "null where an integer is needed"),
    ("max_processors", True, "a boolean where an integer is needed"),
    ("max_processors", 0, "must be at least 1"),
    ("max_processors", 10**20, "too large"),
    ("max_wallclock_seconds", 3600.0, "a floating-point number where an integer is needed"),
    ("max_wallclock_seconds", "3600.0", "not an integer (a whole number is needed here)"),
    ("backoff_seconds", 1.5, "a floating-point number where an integer is needed"),
    ("backoff_seconds", -10, "must not be negative"),
    ("fizzle_seconds", False, "a boolean where an integer is needed"),
    ("heartbeat_seconds", 1e3, "a floating-point number where an integer is needed"),
    ("min_processors", 1.0, "a floating-point number where an integer is needed"),
    ("min_wallclock_seconds", "soon", "not an integer"),
    ("disk_gb_per_processor", [], "a list where an integer is needed"),
    ("root_image", 5, "an integer where a string is needed"),
    ("root_image", ["docker://exp/pilot"], "a list where a string is needed"),
    ("root_image", None, "null where a string is needed"),
    ("user_data", {"url": "https://x"}, "an object where a string is needed"),
    ("container_command", ["/bin/sh", "-c", "x"], "a list where a string is needed"),
    ("tmp_binds", ["/scratch"], "a list where a string is needed"),
    ("cvmfs_repositories", ["exp.cern.ch"], "a list where a string is needed"),
    ("target_share", "lots", "not a number"),
    ("target_share", [1], "a list where a number is needed"),
    ("target_share", True, "a boolean where a number is needed"),
    ("target_share", -1, "must not be negative"),
    ("target_share", 1e300, "too large"),
    ("user_data_proxy", "maybe", "not true or false"),
    ("user_data_proxy", 1, "an integer where true or false is needed"),
    ("legacy_proxy", None, "null where true or false is needed"),
    ("machine_model", "vm-raw", "VM machine models are not supported"),
    ("machine_model", "cernvm3", "VM machine models are not supported"),
    ("machine_model", 3, "an integer where a string is needed"),
    ("heartbeat_file", 7, "an integer where a string is needed"),
    ("user_data_option_x", 5, "an integer where a string is needed"),
    ("user_data_option_Bad", "x", "the part after the prefix may contain only a-z, 0-9 and _"),
    ("user_data_file_a-b", "x", "the part after the prefix may contain only a-z, 0-9 and _"),
    ("accounting_fqan", "", "is empty"),
]


def expand(doc, pipe=PIPE, local=None):
    return expand_pipe(pipe, json.dumps(doc).encode(), local or {}, SETTINGS)


def baseline():
    return expand({"machinetypes": [entry("a"), entry("b"), entry("c")]})


@pytest.mark.parametrize("key, value, reason", TRAVERSAL + SHELL + TYPES,
                         ids=[f"{key}={value!r:.40}" for key, value, _ in TRAVERSAL + SHELL + TYPES])
def test_a_hostile_value_skips_only_its_own_entry(key, value, reason):
    make = singularity if key == "root_image" and str(value).startswith(("/", "..")) else entry
    expansion = expand({"machinetypes": [entry("a"), make("b", **{key: value}), entry("c")]})
    assert list(expansion.machinetypes) == ["exp-a", "exp-c"]
    # The other entries are exactly what they would be had the bad one been good; only
    # a share that is itself unusable cannot count towards the pipe's total.
    good = baseline().machinetypes
    share = 4.5 if key == "target_share" else 3.0
    assert expansion.machinetypes["exp-a"] == dataclasses.replace(good["exp-a"], target_share=share)
    assert expansion.machinetypes["exp-c"] == dataclasses.replace(good["exp-c"], target_share=share)
    assert len(expansion.problems) == 1
    problem = expansion.problems[0]
    assert (problem.file, problem.section, problem.option) == (
        PIPE.url, "vacuum_pipe exp: machinetypes[1]", key)
    assert reason in problem.reason
    assert problem.reason.endswith("; machinetype exp-b not created")
    text = str(problem)
    assert text.startswith(f"{PIPE.url} [vacuum_pipe exp: machinetypes[1]] {key} = ")
    assert len(text) < 400


@pytest.mark.parametrize("suffix, reason", [
    ("Prod", "the suffix must be a string of a-z, 0-9 and -"),
    ("a b", "the suffix must be a string"),
    ("../x", "the suffix must be a string"),
    ("a/b", "the suffix must be a string"),
    ("a_b", "the suffix must be a string"),
    ("", "the suffix must be a string"),
    ("x" * 100, "at most 64 characters"),
    (5, "the suffix must be a string"),
    (None, "the suffix must be a string"),
    (["prod"], "the suffix must be a string"),
])
def test_invalid_suffixes_skip_only_their_entry(suffix, reason):
    expansion = expand({"machinetypes": [entry("a"), entry(suffix), entry("c")]})
    assert list(expansion.machinetypes) == ["exp-a", "exp-c"]
    assert expansion.machinetypes["exp-a"] == baseline().machinetypes["exp-a"]
    assert len(expansion.problems) == 1 and reason in expansion.problems[0].reason


def test_several_bad_values_in_one_entry_are_each_reported():
    expansion = expand({"machinetypes": [entry("b", tmp_binds="/a;b", heartbeat_file="../h",
                                               max_processors=1.5), entry("c")]})
    assert list(expansion.machinetypes) == ["exp-c"]
    assert sorted(problem.option for problem in expansion.problems) == [
        "heartbeat_file", "max_processors", "tmp_binds"]


def test_too_many_keys_in_an_entry_skips_it():
    many = entry("b", **{f"user_data_option_k{i}": "v" for i in range(300)})
    expansion = expand({"machinetypes": [entry("a"), many]})
    assert list(expansion.machinetypes) == ["exp-a"]
    assert "more than 256; skipped" in expansion.problems[0].reason


def test_many_unknown_keys_make_one_short_message():
    noisy = entry("b", **{f"junk{i:04d}": i for i in range(200)})
    expansion = expand({"machinetypes": [noisy]})
    assert list(expansion.machinetypes) == ["exp-b"]
    assert len(expansion.problems) == 1
    assert expansion.problems[0].reason.startswith("unknown keys ignored: junk0000, junk0001")
    assert expansion.problems[0].reason.endswith(" ...")


def test_a_huge_value_is_shortened_in_the_message():
    expansion = expand({"machinetypes": [entry("b", user_data_option_x="a" * 70000)]})
    assert len(str(expansion.problems[0])) < 400


def test_a_hostile_document_does_not_affect_another_pipe():
    good_document = json.dumps({"machinetypes": [entry("x")]}).encode()
    before = expand_pipe(OTHER_PIPE, good_document, {}, SETTINGS)
    for hostile in (b"\x00" * 10, b"[1,2", json.dumps({"machinetypes": [entry("../../x")]}).encode()):
        try:
            expand_pipe(PIPE, hostile, {}, SETTINGS)
        except PipeError:
            pass
    after = expand_pipe(OTHER_PIPE, good_document, {}, SETTINGS)
    assert after == before and list(after.machinetypes) == ["other-x"]


def test_pipe_values_never_override_the_local_files():
    local = {"exp-b": {"container_command": "/user_data"}}
    expansion = expand({"machinetypes": [entry("b", container_command="/bin/evil")]}, local=local)
    assert expansion.machinetypes["exp-b"].container_command == "/user_data"


def test_hostile_unknown_keys_are_quoted_and_cut_in_the_message():
    expansion = expand({"machinetypes": [entry("b", **{"x\nforged: line" + "y" * 100: 1})]})
    reason = expansion.problems[0].reason
    assert "\n" not in reason and len(reason) < 100
    assert reason.startswith("unknown keys ignored: 'x\\nforged: line")


def test_a_hostile_prefixed_key_is_quoted_and_cut_where_it_names_the_option():
    expansion = expand({"machinetypes": [entry("b", **{"user_data_option_\nx" + "y" * 100: "v"})]})
    problem = expansion.problems[0]
    assert "\n" not in str(problem) and problem.option.startswith("'user_data_option_\\nx")
    assert "the part after the prefix may contain only a-z, 0-9 and _" in problem.reason
