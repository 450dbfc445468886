"""`vac apel-sync [YYYYMM]`: queue a month's APEL sync record from the archive, as sites ran from cron.

Needs no running vacd: it reads apel-archive/ under the state directory and
queues an `APEL-sync-message: v0.1` in apel-outgoing/ for ssmsend.
Exit codes: 0 queued (or no jobs that month, nothing queued); 1 the
configuration, the archive or apel-outgoing could not be used, or records are
not sent; 2 usage error.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_MONTH_ARGUMENT = re.compile(r"([0-9]{4})([0-9]{2})")
# APEL's Year column has 4 digits; before 1970 nothing was accounted.
FIRST_YEAR, LAST_YEAR = 1970, 9999


def parse_month(text: str | None, now: float) -> tuple[int, int]:
    """(year, month) from YYYYMM, or this month (UTC) for None; ValueError says why not."""
    if text is None:
        current = time.gmtime(now)
        return current.tm_year, current.tm_mon
    match = _MONTH_ARGUMENT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a month as YYYYMM (like 202403)")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12 or not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"{text!r} is not a month between {FIRST_YEAR}01 and {LAST_YEAR}12")
    return year, month


def add_parser(subparsers):
    """Register `vac apel-sync` on the `vac` command's subparsers."""
    parser = subparsers.add_parser(
        "apel-sync", help="queue a month's APEL sync record from the accounting archive",
        description="Count the month's job records in apel-archive/ and queue an APEL sync "
                    "record (Site, SubmitHost, NumberOfJobs, Month, Year) in apel-outgoing/ "
                    "for ssmsend. Exit codes: 0 queued or no jobs that month, 1 failed, 2 usage error.")
    parser.add_argument("month", nargs="?", metavar="YYYYMM",
                        help="the month (UTC; default: the current month)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="the factory's state directory (default: the configuration's)")
    parser.add_argument("--config", action="append", metavar="FILE",
                        help="configuration file for gocdb_sitename, hs06_per_processor and "
                             "state_dir (repeatable; default: the Vac file set)")
    return parser


def main_apel_sync(args, out=None, err=None, now: float | None = None) -> int:
    """Run `vac apel-sync`; one line on `out` when done, one on `err` when not."""
    out, err = out or sys.stdout, err or sys.stderr
    now = time.time() if now is None else now
    try:
        year, month = parse_month(args.month, now)
    except ValueError as error:
        print(f"vac apel-sync: {error}", file=err)
        return EXIT_USAGE
    # Imported here, as the configuration is: every other `vac` command starts
    # without them, and `vac status` is run by monitoring every few minutes.
    from vac.accounting import apel
    from vac.config.load import try_load_configuration
    try:
        config, problems = try_load_configuration(args.config)
    except OSError as error:
        config, problems = None, [error]
    if config is None:
        reason = problems[0] if problems else "no configuration"
        print(f"vac apel-sync: configuration not read ({reason}); it names the site", file=err)
        return EXIT_FAILED
    settings = config.settings
    if not apel.sends_outgoing(settings.gocdb_sitename, settings.hs06_per_processor):
        # Without both, job records stay in the archive: a sync record alone
        # would tell APEL of jobs it never received.
        print("vac apel-sync: gocdb_sitename and hs06_per_processor must both be set; "
              "no job records are sent without them, so no sync record is either", file=err)
        return EXIT_FAILED
    state_dir = Path(args.state_dir or settings.state_dir)
    if not state_dir.is_dir():
        print(f"vac apel-sync: {state_dir} is not a directory", file=err)
        return EXIT_FAILED
    try:
        path, jobs = apel.write_month_sync(state_dir, [(year, month)], settings.gocdb_sitename, now)
    except OSError as error:
        print(f"vac apel-sync: cannot queue the sync record in {state_dir}: {error}", file=err)
        return EXIT_FAILED
    if path is None:
        print(f"{year}-{month:02d}: no jobs of {settings.gocdb_sitename} in "
              f"{state_dir / apel.ARCHIVE_DIR_NAME}; no sync record queued", file=out)
    else:
        print(f"{year}-{month:02d}: {jobs} jobs of {settings.gocdb_sitename}; sync record queued "
              f"as {path}", file=out)
    return EXIT_OK
