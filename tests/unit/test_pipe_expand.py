"""Vacuum Pipe expansion: names, shares, precedence, accepted keys, whole-document failures."""

import json

import pytest

from vac.config import PipeError, Settings, VacuumPipe, effective_machinetypes, expand_pipe
from vac.config.model import Machinetype, frozen_mapping
from vac.config.pipes import MAX_DOCUMENT_BYTES, MAX_ENTRIES, SHORTEST_CACHE_SECONDS

SETTINGS = Settings(vac_space="space.example.com", total_processors=8, singularity_user="nobody",
                    user_data_options=frozen_mapping({"proxy": "http://squid:3128"}))
PIPE = VacuumPipe(prefix="lhcb", url="https://lhcb.example.org/lhcb.pipe", target_share=6.0)


def entry(suffix, **options):
    return {"suffix": suffix, "machine_model": "docker", "root_image": "docker://lhcb/pilot:1",
            "user_data": "https://lhcb.example.org/user_data", **options}


def document(*entries, **top):
    return json.dumps({"cache_seconds": 600, "machinetypes": list(entries), **top}).encode()


def expand(doc, local=None, pipe=PIPE, settings=SETTINGS):
    return expand_pipe(pipe, doc, local or {}, settings)


def test_each_entry_becomes_prefix_suffix():
    expansion = expand(document(entry("prod", target_share=1), entry("mc", target_share=1)))
    assert list(expansion.machinetypes) == ["lhcb-mc", "lhcb-prod"]
    prod = expansion.machinetypes["lhcb-prod"]
    assert (prod.name, prod.pipe, prod.files_name) == ("lhcb-prod", "lhcb", "lhcb")
    assert prod.root_image == "docker://lhcb/pilot:1"
    assert expansion.problems == () and expansion.cache_seconds == 600


def test_shares_are_the_pipe_share_split_by_entry_shares():
    expansion = expand(document(entry("a", target_share=2), entry("b", target_share=1),
                                entry("c")))
    shares = {name: mt.target_share for name, mt in expansion.machinetypes.items()}
    assert shares == {"lhcb-a": 4.0, "lhcb-b": 2.0, "lhcb-c": 0.0}


def test_no_entry_shares_means_no_share():
    expansion = expand(document(entry("a"), entry("b", target_share=0)))
    assert [mt.target_share for mt in expansion.machinetypes.values()] == [0.0, 0.0]


def test_local_section_beats_pipe_section_beats_entry():
    pipe = VacuumPipe(prefix="lhcb", url=PIPE.url, target_share=6.0,
                      options=frozen_mapping({"max_wallclock_seconds": 7200, "backoff_seconds": 60}))
    local = {"lhcb-prod": {"max_wallclock_seconds": 3600, "target_share": 9.0}}
    expansion = expand(document(entry("prod", target_share=1, max_wallclock_seconds=172800,
                                      backoff_seconds=5, fizzle_seconds=900)), local, pipe)
    prod = expansion.machinetypes["lhcb-prod"]
    assert prod.max_wallclock_seconds == 3600       # local
    assert prod.target_share == 9.0                 # local
    assert prod.backoff_seconds == 60               # [vacuum_pipe]
    assert prod.fizzle_seconds == 900               # entry


def test_factory_wide_user_data_options_reach_pipe_machinetypes():
    expansion = expand(document(entry("prod", user_data_option_queue="q1")))
    assert dict(expansion.machinetypes["lhcb-prod"].user_data_options) == {
        "proxy": "http://squid:3128", "queue": "q1"}


def test_a_local_section_may_complete_an_entry():
    local = {"lhcb-prod": {"machine_model": "docker"}}
    doc = document({"suffix": "prod", "root_image": "docker://lhcb/pilot:2", "user_data": "ud"})
    assert expand(doc, local).machinetypes["lhcb-prod"].root_image == "docker://lhcb/pilot:2"


def test_an_incomplete_local_section_without_an_entry_is_reported():
    local = {"lhcb-gone": {"target_share": 1.0}, "other": {"target_share": 1.0}}
    expansion = expand(document(entry("prod")), local)
    assert [str(problem) for problem in expansion.problems] == [
        "https://lhcb.example.org/lhcb.pipe [vacuum_pipe lhcb]: the pipe has no entry for the "
        "incomplete local [machinetype lhcb-gone], which is not created"]


ACCEPTED = [
    ("accounting_fqan", "/lhcb/Role=NULL", "accounting_fqan", "/lhcb/Role=NULL"),
    ("backoff_seconds", 120, "backoff_seconds", 120),
    ("container_command", "/usr/bin/pilot", "container_command", "/usr/bin/pilot"),
    ("cvmfs_repositories", "lhcb.cern.ch lhcb-condb.cern.ch", "cvmfs_repositories",
     ("lhcb.cern.ch", "lhcb-condb.cern.ch")),
    ("fizzle_seconds", 300, "fizzle_seconds", 300),
    ("disk_gb_per_processor", 15, "disk_gb_per_processor", 15),
    ("heartbeat_file", "heartbeat", "heartbeat_file", "heartbeat"),
    ("heartbeat_seconds", 600, "heartbeat_seconds", 600),
    ("image_signing_dn", "/DC=ch/CN=lhcb", "image_signing_dn", "/DC=ch/CN=lhcb"),
    ("legacy_proxy", True, "legacy_proxy", True),
    ("legacy_proxy", "true", "legacy_proxy", True),
    ("max_processors", 8, "max_processors", 8),
    ("max_processors", "8", "max_processors", 8),
    ("max_wallclock_seconds", 172800, "max_wallclock_seconds", 172800),
    ("min_processors", 1, "min_processors", 1),
    ("min_wallclock_seconds", 600, "min_wallclock_seconds", 600),
    ("mjf_http", True, "mjf_http", True),
    ("root_image", "docker://gitlab-registry.cern.ch:5000/lhcb/pilot@sha256:" + "a" * 64,
     "root_image", "docker://gitlab-registry.cern.ch:5000/lhcb/pilot@sha256:" + "a" * 64),
    ("tmp_binds", "/scratch /tmp", "tmp_binds", ("/scratch", "/tmp")),
    ("user_data", "https://lhcb.example.org/ud?x=1&y=2", "user_data", "https://lhcb.example.org/ud?x=1&y=2"),
    ("user_data", "user_data_file", "user_data", "user_data_file"),
    ("user_data_proxy", False, "user_data_proxy", False),
]


@pytest.mark.parametrize("key, value, attribute, expected", ACCEPTED,
                         ids=[f"{key}={value!r:.40}" for key, value, _, _ in ACCEPTED])
def test_each_accepted_key_is_read(key, value, attribute, expected):
    expansion = expand(document(entry("prod", **{key: value})))
    assert expansion.problems == ()
    assert getattr(expansion.machinetypes["lhcb-prod"], attribute) == expected


def test_singularity_entries_with_cvmfs_or_url_images():
    for image in ("/cvmfs/unpacked.cern.ch/registry.hub.docker.com/lhcb/slc6:latest",
                  "https://images.example.org/lhcb.sif", "lhcb.sif"):
        expansion = expand(document(entry("s", machine_model="singularity", root_image=image)))
        assert expansion.machinetypes["lhcb-s"].root_image == image


def test_singularity_entries_need_a_singularity_user():
    settings = Settings(vac_space="s.example", total_processors=1)
    expansion = expand(document(entry("s", machine_model="singularity", root_image="/cvmfs/x/y")),
                       settings=settings)
    assert expansion.machinetypes == {}
    assert "neither singularity_user nor singularity_user_prefix is set in [settings]" in str(expansion.problems[0])


def test_user_data_options_and_files_from_a_pipe():
    expansion = expand(document(entry("prod", user_data_option_token="secret\nline2",
                                      user_data_file_cert="cert.pem")))
    prod = expansion.machinetypes["lhcb-prod"]
    assert prod.user_data_options["token"] == "secret\nline2"
    assert dict(prod.user_data_files) == {"cert": "cert.pem"}


def test_unknown_keys_are_ignored_with_one_message_and_the_entry_is_kept():
    expansion = expand(document(entry("prod", root_device="vda", machinegroup="x", colour="red")))
    assert list(expansion.machinetypes) == ["lhcb-prod"]
    assert expansion.machinetypes["lhcb-prod"].machinegroup == "lhcb-prod"
    assert [str(problem) for problem in expansion.problems] == [
        "https://lhcb.example.org/lhcb.pipe [vacuum_pipe lhcb: machinetypes[0]]: "
        "unknown keys ignored: colour, machinegroup, root_device"]


def test_entries_without_suffix_are_skipped_with_a_message():
    expansion = expand(document({"machine_model": "docker"}, entry("prod")))
    assert list(expansion.machinetypes) == ["lhcb-prod"]
    assert [str(problem) for problem in expansion.problems] == [
        "https://lhcb.example.org/lhcb.pipe [vacuum_pipe lhcb: machinetypes[0]] suffix: "
        "entry has no suffix; skipped"]


def test_a_second_entry_with_the_same_suffix_is_skipped():
    expansion = expand(document(entry("prod", backoff_seconds=1), entry("prod", backoff_seconds=2)))
    assert expansion.machinetypes["lhcb-prod"].backoff_seconds == 1
    assert "a second entry for lhcb-prod; skipped" in str(expansion.problems[0])


def test_entries_that_are_not_objects_are_skipped():
    expansion = expand(json.dumps({"machinetypes": ["x", 3, None, entry("prod")]}))
    assert list(expansion.machinetypes) == ["lhcb-prod"]
    assert [problem.reason for problem in expansion.problems] == [
        "entry is a string, not an object; skipped", "entry is an integer, not an object; skipped",
        "entry is null, not an object; skipped"]


@pytest.mark.parametrize("doc, reason", [
    (b"{not json", "document is not valid JSON"),
    (b"", "document is not valid JSON"),
    (b"\xff\xfe{}", "document is not UTF-8 text"),
    (b"[]", "document is a list, not a JSON object"),
    (b"null", "document is null, not a JSON object"),
    (b'{"machinetypes": {}}', 'document has no "machinetypes" list'),
    (b'{"cache_seconds": 10}', 'document has no "machinetypes" list'),
    (b'{"machinetypes": [], "x": NaN}', "document is not valid JSON: NaN is not allowed"),
    (b'{"machinetypes": [' + b"[" * 100000 + b"]" * 100000 + b"]}", "document is not valid JSON"),
    (b" " * (MAX_DOCUMENT_BYTES + 1), f"more than {MAX_DOCUMENT_BYTES}"),
    (json.dumps({"machinetypes": [{}] * (MAX_ENTRIES + 1)}).encode(), f"more than {MAX_ENTRIES}"),
    ([entry("prod")], "document is a list, not a JSON object"),
], ids=["broken", "empty", "not-utf8", "list", "null", "machinetypes-object", "no-machinetypes",
        "nan", "deeply-nested", "oversize", "too-many-entries", "parsed-list"])
def test_whole_document_failures_raise_pipe_error(doc, reason):
    with pytest.raises(PipeError, match=reason[:30].replace("(", r"\(").replace("[", r"\[")):
        expand(doc)


def test_a_document_may_start_with_a_byte_order_mark():
    assert list(expand(b"\xef\xbb\xbf" + document(entry("prod"))).machinetypes) == ["lhcb-prod"]


def test_an_already_parsed_document_is_accepted():
    assert list(expand({"machinetypes": [entry("prod")]}).machinetypes) == ["lhcb-prod"]


@pytest.mark.parametrize("cache_seconds, expected", [
    (None, 3600), (60, 60), (0, 60), (1, 60), (10**12, 7 * 86400), (-5, 60), ("120", 120)])
def test_cache_seconds_default_and_bounds(cache_seconds, expected):
    top = {} if cache_seconds is None else {"cache_seconds": cache_seconds}
    doc = json.dumps({"machinetypes": [entry("prod")], **top}).encode()
    assert expand(doc).cache_seconds == expected


def test_a_cache_seconds_below_the_floor_is_raised_to_it_and_said():
    expansion = expand(document(entry("prod"), cache_seconds=0))
    assert expansion.cache_seconds == SHORTEST_CACHE_SECONDS == 60
    assert list(expansion.machinetypes) == ["lhcb-prod"], "the entries are still used"
    assert [str(problem) for problem in expansion.problems] == [
        "https://lhcb.example.org/lhcb.pipe [vacuum_pipe lhcb] cache_seconds = '0': "
        "less than vac's floor of 60 seconds; the document is fetched again after 60 seconds"]


def test_a_bad_cache_seconds_is_reported_and_the_default_used():
    expansion = expand(document(entry("prod"), cache_seconds="soon"))
    assert expansion.cache_seconds == 3600 and list(expansion.machinetypes) == ["lhcb-prod"]
    assert [str(problem) for problem in expansion.problems] == [
        "https://lhcb.example.org/lhcb.pipe [vacuum_pipe lhcb] cache_seconds = 'soon': "
        "not an integer; using 3600"]


def test_effective_machinetypes_put_pipe_versions_over_local_ones():
    local = {"lhcb-prod": Machinetype("lhcb-prod", "docker", "docker://old", "ud"),
             "atlas": Machinetype("atlas", "docker", "docker://atlas", "ud")}
    expansion = expand(document(entry("prod")))
    merged = effective_machinetypes(local, [expansion.machinetypes])
    assert list(merged) == ["atlas", "lhcb-prod"]
    assert merged["lhcb-prod"].root_image == "docker://lhcb/pilot:1"
