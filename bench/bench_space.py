"""A simulated space: target shares across 30 factories over a week, and what VacQuery costs as it grows.

No engine, no processes: vac's root Factory (scheduler, placement, aborts
and backoff, the space's rules) and its vacquery child (responder, poller,
rounds, VacQuery encode and decode) on a simulated clock and network
(space_network.py, space_factories.py).

The week (space_week.py): 30 factories of 24 processors, one processor per
machine, three experiments with shares 1:1:2 and jobs of different lengths;
cms is not offered by every third factory, so target shares only hold if
the factories that offer it run more of it than their own shares say. On
Wednesday atlas's new machines find nothing to do for four hours (each ends
after a few minutes with a 300); on Friday morning every lhcb pilot ends at
once for a software update, its slots are refilled at once, and the pilots
started in the next half hour find no work either (300) while the
experiment's queue is closed. The peer is the same week with each factory
scheduling alone, as without a space. Measured: each machinetype's share of
the processors in use across the space against its target, in 10-minute
bins after the ramp-up, as a mean absolute error.

The traffic (space_traffic.py): every poll of every factory, datagram by
datagram, as the space grows from 10 to 300 factories.

Prints tables and the target lines; writes bench/results/space.json and the
charts bench/results/space_week.png and space_week_shares.png.
"""

import dataclasses
import datetime
import os
import sys
import tempfile
import time

import report
import space_shares
import space_traffic
from space_factories import configuration
from space_week import DAY, HOUR, Experiment, Scenario, Week
from vac.workers.host_figures import read_host_figures

SEED = int(os.environ.get("BENCH_SPACE_SEED", "1"))
START = datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone.utc).timestamp()   # a Monday
EXPERIMENTS = (Experiment("atlas", 1, (1.0, 6.0)),
               Experiment("cms", 1, (12.0, 23.5)),
               Experiment("lhcb", 2, (1.0, 23.5)))
# Vac's fizzle_seconds; a backoff of ten minutes, as sites set it (Vac's default is 10 s).
OPTIONS = {"max_wallclock_seconds": 86400, "backoff_seconds": 600, "fizzle_seconds": 600}
WEEK = Scenario(
    start=START, days=7, factories=30, processors=24, experiments=EXPERIMENTS,
    machinetype_options={e.name: dict(OPTIONS, target_share=e.share) for e in EXPERIMENTS},
    lacking={"cms": 3},
    abort=("atlas", START + 2 * DAY + 10 * HOUR, START + 2 * DAY + 14 * HOUR, (2.0, 8.0)),
    update=("lhcb", START + 4 * DAY + 9 * HOUR, 30.0))
# Every factory starts empty at once and places before any poll: shares settle as machines end.
RAMP_UP_HOURS = 6
# An incident's dip: the lowest share within this long, and when the share is back within a point.
DIP_HOURS = 12
# (factories, seconds of polls measured): each window holds the polls of min(factories, 30) factories.
TRAFFIC_RUNS = ((10, 60.0, 0.0), (30, 60.0, 0.0), (100, 18.0, 0.0), (300, 6.0, 0.0), (30, 180.0, 0.01))
TARGET_SHARE_ERROR_PP = 5.0
# Traffic per factory grows no worse than linearly: per other factory of the space, 300 vs 10.
TARGET_GROWTH = 1.05


def weekday(moment, end=None):
    """'Wed 10:00' (UTC), or 'Wed 10:00-14:00' with an end."""
    def text(at, form):
        return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime(form)
    return text(moment, "%a %H:%M") + (text(end, "-%H:%M") if end is not None else "")


def incidents_text(scenario):
    aborting, abort_from, abort_until, _ = scenario.abort
    updated, update_at, _ = scenario.update
    return f"{aborting} aborts {weekday(abort_from, abort_until)}", f"every {updated} pilot ends {weekday(update_at)}"


def configurations(scenario, directory):
    """vac's configuration for each set of machinetypes a factory of the scenario offers."""
    configs = {}
    for index in range(scenario.factories):
        offers = tuple(scenario.offers(index))
        if offers not in configs:
            configs[offers] = configuration(directory, space=scenario.space, processors=scenario.processors,
                                            machinetypes={name: scenario.machinetype_options[name]
                                                          for name in offers})
    return configs


def incident(shares, machinetype, began, ended, scenario):
    """An incident's mark on a machinetype's share: its lowest, and hours from its start until back where it was."""
    first = int((began - scenario.start) // space_shares.BIN_SECONDS)
    before, lowest, back = space_shares.dip(shares[machinetype], first,
                                            within_bins=int(DIP_HOURS * HOUR // space_shares.BIN_SECONDS),
                                            before_bins=int(HOUR // space_shares.BIN_SECONDS))
    return {"share_before_percent": before, "lowest_share_percent": lowest,
            "hours_until_back": None if back is None else (back + 1) * space_shares.BIN_SECONDS / HOUR,
            "incident_hours": (ended - began) / HOUR}


def week_figures(result, scenario, targets):
    series = space_shares.space_occupancy(result.spans, scenario)
    shares = space_shares.binned_shares(series)
    first_bin = int(RAMP_UP_HOURS * HOUR // space_shares.BIN_SECONDS)
    per_type, overall = space_shares.share_errors(shares, targets, first_bin)
    aborting, abort_from, abort_until, _ = scenario.abort
    updated, update_at, closed_minutes = scenario.update
    return series, shares, {
        "share_error_pp": overall, "machinetypes": per_type, "aborted_machines": result.aborts,
        "placements": result.placements, "machines": len(result.spans),
        "abort": incident(shares, aborting, abort_from, abort_until, scenario),
        "update": dict(incident(shares, updated, update_at, update_at + closed_minutes * 60, scenario),
                       running_before=space_shares.running_at(result.spans, update_at - 1.0, updated)),
        "polls": result.polls, "answers_decoded": result.answers_decoded,
        "polls_run_whole": result.polls_run_whole, "polls_differing": result.polls_differing,
        "whole_poll_datagrams_mean": (sum(result.whole_poll_datagrams) / len(result.whole_poll_datagrams)
                                      if result.whole_poll_datagrams else None),
        "whole_poll_bytes_mean": (sum(result.whole_poll_bytes) / len(result.whole_poll_bytes)
                                  if result.whole_poll_bytes else None),
        "simulation_seconds": result.seconds}


def draw(runs, shares, scenario, targets):
    """The charts, or why they were not drawn."""
    paths = {"occupancy": os.path.join(report.RESULTS_DIR, "space_week.png"),
             "shares": os.path.join(report.RESULTS_DIR, "space_week_shares.png")}
    total = scenario.factories * scenario.processors
    try:
        space_shares.draw_occupancy(
            runs["vac space"], paths["occupancy"], total_processors=total,
            title=f"Processor occupancy of a simulated space of {scenario.factories} vac factories × "
                  f"{scenario.processors} processors\n{'; '.join(incidents_text(scenario))} for a software update; "
                  "cms on 2 factories in 3")
        space_shares.draw_shares(
            shares, targets, paths["shares"], scenario=scenario, bin_seconds=space_shares.BIN_SECONDS,
            title="Share of the processors in use per machinetype, 10-minute bins (target dashed)")
    except ImportError:
        return None, "matplotlib is missing: pip install 'vac[occupancy]'"
    return paths, None


def main():
    scenario, targets = WEEK, {e.name: 100.0 * e.share / sum(x.share for x in WEEK.experiments)
                               for e in WEEK.experiments}
    print(f"simulated space: {scenario.factories} factories x {scenario.processors} processors, "
          f"{scenario.days:g} days; shares " + ", ".join(f"{e.name} {e.share:g} (jobs {e.job_hours[0]:g}-"
                                                         f"{e.job_hours[1]:g} h)" for e in scenario.experiments)
          + f"; cms not on every third factory; vacquery polls every {scenario.poll_interval:g} s")
    aborts, update = incidents_text(scenario)
    print(f"incidents: {aborts} (its new machines end after {scenario.abort[3][0]:g}-{scenario.abort[3][1]:g} min "
          f"with a 300); {update} for a software update, and those restarted in the next {scenario.update[2]:g} "
          f"min find no work (300); backoff_seconds {OPTIONS['backoff_seconds']}, fizzle_seconds "
          f"{OPTIONS['fizzle_seconds']}")
    host = report.host_facts()
    print(f"host: {host['cpus']} CPUs, load {host['loadavg'][0]:.2f}, Python {host['python']}, "
          f"vac {host['vac_commit']}; seed {SEED}")
    print()
    wall_began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vac-bench-space-") as directory:
        configs = configurations(scenario, directory)
        host_figures = read_host_figures(directory, START)
        weeks, series, shares = {}, {}, {}
        for label, in_space in (("vac space", True), ("each factory alone", False)):
            result = Week(scenario, configs, in_space=in_space, seed=SEED, host_figures=host_figures).run()
            series[label], shares[label], weeks[label] = week_figures(result, scenario, targets)
        traffic = []
        for factories, window, loss in TRAFFIC_RUNS:
            sized = dataclasses.replace(scenario, factories=factories)
            traffic.append(space_traffic.summary(space_traffic.measure(
                sized, configurations(sized, directory), window_seconds=window, loss=loss, seed=SEED,
                host_figures=host_figures)))
    space, alone = weeks["vac space"], weeks["each factory alone"]

    print(f"week: share of the processors in use per machinetype, {space_shares.BIN_SECONDS // 60}-minute bins, "
          f"from hour {RAMP_UP_HOURS} to the end")
    rows = []
    for name, target in targets.items():
        mine, theirs = space["machinetypes"][name], alone["machinetypes"][name]
        rows.append([name, target, mine["mean_share_percent"], mine["mean_absolute_error_pp"],
                     mine["worst_bin_error_pp"], theirs["mean_share_percent"], theirs["mean_absolute_error_pp"],
                     theirs["worst_bin_error_pp"]])
    rows.append(["all (mean)", 100.0, "", space["share_error_pp"], "", "", alone["share_error_pp"], ""])
    report.print_table(["machinetype", "target %", "space: mean %", "error pp", "worst pp",
                        "alone: mean %", "error pp", "worst pp"], rows)
    print()
    aborting, updated = scenario.abort[0], scenario.update[0]

    def dip_text(entry):
        back = "never" if entry["hours_until_back"] is None else f"{entry['hours_until_back']:.1f} h"
        return f"{entry['share_before_percent']:.1f} / {entry['lowest_share_percent']:.1f} %, {back}"

    report.print_table(["incident", "vac space", "each factory alone"], [
        [f"{aborting} machines that aborted, {weekday(*scenario.abort[1:3])}",
         space["aborted_machines"].get(aborting, 0),
         alone["aborted_machines"].get(aborting, 0)],
        [f"{aborting}'s share before / lowest; back (±1 pp) after", dip_text(space["abort"]),
         dip_text(alone["abort"])],
        [f"{updated} pilots ended by the update, {weekday(scenario.update[1])}", space["update"]["running_before"],
         alone["update"]["running_before"]],
        [f"{updated} restarts that aborted while its queue was closed ({scenario.update[2]:g} min)",
         space["aborted_machines"].get(updated, 0), alone["aborted_machines"].get(updated, 0)],
        [f"{updated}'s share before / lowest; back (±1 pp) after", dip_text(space["update"]),
         dip_text(alone["update"])]])
    print()
    print(f"week's polls: {space['polls']} reports scheduled with, from {space['answers_decoded']} answers "
          f"encoded and decoded; {space['polls_run_whole']} also run whole on the simulated network "
          f"({space['whole_poll_datagrams_mean']:.0f} datagrams, {space['whole_poll_bytes_mean'] / 1000:.1f} kB "
          f"each), {space['polls_differing']} differing from the assembled report")
    print()
    print("VacQuery traffic: every poll of every factory, both ways (queries sent, answers got and given)")
    report.print_table(
        ["factories", "loss", "polls", "in full", "poll p50/max s", "datagrams/factory/min", "kB/factory/min",
         "datagrams/other/min", "kB/other/min", "unanswered", "vacquery CPU ms/factory/min"],
        [[t["factories"], f"{100 * t['loss']:g}% ({t['lost']})", t["polls"], t["polls_answered_in_full"],
          f"{t['poll_seconds_p50']:.3f} / {t['poll_seconds_max']:.3f}", t["datagrams_per_factory_minute"],
          t["kilobytes_per_factory_minute"], t["datagrams_per_other_factory"], t["kilobytes_per_other_factory"],
          t["queries_unanswered"], t["vacquery_cpu_ms_per_factory_minute"]]
         for t in traffic])
    print()
    paths, not_drawn = draw(series, shares, scenario, targets)
    print(f"charts: {paths['occupancy']}, {paths['shares']}" if paths else f"charts not drawn: {not_drawn}")
    print()
    clean = [t for t in traffic if t["loss"] == 0.0]
    smallest, largest = clean[0], clean[-1]
    growth = {unit: largest[f"{unit}_per_other_factory"] / smallest[f"{unit}_per_other_factory"]
              for unit in ("datagrams", "kilobytes")}
    targets_met = [
        (f"share error over the week under {TARGET_SHARE_ERROR_PP:g} percentage points",
         space["share_error_pp"] < TARGET_SHARE_ERROR_PP,
         f"{space['share_error_pp']:.2f} pp; each factory alone {alone['share_error_pp']:.2f} pp"),
        (f"traffic per factory no worse than linear in the space ({smallest['factories']} to "
         f"{largest['factories']} factories)",
         max(growth.values()) <= TARGET_GROWTH,
         f"per other factory x{growth['datagrams']:.3f} datagrams, x{growth['kilobytes']:.3f} bytes"),
    ]
    report.print_targets(targets_met)
    path = report.write_results("space", {
        "host": host, "seed": SEED,
        "scenario": {"factories": scenario.factories, "processors": scenario.processors, "days": scenario.days,
                     "experiments": [e.__dict__ for e in scenario.experiments],
                     "machinetype_options": scenario.machinetype_options, "lacking": scenario.lacking,
                     "abort": list(scenario.abort), "update": list(scenario.update),
                     "ramp_up_hours": RAMP_UP_HOURS, "bin_seconds": space_shares.BIN_SECONDS},
        "week": weeks, "traffic": traffic, "charts": paths,
        "targets": [{"target": d, "met": m, "measured": v} for d, m, v in targets_met],
        "seconds": time.monotonic() - wall_began})
    print(f"results: {path} ({time.monotonic() - wall_began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
