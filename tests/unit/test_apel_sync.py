"""APEL sync records: per-month counts from the archive, APEL's format, `vac apel-sync` and the daily writing."""

import argparse
import calendar
import dataclasses
import io
import shutil

import pytest

from vac import apel_sync, cli
from vac.accounting import apel
from vac.accounting.apel import FinishedMachine, write_job_record

SITE = "UKI-EXAMPLE"
BASE = FinishedMachine(
    machine_uuid="", machinetype="lhcb-prod", space="vac01.example.com", factory="f1.example.com",
    processors=4, start_time=0, end_time=0, cpu_seconds=1000, mb_per_processor=2048,
    hs06_per_processor=10.5, gocdb_sitename=SITE)


def archive(tmp_path, state, ends, **changes):
    """Write one job record per end time (UTC tuples) into state's archive."""
    for end in ends:
        end_time = calendar.timegm(end)
        index = len(list(tmp_path.glob("m*")))
        machine = dataclasses.replace(BASE, machine_uuid=f"00000000-0000-4000-8000-{index:012d}",
                                      start_time=end_time - 3600, end_time=end_time, **changes)
        machine_dir = tmp_path / f"m{index}"
        machine_dir.mkdir()
        write_job_record(state, machine_dir, machine, fizzle_seconds=600)


@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    archive(tmp_path, state, [(2024, 1, 31, 23, 59, 0), (2024, 2, 1, 0, 1, 0), (2024, 2, 29, 12, 0, 0),
                              (2024, 3, 5, 0, 0, 0), (2023, 12, 31, 23, 0, 0)])
    archive(tmp_path, state, [(2024, 2, 10, 0, 0, 0)], factory="f2.example.com")
    archive(tmp_path, state, [(2024, 2, 11, 0, 0, 0)], gocdb_sitename=None, hs06_per_processor=None)
    return state


def outgoing_sync_messages(state):
    found = []
    for path in sorted((state / "apel-outgoing").rglob("*")):
        text = path.read_text() if path.is_file() else ""
        if text.startswith(apel.SYNC_HEADER):
            found.append((path, text))
    return found


def config_file(tmp_path, state_dir, **extra):
    settings = {"vac_space": "vac01.example.com", "total_processors": "4", "gocdb_sitename": SITE,
                "hs06_per_processor": "10.5", "state_dir": str(state_dir)} | extra
    path = tmp_path / "vac.conf"
    path.write_text("[settings]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None))
    return path


def run(argv, now=calendar.timegm((2024, 3, 20, 0, 0, 0))):
    parser = argparse.ArgumentParser()
    apel_sync.add_parser(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    code = apel_sync.main_apel_sync(parser.parse_args(["apel-sync", *argv]), out, err, now)
    return code, out.getvalue(), err.getvalue()


def test_a_month_sync_record_holds_that_months_count_per_submit_host_in_apels_format(state):
    now = calendar.timegm((2024, 3, 20, 8, 0, 0))

    path, jobs = apel.write_month_sync(state, [(2024, 2)], SITE, now)

    assert jobs == 3 and path.parent == state / "apel-outgoing" / "20240320"
    text = path.read_bytes().decode("ascii")
    assert text == """\
APEL-sync-message: v0.1
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f1.example.com
NumberOfJobs: 2
Month: 2
Year: 2024
%%
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f2.example.com
NumberOfJobs: 1
Month: 2
Year: 2024
%%
"""
    assert apel.outgoing_problems(text, apel.SYNC_HEADER) == []


@pytest.mark.parametrize("months, expected", [
    ([(2024, 1)], 1), ([(2024, 3)], 1), ([(2023, 12)], 1), ([(2023, 12), (2024, 1)], 2), ([(2024, 4)], 0)])
def test_each_months_count_is_the_archives(state, months, expected):
    path, jobs = apel.write_month_sync(state, months, SITE, calendar.timegm((2024, 4, 2, 0, 0, 0)))
    assert jobs == expected
    if expected == 0:
        assert path is None and not (state / "apel-outgoing" / "20240402").exists()
    else:
        counted = sum(int(r["NumberOfJobs"]) for r in apel.parse_records(path.read_text()))
        assert counted == expected


@pytest.mark.parametrize("now, months", [
    ((2024, 3, 20, 0, 0, 0), [(2024, 2), (2024, 3)]),
    ((2024, 1, 1, 0, 0, 0), [(2023, 12), (2024, 1)]),
    ((2024, 12, 31, 23, 59, 59), [(2024, 11), (2024, 12)]),
])
def test_the_daily_message_covers_the_previous_and_current_month(now, months):
    assert apel.sync_months(calendar.timegm(now)) == months


def test_the_daily_message_is_due_once_a_day():
    now = 1_700_000_000.0
    assert apel.sync_due(None, now)
    assert not apel.sync_due(now - 1, now)
    assert not apel.sync_due(now - apel.SYNC_INTERVAL_SECONDS + 1, now)
    assert apel.sync_due(now - apel.SYNC_INTERVAL_SECONDS, now)
    assert apel.sync_due(now + 3600, now)  # a stamp from the future (clock set back) must not stop it


def test_daily_sync_writes_both_months_then_waits_a_day(state):
    now = calendar.timegm((2024, 3, 20, 8, 0, 0))

    path = apel.daily_sync(state, SITE, now)

    records = apel.parse_records(path.read_text())
    assert [(r["Year"], r["Month"], r["NumberOfJobs"]) for r in records] == \
        [("2024", "2", "2"), ("2024", "3", "1"), ("2024", "2", "1")]
    assert apel.daily_sync(state, SITE, now + 3600) is None
    assert apel.daily_sync(state, SITE, now + apel.SYNC_INTERVAL_SECONDS) is not None
    assert len(outgoing_sync_messages(state)) == 2


def test_a_failed_daily_sync_is_tried_again_next_time(state, monkeypatch):
    now = calendar.timegm((2024, 3, 20, 8, 0, 0))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(apel, "write_sync_message", full_disk)
    with pytest.raises(OSError):
        apel.daily_sync(state, SITE, now)
    monkeypatch.undo()

    assert apel.daily_sync(state, SITE, now + 60) is not None


def test_vac_apel_sync_queues_the_month_and_says_so_in_one_line(state, tmp_path, monkeypatch):
    config = config_file(tmp_path, "/nonexistent")
    monkeypatch.chdir(tmp_path)

    code, out, err = run(["202402", "--config", str(config), "--state-dir", "state"])

    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and out.startswith("2024-02: 3 jobs of UKI-EXAMPLE; sync record queued as ")
    [(path, text)] = outgoing_sync_messages(state)
    assert "NumberOfJobs: 2\nMonth: 2\nYear: 2024\n%%\n" in text


def test_vac_apel_sync_defaults_to_this_month_and_the_configured_state_dir(state, tmp_path):
    code, out, _ = run(["--config", str(config_file(tmp_path, state))])
    assert code == 0 and out.startswith("2024-03: 1 jobs of UKI-EXAMPLE")


def test_vac_apel_sync_of_a_month_without_jobs_queues_nothing(state, tmp_path):
    code, out, _ = run(["202405", "--config", str(config_file(tmp_path, state))])
    assert code == 0 and "no sync record queued" in out
    assert outgoing_sync_messages(state) == []


@pytest.mark.parametrize("month", ["2024", "202413", "202400", "2024-02", "abcdef", "0001201", "196912"])
def test_vac_apel_sync_refuses_a_bad_month_with_usage_error(state, tmp_path, month):
    code, out, err = run([month, "--config", str(config_file(tmp_path, state))])
    assert code == 2 and out == "" and err.startswith("vac apel-sync: ") and "Traceback" not in err


@pytest.mark.parametrize("extra, why", [
    ({"gocdb_sitename": None}, "must both be set"),
    ({"hs06_per_processor": None}, "must both be set"),
    ({"total_processors": "many"}, "configuration not read"),
])
def test_vac_apel_sync_fails_without_a_site_whose_records_are_sent(state, tmp_path, extra, why):
    code, out, err = run(["202402", "--config", str(config_file(tmp_path, state, **extra))])
    assert code == 1 and out == "" and why in err
    assert outgoing_sync_messages(state) == []


def test_vac_apel_sync_fails_on_a_missing_state_dir_or_config(tmp_path):
    code, _, err = run(["--config", str(config_file(tmp_path, tmp_path / "nowhere"))])
    assert code == 1 and "is not a directory" in err
    code, _, err = run(["--config", str(tmp_path / "missing.conf")])
    assert code == 1 and "missing.conf" in err


def test_vac_apel_sync_fails_when_apel_outgoing_cannot_be_written(state, tmp_path):
    shutil.rmtree(state / "apel-outgoing")
    (state / "apel-outgoing").write_text("not a directory")
    code, _, err = run(["202402", "--config", str(config_file(tmp_path, state))])
    assert code == 1 and "cannot queue the sync record" in err


def test_the_vac_command_has_apel_sync(state, tmp_path, capsys):
    code = cli.main(["apel-sync", "202401", "--config", str(config_file(tmp_path, state))])
    assert code == 0 and capsys.readouterr().out.startswith("2024-01: 1 jobs of UKI-EXAMPLE")


@pytest.mark.parametrize("extra, site", [({}, SITE), ({"hs06_per_processor": None}, None),
                                         ({"gocdb_sitename": None}, None)])
def test_vacd_gives_the_reaper_the_site_only_when_records_are_sent(tmp_path, extra, site):
    from vac.config.load import load_configuration
    from vac.daemon import tree_settings
    from vac.supervisor.build import build_tree
    config = load_configuration([str(config_file(tmp_path, tmp_path, **extra))], cpu_count=4)
    settings = tree_settings(config)
    assert settings.apel_sync_site == site
    services = build_tree(settings).children[0]
    [reaper_spec] = [child for child in services.children if child.id == "reaper"]
    assert reaper_spec.args["apel_sync_site"] == site


def test_the_reapers_sweep_queues_the_daily_sync_message_and_survives_a_failure(state, caplog):
    from vac.workers import reaper
    now = calendar.timegm((2024, 3, 20, 8, 0, 0))
    shutil.move(state / "apel-outgoing", state / "sent")
    (state / "apel-outgoing").write_text("not a directory")

    # No live set: sweep() returns before it touches the container engine.
    assert reaper.sweep(None, "f1", state, None, 1, 0, now=now, apel_sync_site=SITE) == (None, 0)
    assert "cannot queue the daily APEL sync message" in caplog.text

    (state / "apel-outgoing").unlink()
    reaper.sweep(None, "f1", state, None, 1, 0, now=now + 60, apel_sync_site=SITE)
    [(_, text)] = outgoing_sync_messages(state)
    assert "Month: 2\nYear: 2024" in text and "Month: 3\nYear: 2024" in text
    reaper.sweep(None, "f1", state, None, 1, 0, now=now + 120, apel_sync_site=SITE)
    reaper.sweep(None, "f1", state, None, 1, 0, now=now + 180, apel_sync_site=None)
    assert len(outgoing_sync_messages(state)) == 1
