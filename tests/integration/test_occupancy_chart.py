"""`vac occupancy` as a site runs it: a day of recorded machines in, PNG and SVG charts out."""

import os
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

import pytest

import vac
from vac import history

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(vac.__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOTAL_PROCESSORS = 16
FACTORY = "vac01.example.com"
# The day that ended at the last full hour: machines still running at its end run now, as
# they would on a real factory; the same seed gives the same machines in every run.
DAY_START = (time.time() // 3600 - 24) * 3600
# From 10:00 to 15:00 the cms machines abort a few minutes after they start (a broken
# site configuration, say) and back off; from 19:00 to 20:30 the operator drains the factory.
ABORT_FROM, ABORT_UNTIL = DAY_START + 10 * 3600, DAY_START + 15 * 3600
DRAIN_FROM, DRAIN_UNTIL = DAY_START + 19 * 3600, DAY_START + 20.5 * 3600
BACKOFF_SECONDS = 1800
MACHINETYPES = {            # name: (processors, share, shortest and longest life in hours)
    "lhcb-prod": (1, 0.5, (2, 6)),
    "atlas-mcore": (4, 0.3, (3, 8)),
    "cms-pilot": (2, 0.2, (1, 3)),
}

CONFIG = f"""
[settings]
vac_space = vac01.example.com
total_processors = {TOTAL_PROCESSORS}

[machinetype lhcb-prod]
machine_model = docker
root_image = docker://busybox:latest
user_data = lhcb.user_data
target_share = 5
"""


def record_day(state_dir, now):
    """Fill the history as a 16-processor factory would over a day: shares, an abort storm, a drain.

    Returns (machinetype, started, ended) of each machine; those ending after `now`
    are recorded as still running.
    """
    rng = random.Random(5)
    free_slots = list(range(TOTAL_PROCESSORS))
    running = []          # (end, slot, processors, machinetype, uuid, started)
    backoff_until = {name: 0.0 for name in MACHINETYPES}
    recorded = []
    clock = DAY_START - 8 * 3600   # machines started before the period are cut by it
    while clock < now:
        for machine in sorted(running):
            end, slot, processors, machinetype, uuid, started = machine
            if end > clock:
                break
            running.remove(machine)
            free_slots.append(slot)
            aborted = end - started < 600
            history.record_finished(
                state_dir, uuid=uuid, factory=FACTORY, slot=slot, machinetype=machinetype,
                processors=processors, started_at=started, ended_at=end,
                shutdown_code=700 if aborted else 200, shutdown_text="Transient problem" if aborted else "Done",
                cpu_seconds=(end - started) * processors * 0.9, shutdown_at=started + 86400)
            if aborted:
                backoff_until[machinetype] = end + BACKOFF_SECONDS
        used = sum(m[2] for m in running)
        usage = {name: sum(m[2] for m in running if m[3] == name) for name in MACHINETYPES}
        eligible = [name for name in MACHINETYPES if backoff_until[name] <= clock]
        if DRAIN_FROM <= clock < DRAIN_UNTIL:
            eligible = []
        # The type furthest below its share goes next; the 4-processor type waits for room
        # (holding processors back from the others), the rest give way to one that fits.
        eligible.sort(key=lambda name: (usage[name] / MACHINETYPES[name][1], name))
        fitting = [name for name in eligible if used + MACHINETYPES[name][0] <= TOTAL_PROCESSORS]
        machinetype = None
        if eligible and MACHINETYPES[eligible[0]][0] >= 4:
            machinetype = eligible[0] if eligible[0] in fitting else None
        elif fitting:
            machinetype = fitting[0]
        if machinetype is not None:
            processors, _, (shortest, longest) = MACHINETYPES[machinetype]
            life = rng.uniform(shortest, longest) * 3600
            if machinetype == "cms-pilot" and ABORT_FROM <= clock < ABORT_UNTIL:
                life = rng.uniform(120, 400)
            uuid = f"{len(recorded):08x}-0000-4000-8000-000000000000"
            slot = min(free_slots)
            free_slots.remove(slot)
            history.record_started(state_dir, uuid=uuid, factory=FACTORY, slot=slot, machinetype=machinetype,
                                   processors=processors, started_at=clock, shutdown_at=clock + 86400)
            running.append((clock + life, slot, processors, machinetype, uuid, clock))
            recorded.append((machinetype, clock, clock + life))
            clock += 30   # the engine starts containers a few seconds apart
        else:
            clock += 60
    return recorded


def vac(*args, cwd=None):
    """Run the `vac` command from this checkout, as a site would run the installed one."""
    return subprocess.run([sys.executable, "-m", "vac.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=CHECKOUT), cwd=cwd)


@pytest.fixture
def day_history(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    now = DAY_START + 24 * 3600
    machines = record_day(state_dir, now)
    return state_dir, now, machines


def period_args(now):
    return ["--since", f"@{DAY_START}", "--until", f"@{now}"]


@pytest.fixture
def matplotlib():
    return pytest.importorskip("matplotlib", reason="charts need the vac[occupancy] extra (in the test extra)")


def test_a_recorded_day_renders_as_png_and_svg(day_history, tmp_path, matplotlib):
    state_dir, now, machines = day_history
    assert len({machinetype for machinetype, _, _ in machines}) == 3
    png, svg = tmp_path / "day.png", tmp_path / "day.svg"
    for output in (png, svg):
        result = vac("occupancy", "--state-dir", state_dir, "--processors", TOTAL_PROCESSORS,
                     *period_args(now), "--output", output)
        assert result.returncode == 0, result.stderr
        assert f"wrote {output}" in result.stderr
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # A chart with three coloured bands, axes and a legend, not an empty canvas.
    assert len(data) > 20_000
    root = ElementTree.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = svg.read_text()
    for label in ("lhcb-prod", "atlas-mcore", "cms-pilot", "processors", f"total processors ({TOTAL_PROCESSORS})",
                  f"Processor occupancy of {FACTORY}"):
        assert label in text, label


def test_the_table_shows_shares_and_the_abort_storm_shows_in_cms_hours(day_history):
    state_dir, now, machines = day_history
    whole = vac("occupancy", "--state-dir", state_dir, "--processors", TOTAL_PROCESSORS, *period_args(now),
                "--table")
    assert whole.returncode == 0, whole.stderr
    rows = {line.split()[0]: line.split() for line in whole.stdout.splitlines()[1:]}
    assert set(rows) == {"lhcb-prod", "atlas-mcore", "cms-pilot", "all", "idle"}
    means = {name: float(rows[name][1]) for name in MACHINETYPES}
    # Shares 5:3:2 are what the scheduler aims at; the day should land near them.
    assert means["lhcb-prod"] > means["atlas-mcore"] > means["cms-pilot"] > 0
    assert float(rows["all"][1]) <= TOTAL_PROCESSORS
    assert int(rows["all"][2]) <= TOTAL_PROCESSORS
    storm = vac("occupancy", "--state-dir", state_dir, "--processors", TOTAL_PROCESSORS,
                "--since", f"@{ABORT_FROM + 3600}", "--until", f"@{ABORT_UNTIL}", "--table")
    storm_rows = {line.split()[0]: line.split() for line in storm.stdout.splitlines()[1:]}
    # Aborting machines and their backoff leave cms with a fraction of its day's mean.
    assert float(storm_rows["cms-pilot"][1]) < means["cms-pilot"] / 2
    drain = vac("occupancy", "--state-dir", state_dir, "--processors", TOTAL_PROCESSORS,
                "--since", f"@{DRAIN_UNTIL - 1800}", "--until", f"@{DRAIN_UNTIL}", "--table")
    drain_rows = {line.split()[0]: line.split() for line in drain.stdout.splitlines()[1:]}
    # The drain's trough: machines ended and none started.
    assert float(drain_rows["idle"][1]) > 4


def test_total_processors_come_from_the_configuration(day_history, tmp_path, matplotlib):
    state_dir, now, _ = day_history
    config = tmp_path / "vac.conf"
    config.write_text(CONFIG)
    svg = tmp_path / "day.svg"
    result = vac("occupancy", "--config", config, "--state-dir", state_dir, *period_args(now), "--output", svg,
                 "--title", "May Day at vac01")
    assert result.returncode == 0, result.stderr
    text = svg.read_text()
    assert f"total processors ({TOTAL_PROCESSORS})" in text
    assert "May Day at vac01" in text


def test_machines_still_running_occupy_until_now(day_history):
    state_dir, now, machines = day_history
    running_at_end = [m for m in machines if m[2] > now]
    assert running_at_end, "the recorded day should end with machines still running"
    # The machines of the recorded day's last minute are still there an hour later.
    result = vac("occupancy", "--state-dir", state_dir, "--since", "1m", "--table", "--processors", TOTAL_PROCESSORS)
    peak = int(next(line for line in result.stdout.splitlines() if line.startswith("all")).split()[2])
    expected = sum(MACHINETYPES[name][0] for name, _, _ in running_at_end)
    assert peak == expected


def test_a_relative_state_directory_is_read_as_typed(day_history):
    # As a newcomer types it after `make demo`: `vac occupancy --state-dir .vac-demo`.
    state_dir, now, _ = day_history
    result = vac("occupancy", "--state-dir", state_dir.name, "--processors", TOTAL_PROCESSORS, *period_args(now),
                 "--table", cwd=state_dir.parent)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert next(line for line in result.stdout.splitlines() if line.startswith("lhcb-prod"))


def test_a_state_directory_without_history_is_reported(tmp_path):
    result = vac("occupancy", "--state-dir", tmp_path, "--processors", 4, "--table")
    assert result.returncode == 1
    assert f"no machine history in {tmp_path}" in result.stderr


def test_a_period_with_no_machines_still_draws_its_axes(day_history, tmp_path, matplotlib):
    state_dir, now, _ = day_history
    png = tmp_path / "future.png"
    result = vac("occupancy", "--state-dir", state_dir, "--processors", TOTAL_PROCESSORS,
                 "--since", f"@{now + 30 * 86400}", "--until", f"@{now + 31 * 86400}", "--output", png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_without_matplotlib_the_chart_asks_for_the_extra_and_the_table_still_works(day_history, tmp_path):
    state_dir, now, _ = day_history
    without = ("import sys; sys.modules['matplotlib'] = None\n"
               "from vac.cli import main; sys.exit(main(sys.argv[1:]))")
    common = ["occupancy", "--state-dir", str(state_dir), "--processors", str(TOTAL_PROCESSORS), *period_args(now)]
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    chart = subprocess.run([sys.executable, "-c", without, *common, "--output", str(tmp_path / "day.png")],
                           capture_output=True, text=True, timeout=60, env=env)
    assert chart.returncode == 3
    assert "vac[occupancy]" in chart.stderr
    assert not (tmp_path / "day.png").exists()
    table = subprocess.run([sys.executable, "-c", without, *common, "--table"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:2] == ["machinetype", "mean"]
    assert "lhcb-prod" in table.stdout


@pytest.mark.parametrize("arguments, complaint", [
    (["--output", "day.jpg"], ".png or .svg"),
    (["--table", "--since", "yesterday"], "24h"),
    (["--table", "--since", "1h", "--until", "2h"], "is empty"),
    ([], "--output"),
    (["--table", "--processors", "0"], "at least 1"),
])
def test_bad_arguments_are_usage_errors_that_say_what_is_accepted(tmp_path, arguments, complaint):
    result = vac("occupancy", "--state-dir", tmp_path, "--processors", 4, *arguments)
    assert result.returncode == 2
    assert complaint in result.stderr
