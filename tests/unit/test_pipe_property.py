"""Property: no pipe document, however made, raises anything but PipeError."""

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vac.config import PipeError, Settings, VacuumPipe, expand_pipe
from vac.config.pipes import PIPE_KEYS

SETTINGS = Settings(vac_space="space.example.com", total_processors=8, singularity_user="nobody")
PIPE = VacuumPipe(prefix="exp", url="https://exp.example.org/exp.pipe", target_share=3.0)
NAME_RE = re.compile(r"exp-[a-z0-9-]+")

# Edge numbers are sampled outright: random integers are almost never this large.
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                | st.sampled_from([10**400, -(10**400), 2**63, 1e308, -0.0])
                | st.builds(pow, st.just(10), st.just(5000)))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30)

# Values near the valid ones reach the deeper checks more often than random text does.
edge_numbers = st.sampled_from([0, -1, 1, 1.5, 3600.0, 2**31, 10**400, 1e308, True, "8", "1e999"])
interesting_text = st.sampled_from([
    "docker://exp/pilot:1", "/cvmfs/exp.cern.ch/x", "https://h.example/u", "../x", "/a/../b",
    "x;y", "/bin/sh", "prod", "a b", "", "..", "docker", "singularity", "vm-raw", "/scratch"])
entry_values = st.one_of(interesting_text, edge_numbers, json_scalars, json_values)
accepted = sorted(PIPE_KEYS - {"suffix"}) + ["user_data_option_x", "user_data_file_y",
                                             "user_data_option_Bad"]
entries = st.builds(
    lambda known, unknown: {**unknown, **known},
    st.fixed_dictionaries({}, optional={"suffix": st.sampled_from(["a", "b", "Bad", ""]) | json_scalars,
                                        **{key: entry_values for key in accepted}}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3))
# A valid entry with a key or two changed: most of these are created, so the
# checks on what comes out are exercised as well as the refusals.
VALID = {"suffix": "ok", "machine_model": "docker", "root_image": "docker://exp/pilot:1",
         "user_data": "https://exp.example.org/ud", "target_share": 1}
nearly_valid = st.builds(
    lambda suffix, changes: {**VALID, "suffix": suffix, **changes},
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(st.sampled_from(accepted), entry_values | interesting_text, max_size=2))
pipe_shaped = st.fixed_dictionaries(
    {"machinetypes": st.lists(nearly_valid | entries | json_values, max_size=6)},
    optional={"cache_seconds": entry_values})


def expand_or_pipe_error(document):
    try:
        expansion = expand_pipe(PIPE, document, {}, SETTINGS)
    except PipeError:
        return None
    for name, machinetype in expansion.machinetypes.items():
        assert NAME_RE.fullmatch(name) and machinetype.name == name
        for path in (machinetype.container_command, *machinetype.tmp_binds):
            assert path.startswith("/") and ".." not in path.split("/")
        for name_only in (*machinetype.cvmfs_repositories, *machinetype.user_data_files.values()):
            assert "/" not in name_only
        assert machinetype.target_share >= 0
    for problem in expansion.problems:
        assert len(str(problem)) < 2000
    return expansion


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_gives_an_expansion_or_pipe_error(value):
    expand_or_pipe_error(value)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(pipe_shaped)
def test_any_pipe_shaped_document_gives_an_expansion_or_pipe_error(document):
    expand_or_pipe_error(document)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(pipe_shaped)
def test_the_same_documents_as_json_text(document):
    try:
        text = json.dumps(document)
    except (ValueError, OverflowError):
        return
    expand_or_pipe_error(text.encode("utf-8", errors="surrogatepass"))
    expand_or_pipe_error(text)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_any_bytes_give_an_expansion_or_pipe_error(data):
    expand_or_pipe_error(data)
