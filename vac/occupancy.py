"""`vac occupancy`: processors occupied per machinetype over a period, as a stacked chart or a table.

The series is computed exactly: occupancy is a step function that changes
only when a machine starts or ends, so it is kept as its change points.
matplotlib (the `vac[occupancy]` extra) is imported only to draw.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import math
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from vac import history
from vac.history import MachineSpan

DEFAULT_STATE_DIR = "/var/lib/vac"
EXIT_FAILED, EXIT_USAGE, EXIT_NO_MATPLOTLIB = 1, 2, 3
CHART_SUFFIXES = (".png", ".svg")
# About one step per pixel of the plotting area: more changes than that are drawn as means.
CHART_BUCKETS = 800
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
RELATIVE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


# ------------------------------------------------------------------ the series (pure)

@dataclass(frozen=True)
class Occupancy:
    """Processors in use per machinetype: bands[name][i] holds from times[i] to times[i + 1]."""
    start: float
    end: float
    times: tuple[float, ...]
    bands: Mapping[str, tuple[float, ...]]   # bottom band first: the most processor-seconds
    machines: Mapping[str, int]            # machines of each type that ran in the period
    factories: tuple[str, ...] = ()

    def total(self) -> tuple[float, ...]:
        """Processors in use by all machinetypes in each step."""
        steps = len(self.times) - 1
        return tuple(sum(band[i] for band in self.bands.values()) for i in range(steps))

    def processor_seconds(self, machinetype: str) -> float:
        """The area of one band."""
        return _area(self.times, self.bands[machinetype])


def _area(times: tuple[float, ...], band: tuple[float, ...]) -> float:
    return sum(value * (times[i + 1] - times[i]) for i, value in enumerate(band))


def effective_end(span: MachineSpan, now: float, next_start_in_slot: float | None) -> float:
    """When the machine stopped occupying its processors.

    A machine with no recorded end counts until now, but never past its
    shutdown time (the factory ends it there) nor past the next start in its
    slot (a slot runs one machine at a time), so a lost end does not occupy
    processors for ever.
    """
    if span.ended_at is not None:
        end = span.ended_at
    else:
        end = now
        if span.shutdown_at is not None:
            end = min(end, span.shutdown_at)
        if next_start_in_slot is not None:
            end = min(end, next_start_in_slot)
    return max(end, span.started_at)


def _ends(spans: list[MachineSpan], now: float) -> list[float]:
    next_start: dict[tuple[str | None, int], float] = {}
    ends = [0.0] * len(spans)
    for index in sorted(range(len(spans)), key=lambda i: spans[i].started_at, reverse=True):
        span = spans[index]
        key = (span.factory, span.slot)
        ends[index] = effective_end(span, now, next_start.get(key))
        next_start[key] = span.started_at
    return ends


def occupancy(spans: Iterable[MachineSpan], start: float, end: float, now: float) -> Occupancy:
    """The occupancy per machinetype between `start` and `end` from the machines' spans."""
    if end <= start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    spans = list(spans)
    changes: dict[str, dict[float, int]] = {}
    machines: dict[str, int] = {}
    for span, span_end in zip(spans, _ends(spans, now)):
        begin, finish = max(span.started_at, start), min(span_end, end)
        if finish <= begin or span.processors <= 0:
            continue
        deltas = changes.setdefault(span.machinetype, {})
        deltas[begin] = deltas.get(begin, 0) + span.processors
        deltas[finish] = deltas.get(finish, 0) - span.processors
        machines[span.machinetype] = machines.get(span.machinetype, 0) + 1
    times = tuple(sorted({start, end}.union(*(deltas.keys() for deltas in changes.values()))))
    bands = {}
    for machinetype, deltas in changes.items():
        level, band = 0, []
        for time_point in times[:-1]:
            level += deltas.get(time_point, 0)
            band.append(level)
        bands[machinetype] = tuple(band)
    order = sorted(bands, key=lambda name: (-_area(times, bands[name]), name))
    return Occupancy(start, end, times, {name: bands[name] for name in order},
                     {name: machines[name] for name in order},
                     tuple(sorted({span.factory for span in spans if span.factory})))


def _integral_at(times: tuple[float, ...], cumulative: list[float], band: tuple[float, ...], moment: float) -> float:
    """Processor-seconds of `band` from the start to `moment` (the integral of a step function)."""
    step = min(max(bisect.bisect_right(times, moment) - 1, 0), len(band) - 1)
    return cumulative[step] + band[step] * (moment - times[step])


def resample(series: Occupancy, buckets: int) -> Occupancy:
    """The series as `buckets` equal steps, each the time-weighted mean of what it covers.

    A chart has some 800 pixels across: more steps than that would be drawn as
    a blur of hairlines. Means keep the processor-seconds of each band exactly.
    """
    width = (series.end - series.start) / buckets
    edges = tuple(series.start + i * width for i in range(buckets)) + (series.end,)
    bands = {}
    for name, band in series.bands.items():
        cumulative = [0.0]
        for i, value in enumerate(band[:-1]):
            cumulative.append(cumulative[-1] + value * (series.times[i + 1] - series.times[i]))
        integrals = [_integral_at(series.times, cumulative, band, edge) for edge in edges]
        bands[name] = tuple((integrals[i + 1] - integrals[i]) / (edges[i + 1] - edges[i]) for i in range(buckets))
    return Occupancy(series.start, series.end, edges, bands, series.machines, series.factories)


def average_processors(series: Occupancy) -> dict[str, float]:
    """Mean processors in use per machinetype over the whole period."""
    duration = series.end - series.start
    return {name: series.processor_seconds(name) / duration for name in series.bands}


def peak_processors(series: Occupancy) -> dict[str, float]:
    """Most processors each machinetype held at once."""
    return {name: max(band, default=0) for name, band in series.bands.items()}


def format_table(series: Occupancy, total_processors: int | None) -> str:
    """A plain-text table: mean and peak processors, share of the used ones, machines."""
    means, peaks = average_processors(series), peak_processors(series)
    used = sum(means.values())
    name_width = max([len("machinetype"), len("idle")] + [len(name) for name in means])
    lines = [f"{'machinetype':<{name_width}}  {'mean':>7}  {'peak':>5}  {'share':>6}  {'machines':>8}"]
    for name, mean in means.items():
        share = f"{100 * mean / used:5.1f}%" if used > 0 else "     -"
        lines.append(f"{name:<{name_width}}  {mean:7.2f}  {peaks[name]:5d}  {share:>6}  "
                     f"{series.machines[name]:8d}")
    lines.append(f"{'all':<{name_width}}  {used:7.2f}  {max(series.total(), default=0):5d}  "
                 f"{'':>6}  {sum(series.machines.values()):8d}")
    if total_processors is not None:
        lines.append(f"{'idle':<{name_width}}  {max(0.0, total_processors - used):7.2f}  "
                     f"{'':>5}  {'':>6}  {'':>8}   of {total_processors} processors")
    return "\n".join(lines) + "\n"


def parse_time(text: str, now: float) -> float:
    """A Unix time from 'now', an age ('90m', '24h', '7d', '2w'), '@UNIXTIME' or an ISO time (local if naive)."""
    text = text.strip()
    if text == "now":
        return now
    relative = RELATIVE_RE.fullmatch(text)
    if relative:
        return now - float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
    try:
        if text.startswith("@"):
            moment = float(text[1:])
            if not math.isfinite(moment):
                raise ValueError(text)
            return moment
        return datetime.datetime.fromisoformat(text).timestamp()   # a naive time is local time
    except ValueError:
        raise ValueError(f"{text!r} is neither 'now', an age like 24h or 7d, @UNIXTIME, nor an ISO time "
                         "like 2024-05-01T12:00") from None


# ------------------------------------------------------------------ the chart (matplotlib)

def _local_zone(moment: float) -> datetime.tzinfo:
    return datetime.datetime.fromtimestamp(moment).astimezone().tzinfo


def _period_text(series: Occupancy, zone: datetime.tzinfo) -> str:
    start = datetime.datetime.fromtimestamp(series.start, zone)
    end = datetime.datetime.fromtimestamp(series.end, zone)
    end_format = "%H:%M" if start.date() == end.date() else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M} to {end.strftime(end_format)} {start.tzname()}"


def _step_points(times: tuple[float, ...], values: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """The corners of a step function, so a filled area has vertical edges at each change."""
    xs, ys = [], []
    for i, value in enumerate(values):
        xs += [times[i], times[i + 1]]
        ys += [value, value]
    return xs, ys


def render_chart(series: Occupancy, output: str | Path, *, total_processors: int | None = None,
                 title: str | None = None, zone: datetime.tzinfo | None = None) -> None:
    """Draw the stacked occupancy chart to `output` (.png or .svg); ImportError without matplotlib."""
    output = Path(output)
    if output.suffix.lower() not in CHART_SUFFIXES:
        raise ValueError(f"{output}: the chart is written as .png or .svg, not {output.suffix or 'no suffix'}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Real text in SVG: searchable, selectable, and far smaller than glyph outlines.
    with plt.rc_context({"svg.fonttype": "none"}):
        figure, axes = plt.subplots(figsize=(11, 5.2), layout="constrained")
        try:
            _draw(axes, series, total_processors, title, zone or _local_zone(series.end))
            figure.savefig(output, dpi=100)
        finally:
            plt.close(figure)


def _draw(axes, series: Occupancy, total_processors: int | None, title: str | None,
          zone: datetime.tzinfo) -> None:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def local(moment: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(moment, zone)

    means = average_processors(series)
    peak = max(series.total(), default=0)
    if len(series.times) - 1 > CHART_BUCKETS:
        series = resample(series, CHART_BUCKETS)
    # Colours follow the sorted names, so a machinetype keeps its colour whatever its band's place.
    palette = plt.get_cmap("tab10" if len(series.bands) <= 10 else "tab20").colors
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(series.bands))}
    if series.bands:
        xs, _ = _step_points(series.times, next(iter(series.bands.values())))
        axes.stackplot([local(x) for x in xs],
                       *[_step_points(series.times, band)[1] for band in series.bands.values()],
                       labels=[f"{name} (mean {means[name]:.1f})" for name in series.bands],
                       colors=[colours[name] for name in series.bands], linewidth=0)
    else:
        axes.text(0.5, 0.5, "no machines ran in this period", transform=axes.transAxes,
                  ha="center", va="center", fontsize=13, color="0.4")
    if total_processors is not None:
        axes.axhline(total_processors, color="black", linestyle="--", linewidth=1.4,
                     label=f"total processors ({total_processors})")
    top = max(peak, total_processors or 0, 1)
    axes.set_ylim(0, top * 1.08 + 0.5)
    axes.set_xlim(local(series.start), local(series.end))
    locator = mdates.AutoDateLocator(tz=zone, minticks=5, maxticks=12)
    axes.xaxis.set_major_locator(locator)
    # Days as 'May 01' wherever they appear; the title gives the year, so no offset under the axis.
    formatter = mdates.ConciseDateFormatter(locator, tz=zone, show_offset=False)
    formatter.formats = ["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%S.%f"]
    formatter.zero_formats = ["", "%Y", "%b", "%b %d", "%H:%M", "%H:%M"]
    axes.xaxis.set_major_formatter(formatter)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="y", color="0.85", linewidth=0.8)
    axes.grid(axis="x", color="0.92", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.set_xlabel(f"time ({local(series.end).tzname()})")
    axes.set_ylabel("processors")
    factory = ", ".join(series.factories) or "this factory"
    axes.set_title(title or f"Processor occupancy of {factory}\n{_period_text(series, zone)}")
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        # The total line first, then the bands from the top down, as they are stacked.
        count = len(series.bands)
        order = list(range(count, len(handles))) + list(range(count - 1, -1, -1))
        axes.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                    bbox_to_anchor=(1.01, 1.0), frameon=False)


# ------------------------------------------------------------------ the command

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `vac occupancy` on the `vac` command's subparsers."""
    parser = subparsers.add_parser(
        "occupancy", help="chart the processors each machinetype occupied over a period",
        description="Draw the processors occupied per machinetype over a period as a stacked chart "
                    "(from the factory's history in the state directory), or print them as a table.")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="the factory's state directory (default: the configuration's, else "
                             f"{DEFAULT_STATE_DIR})")
    parser.add_argument("--config", action="append", metavar="FILE",
                        help="configuration file for total_processors and state_dir (repeatable; "
                             "default: the Vac file set)")
    parser.add_argument("--since", default="24h", metavar="TIME",
                        help="start of the period: an age like 24h, 7d, 90m, an ISO time like "
                             "2024-05-01T12:00 (local unless it has an offset) or @UNIXTIME (default 24h)")
    parser.add_argument("--until", default="now", metavar="TIME",
                        help="end of the period, in the same forms (default now)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the chart here (.png or .svg)")
    parser.add_argument("--title", help="the chart's title (default: factory and period)")
    parser.add_argument("--processors", type=int, metavar="N",
                        help="total processors to draw as a line (default: total_processors "
                             "from the configuration)")
    parser.add_argument("--table", action="store_true",
                        help="print mean and peak processors per machinetype (needs no matplotlib)")
    return parser


def _configured(args, err):
    """(state_dir, total_processors) from the configuration, each None if it cannot be read."""
    from vac.config.load import try_load_configuration
    try:
        config, problems = try_load_configuration(args.config)
    except OSError as error:
        config, problems = None, [error]
    if config is None:
        if args.processors is None or args.config:
            reason = problems[0] if problems else "no configuration"
            print(f"vac occupancy: configuration not read ({reason}); no total processors line "
                  "unless --processors is given", file=err)
        return None, None
    return config.settings.state_dir, config.settings.total_processors


def main_occupancy(args, out=None, err=None, now: float | None = None) -> int:
    """Run `vac occupancy`: 0 done, 1 no readable history or chart not written, 2 bad arguments, 3 no matplotlib."""
    out, err = out or sys.stdout, err or sys.stderr
    now = time.time() if now is None else now
    if args.output is None and not args.table:
        print("vac occupancy: give --output FILE.png (or .svg) for a chart, or --table", file=err)
        return EXIT_USAGE
    if args.output is not None and Path(args.output).suffix.lower() not in CHART_SUFFIXES:
        print(f"vac occupancy: {args.output}: the chart is written as .png or .svg", file=err)
        return EXIT_USAGE
    if args.processors is not None and args.processors < 1:
        print(f"vac occupancy: --processors {args.processors}: a factory has at least 1", file=err)
        return EXIT_USAGE
    try:
        start, end = parse_time(args.since, now), parse_time(args.until, now)
    except ValueError as error:
        print(f"vac occupancy: {error}", file=err)
        return EXIT_USAGE
    if end <= start:
        print(f"vac occupancy: the period from {args.since} to {args.until} is empty", file=err)
        return EXIT_USAGE
    state_dir, total = (None, None)
    if args.processors is None or args.state_dir is None:
        state_dir, total = _configured(args, err)
    state_dir = args.state_dir or state_dir or DEFAULT_STATE_DIR
    total = args.processors if args.processors is not None else total
    try:
        spans = history.machines_between(state_dir, start, end)
    except FileNotFoundError:
        print(f"vac occupancy: no machine history in {state_dir} (vacd writes "
              f"{history.HISTORY_FILE_NAME} there as machines start)", file=err)
        return EXIT_FAILED
    except (sqlite3.Error, OSError) as error:
        print(f"vac occupancy: cannot read {history.history_path(state_dir)}: {error}", file=err)
        return EXIT_FAILED
    series = occupancy(spans, start, end, now)
    if args.table:
        out.write(format_table(series, total))
    if args.output is None:
        return 0
    try:
        render_chart(series, args.output, total_processors=total, title=args.title)
    except ImportError:
        print("vac occupancy: drawing charts needs matplotlib: install it with "
              "pip install 'vac[occupancy]' (or use --table)", file=err)
        return EXIT_NO_MATPLOTLIB
    except OSError as error:
        print(f"vac occupancy: cannot write {args.output}: {error}", file=err)
        return EXIT_FAILED
    print(f"vac occupancy: wrote {args.output}", file=err)
    return 0
