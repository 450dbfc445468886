"""What `vac` prints for each result: aligned tables, readable times, one line per event."""

import datetime
import json
import re

from vac import cli_render

NOW = 1_800_000_000.0
UTC = datetime.timezone.utc


def slot_result(number, **changes):
    result = {"slot": number, "state": "idle",
              "worker": {"state": "running", "pid": 100 + number, "starts": 1,
                         "failed_starts": 0, "last_exit": None},
              "restarts": 0, "machine": None, "machinetype": None, "processors": None,
              "container_id": None, "started_at": None, "elapsed_seconds": None,
              "shutdown_at": None, "error": None, "last_outcome": None}
    result.update(changes)
    return result


RUNNING = slot_result(
    2, state="running", machine="0123456789abcdef-uuid", machinetype="lhcb-prod", processors=1,
    container_id="c0ffee" * 10, started_at=NOW - 3725, elapsed_seconds=3725.0,
    shutdown_at=NOW + 7200, restarts=3,
    last_outcome={"machine": "feedface-uuid", "machinetype": "lhcb-prod", "code": 300,
                  "text": "Nothing to do", "ended_at": NOW - 3730})


def columns(text):
    """Each line split at runs of two or more spaces."""
    return [re.split(r" {2,}", line) for line in text.splitlines()]


def test_the_slots_table_has_its_columns_aligned_and_readable_times():
    text = cli_render.slots([slot_result(0), RUNNING,
                             slot_result(11, worker={"state": "fatal", "pid": None, "starts": 5,
                                                     "failed_starts": 5, "last_exit": "exit 1"},
                                         error="Docker engine unavailable")], NOW)
    lines = text.splitlines()
    assert columns(text)[0] == ["SLOT", "STATE", "MACHINETYPE", "MACHINE", "ELAPSED",
                                "WALL-LEFT", "RESTARTS", "LAST"]
    # Every column starts at the same offset on every line.
    header = lines[0]
    for name in ("STATE", "MACHINETYPE", "ELAPSED", "LAST"):
        offset = header.index(name)
        assert all(line[offset - 2:offset] == "  " and line[offset] != " " for line in lines)
    assert columns(text)[2] == [
        "2", "running", "lhcb-prod", "01234567", "1:02:05", "2:00:00", "3", "300 Nothing to do"]
    assert columns(text)[1][1:4] == ["idle", "-", "-"]
    # A fatal worker is what the operator must see, and the error says why.
    assert columns(text)[3][1] == "fatal"
    assert columns(text)[3][-1] == "error: Docker engine unavailable"


def test_a_long_last_message_is_shortened_in_the_table_but_whole_in_the_detail():
    long_error = "x" * 200
    entry = slot_result(1, error=long_error)
    assert len(columns(cli_render.slots([entry], NOW))[1][-1]) == cli_render.LAST_WIDTH
    assert long_error in cli_render.slot(entry, NOW)


def test_one_slot_in_detail():
    text = cli_render.slot(RUNNING, NOW, tz=UTC)
    fields = dict(line.split(":", 1) for line in text.splitlines())
    fields = {key: value.strip() for key, value in fields.items()}
    assert fields["machine"] == "0123456789abcdef-uuid"
    assert fields["container"] == "c0ffeec0ffee"
    assert fields["started"] == "2027-01-15 06:57:55 (1:02:05 ago)"
    assert fields["shutdown"] == "2027-01-15 10:00:00 (2:00:00 left)"
    assert fields["worker"] == "running, pid 102, 1 start(s), 0 failed, last exit -"
    assert fields["last machine"] == "300 Nothing to do (lhcb-prod feedface, ended 1h02m ago)"


def test_the_machinetypes_table_shows_backoff_relative_to_now():
    result = {
        "beta": {"target_share": 2.5, "running": 0, "processors": 0,
                 "backoff_until": NOW + 130, "paused": True, "pipe": None},
        "alpha": {"target_share": 1.0, "running": 3, "processors": 6,
                  "backoff_until": None, "paused": False, "pipe": "lhcb"},
    }
    assert columns(cli_render.machinetypes(result, NOW)) == [
        ["NAME", "SHARE", "RUNNING", "PROCS", "BACKOFF", "PAUSED", "PIPE"],
        ["alpha", "1", "3", "6", "-", "no", "lhcb"],
        ["beta", "2.5", "0", "0", "in 2m", "yes", "-"],
    ]


def test_relative_times():
    assert cli_render.relative(NOW + 45, NOW) == "in 45s"
    assert cli_render.relative(NOW + 3900, NOW) == "in 1h05m"
    assert cli_render.relative(NOW - 90000, NOW) == "1d1h ago"
    assert cli_render.relative(NOW, NOW) == "now"
    assert cli_render.relative(None, NOW) == "-"


def status_result(**changes):
    result = {
        "state": "running", "degraded": False, "draining": False,
        "summary": "3 slots: 1 running, 1 idle, 1 backoff",
        "slots": {"slots": 3, "running": 1, "idle": 1, "backoff": 1, "fatal": 0},
        "processors": {"total": 3, "used": 1},
        "machinetypes": {"alpha": {"target_share": 1.0, "running": 1, "processors": 1,
                                   "backoff_until": NOW + 600, "paused": True, "pipe": None}},
        "helpers": {"reaper": {"state": "running"}},
        "config_problems": [], "pipes": {}, "last_refusal": None, "uptime_seconds": 3661.5,
    }
    result.update(changes)
    return result


def test_the_status_block():
    text = cli_render.status(status_result(), NOW)
    fields = {key: value.strip() for key, value in
              (line.split(":", 1) for line in text.splitlines())}
    assert fields == {
        "state": "running, up 1:01:01",
        "slots": "3 slots: 1 running, 1 idle, 1 backoff",
        "processors": "1 of 3 in use",
        "draining": "no",
        "machinetypes": "alpha (1 running, backoff ends in 10m, paused)",
        "helpers": "reaper running",
        "pipes": "none",
        "config": "ok",
    }
    # Values line up in one column.
    assert len({line.index(line.split(":", 1)[1].strip()) for line in text.splitlines()}) == 1


def test_the_status_block_says_what_needs_attention():
    text = cli_render.status(status_result(
        degraded=True, slots={"slots": 3, "running": 0, "idle": 2, "backoff": 0, "fatal": 1},
        config_problems=["vac.conf [settings] total_processors = many: not a number"],
        last_refusal="draining",
        pipes={"lhcb": {"fetched_at": NOW - 7200, "stale": True, "error": "HTTP 503",
                        "machinetypes": ["lhcb-a", "lhcb-b"], "problems": []}}), NOW)
    assert "state:         running DEGRADED" in text
    assert "1 fatal slot(s)" in text and "vac reset-slot N" in text
    assert "not starting:  draining" in text
    assert "lhcb stale (HTTP 503), fetched 2h00m ago, 2 machinetype(s)" in text
    assert text.endswith("config:        1 problem(s), running configuration kept\n"
                         "  vac.conf [settings] total_processors = many: not a number")


def test_the_status_block_names_the_settings_a_reload_could_not_apply():
    text = cli_render.status(status_result(restart_needed=["state_dir", "docker_url"]), NOW)
    assert text.splitlines()[-1] == "restart needed for:  state_dir, docker_url"
    assert "restart needed" not in cli_render.status(status_result(restart_needed=[]), NOW)


def test_replies_of_the_changing_commands():
    assert cli_render.reply("drain", {"draining": True, "deadline": 3600}) == \
        "draining: no new machines start; running machines end in 1:00:00"
    assert cli_render.reply("drain", {"draining": True, "deadline": None}) == \
        "draining: no new machines start"
    assert cli_render.reply("undrain", {"draining": True}).startswith("still draining")
    assert cli_render.reply("pause", {"paused": ["alpha", "beta"]}) == \
        "paused machinetypes: alpha, beta"
    assert cli_render.reply("resume", {"paused": []}) == "paused machinetypes: none"
    assert cli_render.reply("stop-machine", {"slot": 2, "machine": "u-1", "reason": "disk"}) == \
        "slot 2: machine u-1 asked to stop (disk)"


def test_an_event_is_one_line_with_its_time_child_and_fields():
    line = cli_render.event({"event": "exited", "t": NOW, "child": "slot-01", "pid": 42,
                             "status": "killed by SIGKILL"}, tz=UTC)
    assert line == '08:00:00 exited slot-01 pid=42 status="killed by SIGKILL"'


def test_a_slot_state_event_shows_its_machine_briefly():
    line = cli_render.event({"event": "state", "t": NOW, "child": "slot-03", "state": "running",
                             "detail": {"slot": 3, "error": None,
                                        "machine": {"uuid": "abcdef0123456789",
                                                    "machinetype": "alpha", "processors": 1}}},
                            tz=UTC)
    assert line == "08:00:00 state slot-03 running machine=abcdef01 machinetype=alpha"


def test_event_values_that_are_bytes_or_long_stay_short():
    line = cli_render.event({"event": "pipe_document", "t": NOW, "document": b"{}" * 5000,
                             "url": "https://" + "x" * 300}, tz=UTC)
    assert "document=<10000 bytes>" in line
    assert len(line) < 200


def test_json_for_tooling_parses_back_even_with_bytes():
    event = {"event": "pipe_document", "document": b'{"machinetypes": []}', "t": NOW}
    line = cli_render.to_json(event, lines=True)
    assert "\n" not in line
    assert json.loads(line)["document"] == '{"machinetypes": []}'
    assert json.loads(cli_render.to_json([RUNNING])) == [RUNNING]


def test_a_capped_problem_list_is_counted_by_its_total():
    shown = [f"vac.conf [machinetype m{i}] target_share = x: not a number" for i in range(20)] + ["and 4980 more"]
    text = cli_render.status(status_result(config_problems=shown, config_problems_total=5000), NOW)
    assert "config:        5000 problem(s), running configuration kept" in text
    assert text.endswith("  and 4980 more")
