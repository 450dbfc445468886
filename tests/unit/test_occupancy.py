"""From machines' spans to processors per machinetype over a period: exact steps, cuts, running machines."""

import datetime

import pytest

from vac.history import MachineSpan
from vac.occupancy import (
    average_processors,
    effective_end,
    format_table,
    occupancy,
    parse_time,
    peak_processors,
    resample,
)

T0 = 1_700_000_000.0
HOUR = 3600.0


def span(uuid, machinetype, processors, started, ended=None, *, slot=0, factory="f1.example.com",
         shutdown_at=None):
    return MachineSpan(uuid=uuid, factory=factory, slot=slot, machinetype=machinetype, processors=processors,
                       started_at=started, shutdown_at=shutdown_at, ended_at=ended)


def steps(series, machinetype):
    """(from, to, processors) for each step of one band, merged where the level does not change."""
    merged = []
    for i, value in enumerate(series.bands[machinetype]):
        start, end = series.times[i], series.times[i + 1]
        if merged and merged[-1][2] == value:
            merged[-1] = (merged[-1][0], end, value)
        else:
            merged.append((start, end, value))
    return merged


def test_overlapping_machines_add_up_and_each_type_has_its_band():
    spans = [span("a", "lhcb", 1, T0 + HOUR, T0 + 3 * HOUR, slot=0),
             span("b", "lhcb", 1, T0 + 2 * HOUR, T0 + 4 * HOUR, slot=1),
             span("c", "atlas", 4, T0 + 2.5 * HOUR, T0 + 3.5 * HOUR, slot=2)]
    series = occupancy(spans, T0, T0 + 5 * HOUR, now=T0 + 10 * HOUR)
    assert steps(series, "lhcb") == [(T0, T0 + HOUR, 0), (T0 + HOUR, T0 + 2 * HOUR, 1),
                                     (T0 + 2 * HOUR, T0 + 3 * HOUR, 2), (T0 + 3 * HOUR, T0 + 4 * HOUR, 1),
                                     (T0 + 4 * HOUR, T0 + 5 * HOUR, 0)]
    assert steps(series, "atlas") == [(T0, T0 + 2.5 * HOUR, 0), (T0 + 2.5 * HOUR, T0 + 3.5 * HOUR, 4),
                                      (T0 + 3.5 * HOUR, T0 + 5 * HOUR, 0)]
    assert max(series.total()) == 6
    assert series.machines == {"lhcb": 2, "atlas": 1}


def test_the_band_with_most_processor_hours_is_at_the_bottom():
    spans = [span("a", "zz-big", 8, T0, T0 + 4 * HOUR), span("b", "aa-small", 1, T0, T0 + 4 * HOUR, slot=1),
             span("c", "mm-middle", 2, T0, T0 + 4 * HOUR, slot=2)]
    series = occupancy(spans, T0, T0 + 4 * HOUR, now=T0 + 4 * HOUR)
    assert list(series.bands) == ["zz-big", "mm-middle", "aa-small"]


def test_the_period_cuts_machines_that_started_before_or_end_after_it():
    spans = [span("a", "lhcb", 2, T0 - 5 * HOUR, T0 + HOUR), span("b", "lhcb", 1, T0 + 2 * HOUR, T0 + 9 * HOUR, slot=1)]
    series = occupancy(spans, T0, T0 + 4 * HOUR, now=T0 + 10 * HOUR)
    assert series.times[0] == T0 and series.times[-1] == T0 + 4 * HOUR
    assert steps(series, "lhcb") == [(T0, T0 + HOUR, 2), (T0 + HOUR, T0 + 2 * HOUR, 0),
                                     (T0 + 2 * HOUR, T0 + 4 * HOUR, 1)]
    # Only the hours inside the period count: 2 × 1 h + 1 × 2 h.
    assert series.processor_seconds("lhcb") == pytest.approx(4 * HOUR)
    assert average_processors(series) == {"lhcb": pytest.approx(1.0)}


def test_machines_outside_the_period_do_not_appear():
    spans = [span("a", "lhcb", 1, T0 - 3 * HOUR, T0 - HOUR), span("b", "cms", 1, T0 + 5 * HOUR, T0 + 6 * HOUR)]
    series = occupancy(spans, T0, T0 + 4 * HOUR, now=T0 + 10 * HOUR)
    assert series.bands == {}
    assert series.total() == (0,)


def test_a_running_machine_occupies_until_now_and_no_further():
    now = T0 + 3 * HOUR
    series = occupancy([span("a", "lhcb", 4, T0 + HOUR)], T0, T0 + 6 * HOUR, now=now)
    assert steps(series, "lhcb") == [(T0, T0 + HOUR, 0), (T0 + HOUR, now, 4), (now, T0 + 6 * HOUR, 0)]


def test_a_lost_end_is_bounded_by_the_shutdown_time_and_the_next_machine_in_its_slot():
    shutdown = span("a", "lhcb", 1, T0, shutdown_at=T0 + 2 * HOUR)
    assert effective_end(shutdown, now=T0 + 5 * HOUR, next_start_in_slot=None) == T0 + 2 * HOUR
    assert effective_end(shutdown, now=T0 + HOUR, next_start_in_slot=None) == T0 + HOUR
    spans = [span("old", "lhcb", 1, T0, slot=3), span("new", "cms", 1, T0 + HOUR, T0 + 2 * HOUR, slot=3),
             span("other-slot", "atlas", 1, T0 + 0.5 * HOUR, T0 + 2 * HOUR, slot=4),
             span("other-factory", "atlas", 1, T0 + 0.5 * HOUR, T0 + 2 * HOUR, slot=3, factory="f2")]
    series = occupancy(spans, T0, T0 + 3 * HOUR, now=T0 + 3 * HOUR)
    # The slot started another machine at T0 + 1 h, so the first one had ended by then.
    assert steps(series, "lhcb") == [(T0, T0 + HOUR, 1), (T0 + HOUR, T0 + 3 * HOUR, 0)]


def test_a_finished_machine_keeps_its_recorded_end_even_past_now():
    series = occupancy([span("a", "lhcb", 1, T0, T0 + 2 * HOUR)], T0, T0 + 3 * HOUR, now=T0 + HOUR)
    assert series.processor_seconds("lhcb") == pytest.approx(2 * HOUR)


def test_an_end_before_the_start_counts_as_nothing():
    series = occupancy([span("a", "lhcb", 1, T0 + HOUR, T0 + 0.5 * HOUR)], T0, T0 + 2 * HOUR, now=T0 + 2 * HOUR)
    assert series.bands == {}


def test_an_empty_history_gives_an_empty_series_and_table():
    series = occupancy([], T0, T0 + HOUR, now=T0 + HOUR)
    assert series.times == (T0, T0 + HOUR)
    assert average_processors(series) == {} and peak_processors(series) == {}
    table = format_table(series, 16)
    assert table.splitlines()[1].split() == ["all", "0.00", "0", "0"]
    assert table.splitlines()[2].split()[:2] == ["idle", "16.00"]


def test_a_period_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError):
        occupancy([], T0, T0, now=T0)


def test_the_table_gives_mean_peak_share_and_machines():
    spans = [span("a", "lhcb", 1, T0, T0 + 4 * HOUR), span("b", "lhcb", 1, T0, T0 + 2 * HOUR, slot=1),
             span("c", "atlas", 4, T0 + 2 * HOUR, T0 + 4 * HOUR, slot=2)]
    table = format_table(occupancy(spans, T0, T0 + 4 * HOUR, now=T0 + 4 * HOUR), 8)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["lhcb"] == ["lhcb", "1.50", "2", "42.9%", "2"]
    assert rows["atlas"] == ["atlas", "2.00", "4", "57.1%", "1"]
    assert rows["all"] == ["all", "3.50", "5", "3"]
    assert rows["idle"][:2] == ["idle", "4.50"]


def test_resampling_keeps_processor_hours_and_draws_means():
    spans = [span("a", "lhcb", 2, T0 + 0.5 * HOUR, T0 + 1.25 * HOUR), span("b", "cms", 1, T0, T0 + 4 * HOUR, slot=1)]
    series = occupancy(spans, T0, T0 + 4 * HOUR, now=T0 + 4 * HOUR)
    coarse = resample(series, 4)
    assert coarse.times == (T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR)
    assert coarse.bands["lhcb"] == pytest.approx((1.0, 0.5, 0.0, 0.0))
    assert coarse.bands["cms"] == pytest.approx((1.0, 1.0, 1.0, 1.0))
    for name in series.bands:
        assert coarse.processor_seconds(name) == pytest.approx(series.processor_seconds(name))


@pytest.mark.parametrize("text, expected", [
    ("now", T0), ("24h", T0 - 24 * HOUR), ("7d", T0 - 7 * 24 * HOUR), ("90m", T0 - 5400), ("2w", T0 - 14 * 24 * HOUR),
    ("1.5h", T0 - 5400), ("@1699990000", 1699990000.0),
    ("2024-05-01T12:00:00+00:00", 1714564800.0), ("2024-05-01 14:00+02:00", 1714564800.0),
])
def test_times_are_ages_unix_times_or_iso(text, expected):
    assert parse_time(text, T0) == pytest.approx(expected)


def test_an_iso_time_without_offset_is_local_time():
    assert parse_time("2024-05-01T12:00", T0) == datetime.datetime(2024, 5, 1, 12, 0).timestamp()


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-3h", "@soon", "@nan", "@inf", "2024-13-01"])
def test_other_times_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="24h"):
        parse_time(text, T0)
