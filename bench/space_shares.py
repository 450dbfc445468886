"""Space-wide occupancy per machinetype against its target share, and the week's charts.

The occupancy is vac's own (vac/occupancy.py, as `vac occupancy` computes
it) over every factory's machines; shares are of the processors in use, in
bins of BIN_SECONDS, as `vac occupancy --table` gives them.
"""

import datetime

from vac import occupancy

BIN_SECONDS = 600
UTC = datetime.timezone.utc


def space_occupancy(spans, scenario):
    """vac's occupancy series of the whole space over the scenario's period."""
    return occupancy.occupancy(spans, scenario.start, scenario.end, scenario.end)


def binned_shares(series, bin_seconds=BIN_SECONDS):
    """{machinetype: [% of the processors in use, per bin]}: each bin the mean over its time."""
    buckets = round((series.end - series.start) / bin_seconds)
    binned = occupancy.resample(series, buckets)
    used = [sum(band[i] for band in binned.bands.values()) for i in range(buckets)]
    return {name: [100.0 * band[i] / used[i] if used[i] > 0 else 0.0 for i in range(buckets)]
            for name, band in binned.bands.items()}


def share_errors(shares, targets, first_bin):
    """Mean share and mean absolute error (percentage points) per machinetype from `first_bin` on; and overall."""
    per_type = {}
    for name, target in targets.items():
        values = shares.get(name, [])[first_bin:]
        per_type[name] = {"target_percent": target, "mean_share_percent": sum(values) / len(values),
                          "mean_absolute_error_pp": sum(abs(v - target) for v in values) / len(values),
                          "worst_bin_error_pp": max(abs(v - target) for v in values)}
    overall = sum(entry["mean_absolute_error_pp"] for entry in per_type.values()) / len(per_type)
    return per_type, overall


def dip(shares, since_bin, *, within_bins, before_bins, tolerance_pp=1.0):
    """An incident's mark on one machinetype's shares (% per bin), from `since_bin` on.

    (share before: the mean of the `before_bins` before it; the lowest share
    in the `within_bins` that follow; bins from `since_bin` until the share
    is back within `tolerance_pp` of where it was, None if never).
    """
    before = sum(shares[since_bin - before_bins:since_bin]) / before_bins
    values = shares[since_bin:since_bin + within_bins]
    lowest = min(range(len(values)), key=values.__getitem__)
    back = next((i for i in range(lowest, len(shares) - since_bin)
                 if abs(shares[since_bin + i] - before) <= tolerance_pp), None)
    return before, values[lowest], back


def running_at(spans, moment, machinetype):
    """Machines of `machinetype` running at `moment` across the space."""
    return sum(1 for span in spans if span.machinetype == machinetype and span.started_at <= moment
               and (span.ended_at is None or moment < span.ended_at))


def draw_occupancy(series, path, *, total_processors, title):
    """The stacked chart `vac occupancy` draws, of the whole space."""
    occupancy.render_chart(series, path, total_processors=total_processors, title=title, zone=UTC)


def draw_shares(runs, targets, path, *, scenario, bin_seconds, title):
    """Each machinetype's share of the processors in use against its target, one panel per run.

    runs: {label: {machinetype: [% per bin]}}; the abort window is shaded and
    the software update marked.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def when(moment):
        return datetime.datetime.fromtimestamp(moment, UTC)

    palette = plt.get_cmap("tab10").colors
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(targets))}
    figure, panels = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs) + 0.6), sharex=True,
                                  layout="constrained")
    panels = panels if len(runs) > 1 else [panels]
    aborting, abort_from, abort_until, _ = scenario.abort
    updated, update_at, _ = scenario.update
    for axes, (label, shares) in zip(panels, runs.items()):
        for name in sorted(targets):
            values = shares.get(name, [])
            times = [when(scenario.start + (i + 0.5) * bin_seconds) for i in range(len(values))]
            axes.plot(times, values, color=colours[name], linewidth=1.1, label=f"{name}")
            axes.axhline(targets[name], color=colours[name], linestyle="--", linewidth=1.0)
        axes.axvspan(when(abort_from), when(abort_until), color="0.85", zorder=0)
        axes.axvline(when(update_at), color="0.4", linestyle=":", linewidth=1.2)
        axes.set_ylim(0, 100)
        axes.set_ylabel("% of processors in use")
        axes.set_title(label, loc="left", fontsize=10)
        axes.grid(axis="y", color="0.9", linewidth=0.8)
    panels[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                     title="share (target dashed)")
    panels[-1].annotate(f"{aborting} aborts", (when(abort_from), 96), fontsize=8, va="top")
    panels[-1].annotate(f"{updated} update", (when(update_at), 96), fontsize=8, va="top",
                        xytext=(3, 0), textcoords="offset points")
    locator = mdates.AutoDateLocator(tz=UTC, minticks=5, maxticks=10)
    panels[-1].xaxis.set_major_locator(locator)
    panels[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=False))
    panels[-1].set_xlabel("time (UTC)")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
