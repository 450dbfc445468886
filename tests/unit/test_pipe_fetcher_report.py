"""The pipe fetcher expands documents and sends the root checked plain data; the root
checks it again on decode, takes it in, logs what changed and shows it capped.

The documents here come as the fetcher gets them (FetchResult); every message goes
through a real frame and decode() on its way to the root's Factory.
"""

import json
import logging
import random

import pytest

from vac.config import FetchResult, Settings, VacuumPipe
from vac.config.load import load_configuration
from vac.config.machinetypes import MAX_REPOSITORIES
from vac.config.model import frozen_mapping
from vac.config.pipes import DEFAULT_CACHE_SECONDS, SHORTEST_CACHE_SECONDS
from vac.config.plain import MAX_PROBLEM_CHARS, MAX_PROBLEMS_SENT, to_plain
from vac.control.commands import STATUS_PROBLEMS_SHOWN, capped
from vac.ipc import messages
from vac.ipc.channel import RootChannel, channel_pair
from vac.ipc.framing import FrameDecoder, encode_frame
from vac.supervisor.factory import Factory
from vac.supervisor.helper_handshakes import pipe_list
from vac.workers import pipe_fetcher
from vac.workers.pipe_fetcher import MAX_MACHINETYPE_BYTES, PipeState, next_due, report

URL = "https://exp.example.org/exp.pipe"
SETTINGS = Settings(vac_space="space.example.com", total_processors=4)
PIPE = VacuumPipe(prefix="exp", url=URL, target_share=1.0)
NOW = 1_800_000_000.0
CONFIG = f"""
[settings]
vac_space = space.example.com
total_processors = 2

[vacuum_pipe exp]
vacuum_pipe_url = {URL}
target_share = 1
max_wallclock_seconds = 7200

[machinetype exp-prod]
container_command = /usr/bin/pilot
"""


def entry(suffix, **options):
    return {"suffix": suffix, "machine_model": "docker", "root_image": "docker://exp/pilot:1",
            "user_data": "https://exp.example.org/user_data", "target_share": 1, **options}


def fetched(*entries, stale=False, error=None, **top):
    top = {"cache_seconds": 600, **top}
    document = json.dumps({"machinetypes": list(entries),
                           **{key: value for key, value in top.items() if value is not None}})
    document = document.encode()
    return FetchResult(URL, document, NOW, requested=True, stale=stale, error=error)


def state(result, pipe=PIPE, local=None):
    pipe_state = PipeState(pipe, local or {})
    pipe_state.result = result
    return pipe_state


def through_a_frame(msg):
    """What the root gets: the message encoded, framed, decoded and checked."""
    (wire,) = FrameDecoder().feed(encode_frame(messages.encode(msg)))
    return messages.decode(wire)


def names(msg):
    return [machinetype["name"] for machinetype in msg.machinetypes]


# The fetcher's side.

def test_a_document_becomes_checked_plain_machinetypes_and_bounded_problems():
    msg, cache_seconds = report(state(fetched(entry("prod"), entry("evil", accounting_fqan="\ud800"),
                                              entry("test"))), SETTINGS)
    assert cache_seconds == 600
    received = through_a_frame(msg)
    assert (received.prefix, received.url, received.usable) == ("exp", URL, True)
    assert names(received) == ["exp-prod", "exp-test"], "the valid entries of the same pipe are kept"
    [problem] = received.problems
    assert problem.startswith(f"{URL} [vacuum_pipe exp: machinetypes[1]] accounting_fqan = ")
    assert "lone surrogate" in problem and "machinetype exp-evil not created" in problem
    assert received.problems_total == 1


def configuration(tmp_path, text=CONFIG):
    path = tmp_path / "vac.conf"
    path.write_text(text)
    return load_configuration([str(path)])


def test_the_local_options_take_precedence_and_a_new_list_expands_the_same_document_again(tmp_path):
    config = configuration(tmp_path)
    [item] = pipe_list(config).pipes
    pipes = pipe_fetcher._new_list({}, [item])
    pipes["exp"].result = fetched(entry("prod", container_command="/bin/evil",
                                        max_wallclock_seconds=60))
    [prod] = report(pipes["exp"], SETTINGS)[0].machinetypes
    assert prod["container_command"] == "/usr/bin/pilot", "the local [machinetype] wins"
    assert prod["max_wallclock_seconds"] == 7200, "then the [vacuum_pipe] section"

    reloaded = configuration(tmp_path, CONFIG.replace("7200", "3600"))
    again = pipe_fetcher._new_list(pipes, pipe_list(reloaded).pipes)
    assert again["exp"] is pipes["exp"], "same URL: the document in hand is kept"
    [prod] = report(again["exp"], SETTINGS)[0].machinetypes
    assert prod["max_wallclock_seconds"] == 3600


@pytest.mark.parametrize("asked, due_after", [
    (0, SHORTEST_CACHE_SECONDS), (-5, SHORTEST_CACHE_SECONDS), (1, SHORTEST_CACHE_SECONDS),
    (600, 600), (None, DEFAULT_CACHE_SECONDS)])
def test_a_pipe_is_fetched_again_no_sooner_than_the_floor(asked, due_after):
    result = fetched(entry("prod"), cache_seconds=asked)
    msg, cache_seconds = report(state(result), SETTINGS)
    assert next_due(result, cache_seconds, NOW, failures=0) == NOW + due_after
    if asked is not None and asked < SHORTEST_CACHE_SECONDS:
        assert any(f"less than vac's floor of {SHORTEST_CACHE_SECONDS} seconds" in problem
                   for problem in msg.problems)


def test_without_a_document_the_pipe_yields_nothing_and_says_why_escaped():
    result = FetchResult(URL, None, None, requested=True, error="HTTP status 503 \x1b[31mBusy")
    msg = through_a_frame(report(state(result), SETTINGS)[0])
    assert (msg.usable, msg.machinetypes, msg.fetched_at) == (False, [], None)
    assert msg.error == "HTTP status 503 \\x1b[31mBusy", "no escape sequence reaches a terminal"


def test_a_stale_copy_is_still_expanded_and_marked_stale():
    msg = through_a_frame(report(state(fetched(entry("prod"), stale=True, error="timeout")),
                                 SETTINGS)[0])
    assert (msg.usable, msg.stale, msg.error, names(msg)) == (True, True, "timeout", ["exp-prod"])


def test_a_document_unusable_as_a_whole_yields_nothing():
    result = FetchResult(URL, b"[1, 2]", NOW, requested=False)
    msg = through_a_frame(report(state(result), SETTINGS)[0])
    assert (msg.usable, msg.machinetypes) == (False, [])
    assert msg.problems == [f"{URL}: unusable document: document is a list, not a JSON object"]


def test_tens_of_thousands_of_problems_travel_as_the_first_few_and_a_count():
    bad = [entry(f"e{i}", max_processors=0, user_data_option_x="\x07" * 300) for i in range(256)]
    msg = through_a_frame(report(state(fetched(*bad)), SETTINGS)[0])
    assert msg.machinetypes == [] and msg.usable
    assert len(msg.problems) == MAX_PROBLEMS_SENT and msg.problems_total == 512
    assert all(len(problem) <= MAX_PROBLEM_CHARS for problem in msg.problems)


def test_a_machinetype_too_big_for_a_frame_is_refused_and_the_others_sent():
    # Large factory-wide user_data defaults go into every machinetype of the pipe.
    settings = Settings(vac_space="space.example.com", total_processors=4,
                        user_data_options=frozen_mapping({"big": "x" * 60000}))
    huge = entry("huge", **{f"user_data_option_o{i}": "y" * 60000 for i in range(4)})
    msg = through_a_frame(report(state(fetched(entry("a"), huge, entry("b"))), settings)[0])
    assert names(msg) == ["exp-a", "exp-b"]
    assert any("machinetype exp-huge is" in problem and f"more than the {MAX_MACHINETYPE_BYTES}"
               in problem for problem in msg.problems)


def test_the_machinetypes_of_one_pipe_stay_within_one_frame():
    settings = Settings(vac_space="space.example.com", total_processors=4,
                        user_data_options=frozen_mapping({f"o{i}": "x" * 60000 for i in range(3)}))
    msg = through_a_frame(report(state(fetched(*[entry(f"m{i}") for i in range(8)])), settings)[0])
    assert 0 < len(msg.machinetypes) < 8
    assert sum("the pipe's machinetypes come to more than" in problem
               for problem in msg.problems) == 8 - len(msg.machinetypes)


# The root's check on decode: a report that fails it fails the fetcher.

GOOD = to_plain(report(state(fetched(entry("prod"))), SETTINGS)[0].machinetypes[0])
FIELDS = {"prefix": "exp", "url": URL, "usable": True, "machinetypes": [GOOD], "problems": [],
          "problems_total": 0, "fetched_at": NOW, "stale": False, "error": None}


@pytest.mark.parametrize("change", [
    {"machinetypes": [dict(GOOD, name="other-prod")]},
    {"machinetypes": [dict(GOOD, name="exp-../x")]},
    {"machinetypes": [dict(GOOD, files_name="other")]},
    {"machinetypes": [dict(GOOD, pipe=None)]},
    {"machinetypes": [dict(GOOD, accounting_fqan="/exp\x1b[2J")]},
    {"machinetypes": [dict(GOOD, accounting_fqan="/exp/Rôle")]},
    {"machinetypes": [dict(GOOD, heartbeat_file="../../etc/shadow")]},
    {"machinetypes": [dict(GOOD, container_command="/bin/sh -c reboot")]},
    {"machinetypes": [dict(GOOD, cvmfs_repositories=[f"r{i}.ch" for i in range(MAX_REPOSITORIES + 1)])]},
    {"machinetypes": [dict(GOOD, cvmfs_repositories="exp.cern.ch")]},
    {"machinetypes": [dict(GOOD, max_processors=True)]},
    {"machinetypes": [dict(GOOD, max_processors=0)]},
    {"machinetypes": [dict(GOOD, min_processors=4, max_processors=2)]},
    {"machinetypes": [dict(GOOD, target_share=1e300)]},
    {"machinetypes": [dict(GOOD, user_data_options={"Bad-Key": "x"})]},
    {"machinetypes": [dict(GOOD, user_data_options={"x": "\x00"})]},
    {"machinetypes": [dict(GOOD, user_data_files={"x": "../../etc/shadow"})]},
    {"machinetypes": [dict(GOOD, uid=0)]},
    {"machinetypes": [{key: value for key, value in GOOD.items() if key != "root_image"}]},
    {"machinetypes": [GOOD, GOOD]},
    {"machinetypes": ["exp-prod"]},
    {"problems": ["line\nforged: line"]},
    {"problems": ["x" * (MAX_PROBLEM_CHARS + 1)]},
    {"problems": ["p"] * (MAX_PROBLEMS_SENT + 1), "problems_total": MAX_PROBLEMS_SENT + 1},
    {"problems": ["p", "q"], "problems_total": 1},
    {"problems": [5], "problems_total": 1},
    {"error": "\x1b]0;owned\x07"},
], ids=repr)
def test_a_report_the_root_cannot_trust_is_refused_on_decode(change):
    with pytest.raises(messages.MalformedMessage):
        messages.decode([messages.PROTOCOL_VERSION, "pipe_machinetypes", {**FIELDS, **change}])


def test_a_good_report_decodes():
    msg = messages.decode([messages.PROTOCOL_VERSION, "pipe_machinetypes", FIELDS])
    assert names(msg) == ["exp-prod"]


def test_the_root_channel_delivers_what_came_before_a_bad_report_and_marks_the_fetcher_failed():
    root_side, fetcher_side = channel_pair()
    channel = RootChannel(root_side)
    bad = {**FIELDS, "machinetypes": [dict(GOOD, name="local-prod")]}
    fetcher_side.sendall(encode_frame(messages.encode(messages.Heartbeat(child_id="pipe-fetcher", seq=1)))
                         + encode_frame([messages.PROTOCOL_VERSION, "pipe_machinetypes", bad]))
    # Both frames are already in the socket: one receive takes them in.
    received = channel.receive()
    assert [type(msg) for msg in received] == [messages.Heartbeat]
    assert isinstance(channel.failure, messages.MalformedMessage)
    assert "local-prod" in str(channel.failure) and "is not exp-SUFFIX" in str(channel.failure)
    fetcher_side.close()
    channel.close()


# The root's side.

@pytest.fixture
def factory(tmp_path):
    return Factory(configuration(tmp_path), factory_name="f1.example.com", rng=random.Random(1),
                   clock=lambda: NOW, load_average=lambda: 0.0)


def test_the_fetcher_gets_the_pipe_list_with_the_local_options_when_it_starts(factory):
    factory.on_message("pipe-fetcher", messages.StateReport(child_id="pipe-fetcher",
                                                            state="waiting", detail={}))
    [msg] = [msg for child, msg in factory.tick(False) if child == "pipe-fetcher"]
    received = through_a_frame(msg)
    [item] = received.pipes
    assert item["pipe"]["url"] == URL and item["pipe"]["options"] == {"max_wallclock_seconds": 7200}
    assert item["local"] == {"exp-prod": {"container_command": "/usr/bin/pilot"}}
    assert received.settings["vac_space"] == "space.example.com"


def test_the_root_takes_in_the_machinetypes_and_logs_a_pipe_only_when_it_changes(factory, caplog):
    msg = through_a_frame(report(state(fetched(entry("prod"), entry("bad", max_processors=0)),
                                       pipe=factory.config.vacuum_pipes["exp"]), SETTINGS)[0])
    with caplog.at_level(logging.INFO, logger="vac.supervisor.factory"):
        for _ in range(3):
            factory.on_message("pipe-fetcher", msg)
    assert factory.machinetypes["exp-prod"].pipe == "exp"
    assert caplog.text.count("pipe exp: 1 machinetype(s): exp-prod") == 1
    assert caplog.text.count("max_processors") == 1, "the same problem is not logged again"
    status = factory.pipe_status()["exp"]
    assert (status["machinetypes"], status["problems_total"]) == (["exp-prod"], 1)


def test_a_report_for_a_pipe_no_longer_configured_adds_nothing(factory):
    other = VacuumPipe(prefix="exp", url="https://elsewhere.example.org/p", target_share=1.0)
    factory.on_message("pipe-fetcher", through_a_frame(report(state(fetched(entry("prod")), pipe=other),
                                                              SETTINGS)[0]))
    assert "exp-prod" not in factory.machinetypes


def test_an_unusable_report_withdraws_the_pipes_machinetypes(factory):
    pipe = factory.config.vacuum_pipes["exp"]
    factory.on_message("pipe-fetcher", report(state(fetched(entry("prod")), pipe=pipe), SETTINGS)[0])
    assert "exp-prod" in factory.machinetypes
    gone = FetchResult(URL, b"{", NOW, requested=False)
    factory.on_message("pipe-fetcher", report(state(gone, pipe=pipe), SETTINGS)[0])
    assert "exp-prod" not in factory.machinetypes


def test_status_shows_the_first_problems_and_how_many_more():
    problems = [f"problem {i}" for i in range(MAX_PROBLEMS_SENT)]
    shown = capped(problems, 30000)
    assert shown[:STATUS_PROBLEMS_SHOWN] == problems[:STATUS_PROBLEMS_SHOWN]
    assert shown[STATUS_PROBLEMS_SHOWN:] == [f"and {30000 - STATUS_PROBLEMS_SHOWN} more"]
    assert capped(["one", "two"]) == ["one", "two"]
