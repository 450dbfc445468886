"""APEL accounting: one individual job record per finished machine, written exactly once.

Files follow the dirq "QueueSimple" layout that ssmsend reads: directories of
8 hex digits (YYYYMMDD) holding elements named by 14 hex digits. The element
name is hashed from the machine UUID and the directory comes from the machine's
end time, so writing the same machine twice names the same file both times.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vac.machine.atomicfile import create_atomic, fsync_directory, write_atomic

log = logging.getLogger(__name__)

JOB_HEADER = "APEL-individual-job-message: v0.3"
SYNC_HEADER = "APEL-sync-message: v0.1"
RECORD_END = "%%"
ARCHIVE_DIR_NAME = "apel-archive"
OUTGOING_DIR_NAME = "apel-outgoing"
# Kept in the machine directory: the record text as first written, so a repeat
# after a crash copies the very same text (same EndTime, same day directory).
MACHINE_RECORD_NAME = "apel-record"

RECORD_FILE_MODE = 0o644
RECORD_DIR_MODE = 0o755
# Reading one APEL record file stops here (a job record is under 1 KiB).
MAX_APEL_RECORD_BYTES = 64 * 1024

# The widest value APEL's server stores per key (its JobRecords and lookup
# tables' columns): a longer one is cut or refused there, and the loader
# rejects any key it does not know.
APEL_FIELD_LIMITS = {
    "Site": 255, "SubmitHost": 255, "LocalJobId": 255, "LocalUserId": 255, "Queue": 100,
    "GlobalUserName": 255, "FQAN": 255, "WallDuration": 20, "CpuDuration": 20, "Processors": 10,
    "NodeCount": 10, "InfrastructureDescription": 100, "InfrastructureType": 20, "StartTime": 20,
    "EndTime": 20, "MemoryReal": 20, "MemoryVirtual": 20, "ServiceLevelType": 50, "ServiceLevel": 20,
    "NumberOfJobs": 10, "Month": 2, "Year": 4,
}
# ssmsend and the loader take printable ASCII only: one other byte in an
# outgoing record stops the sending of the whole queue, run after run.
_APEL_VALUE = re.compile(r"[\x20-\x7e]*")
_DAY_DIRECTORY = re.compile(r"[0-9]{8}")
_ELEMENT_NAME = re.compile(r"[0-9a-f]{14}")


@dataclass(frozen=True, slots=True)
class FinishedMachine:
    """What the accounting record of one finished machine is made from."""
    machine_uuid: str
    machinetype: str
    space: str
    factory: str
    processors: int
    start_time: int
    end_time: int
    cpu_seconds: int
    mb_per_processor: int
    hs06_per_processor: float | None = None
    gocdb_sitename: str | None = None
    accounting_fqan: str | None = None


def global_user_name(space: str) -> str:
    """The space as a DN in Vac's order: vac01.example.com -> /DC=com/DC=example/DC=vac01."""
    return "".join(f"/DC={component}" for component in reversed(space.split(".")))


def site_name(space: str, gocdb_sitename: str | None) -> str:
    """gocdb_sitename, or (as Vac did) the space without its first label."""
    if gocdb_sitename:
        return gocdb_sitename
    return space.split(".", 1)[1] if "." in space else space


def submit_host(space: str, factory: str) -> str:
    """The SubmitHost of this factory's records: <space>/vac-<factory>."""
    return f"{space}/vac-{factory}"


def job_fields(machine: FinishedMachine) -> list[tuple[str, str]]:
    """The Key: value pairs of the individual job message for `machine`, in order."""
    memory_kib = machine.mb_per_processor * machine.processors * 1024
    # Without a configured HS06 figure Vac accounted 1.0 per processor (such
    # records stay in the archive and are never sent).
    hs06 = machine.hs06_per_processor if machine.hs06_per_processor is not None else 1.0
    fields = [
        ("Site", site_name(machine.space, machine.gocdb_sitename)),
        ("SubmitHost", submit_host(machine.space, machine.factory)),
        ("LocalJobId", machine.machine_uuid),
        ("LocalUserId", machine.factory),
        ("Queue", machine.machinetype),
        ("GlobalUserName", global_user_name(machine.space)),
    ]
    if machine.accounting_fqan:
        fields.append(("FQAN", machine.accounting_fqan))
    fields += [
        ("WallDuration", str(max(0, int(machine.end_time) - int(machine.start_time)))),
        ("CpuDuration", str(int(machine.cpu_seconds))),
        ("Processors", str(machine.processors)),
        ("NodeCount", "1"),
        ("InfrastructureDescription", "APEL-VAC"),
        ("InfrastructureType", "grid"),
        ("StartTime", str(int(machine.start_time))),
        ("EndTime", str(int(machine.end_time))),
        ("MemoryReal", str(memory_kib)),
        ("MemoryVirtual", str(memory_kib)),
        ("ServiceLevelType", "HEPSPEC"),
        ("ServiceLevel", str(float(hs06))),
    ]
    return fields


def job_record(machine: FinishedMachine) -> str:
    """The individual job message for `machine` (header, Key: value lines, %%)."""
    lines = [JOB_HEADER] + [f"{key}: {value}" for key, value in job_fields(machine)] + [RECORD_END]
    return "\n".join(lines) + "\n"


def field_problems(fields: list[tuple[str, str]]) -> list[str]:
    """Why these Key: value pairs must not be sent: values APEL's loader or ssmsend refuse (empty if none)."""
    problems = []
    for key, value in fields:
        if key not in APEL_FIELD_LIMITS:
            problems.append(f"{key[:40]!r} is not a key APEL knows")
        elif not _APEL_VALUE.fullmatch(value):
            problems.append(f"{key} holds characters other than printable ASCII ({value[:80]!r})")
        elif len(value) > APEL_FIELD_LIMITS[key]:
            problems.append(f"{key} is {len(value)} characters, more than APEL's {APEL_FIELD_LIMITS[key]}")
    return problems


def outgoing_problems(text: str, header: str = JOB_HEADER) -> list[str]:
    """Why the message `text` must not go to apel-outgoing (empty if none): its lines, checked as APEL reads them."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != header or lines[-1] != RECORD_END:
        return [f"the message does not run from {header!r} to {RECORD_END!r}"]
    fields = []
    for line in lines[1:-1]:
        if line == RECORD_END and header == SYNC_HEADER:
            continue  # a sync message holds several records
        key, separator, value = line.partition(": ")
        if not separator:
            return [f"{line[:40]!r} is not a Key: value line"]
        fields.append((key, value))
    return field_problems(fields)


def lived_long_enough(start_time: float, end_time: float, fizzle_seconds: float) -> bool:
    """True if a machine is accounted: it lived at least fizzle_seconds."""
    return end_time - start_time >= fizzle_seconds


def sends_outgoing(gocdb_sitename: str | None, hs06_per_processor: float | None) -> bool:
    """True if records also go to apel-outgoing (both gocdb_sitename and hs06_per_processor set)."""
    return bool(gocdb_sitename) and hs06_per_processor is not None


def sync_site(gocdb_sitename: str | None, hs06_per_processor: float | None) -> str | None:
    """The site of the daily sync records: gocdb_sitename while records go to apel-outgoing, else None."""
    return gocdb_sitename if sends_outgoing(gocdb_sitename, hs06_per_processor) else None


def element_name(machine_uuid: str, attempt: int = 0) -> str:
    """The record's file name: 14 hex digits hashed from the machine UUID (a dirq element name).

    Hashing spreads any UUID form evenly; `attempt` > 0 gives the alternatives
    used if another machine's record already holds the name.
    """
    key = machine_uuid if attempt == 0 else f"{machine_uuid}#{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:14]


def _read_head(path: Path) -> str:
    """The first MAX_APEL_RECORD_BYTES of a record file as text: a larger file is not ours, and is not read whole."""
    with open(path, "rb") as stream:
        return stream.read(MAX_APEL_RECORD_BYTES).decode(errors="replace")


def _holds_machine(path: Path, machine_uuid: str) -> bool:
    try:
        text = _read_head(path)
    except FileNotFoundError:
        return False
    return any(record.get("LocalJobId") == machine_uuid for record in parse_records(text))


def _element_for(archive_day: Path, machine_uuid: str) -> str:
    """The first name that is free or already holds this machine's record."""
    for attempt in range(16):
        name = element_name(machine_uuid, attempt)
        path = archive_day / name
        if not path.exists() or _holds_machine(path, machine_uuid):
            return name
    raise FileExistsError(f"no free APEL element name for machine {machine_uuid} in {archive_day}")


def day_directory(end_time: float) -> str:
    """The YYYYMMDD directory (UTC) of a record ending at `end_time`."""
    return time.strftime("%Y%m%d", time.gmtime(end_time))


def parse_records(text: str) -> list[dict[str, str]]:
    """The records of an APEL message as {Key: value} dicts (the header line is skipped)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() == RECORD_END:
            if current:
                records.append(current)
            current = {}
        elif ": " in line and not line.startswith("APEL-"):
            key, value = line.split(": ", 1)
            current[key.strip()] = value.strip()
    return records


def _stored_record(machine_dir: Path, machine: FinishedMachine) -> str:
    """The record text kept in the machine directory, created from `machine` the first time."""
    path = Path(machine_dir) / MACHINE_RECORD_NAME
    # Text that cannot be encoded (a lone surrogate) is kept escaped, so the
    # record can always be stored; the check before apel-outgoing refuses it.
    create_atomic(path, job_record(machine).encode(errors="backslashreplace"), RECORD_FILE_MODE)
    with open(path, "rb") as stream:
        return stream.read(MAX_APEL_RECORD_BYTES).decode(errors="backslashreplace")


def _ensure_durable_directory(directory: Path) -> None:
    if directory.is_dir():
        return
    _ensure_durable_directory(directory.parent)
    directory.mkdir(mode=RECORD_DIR_MODE, exist_ok=True)
    # A new directory entry must survive a power cut as surely as the record in it.
    fsync_directory(directory.parent)


def _ensure_day_directory(base: Path, day: str) -> Path:
    _ensure_durable_directory(base / day)
    return base / day


def write_job_record(state_dir: Path, machine_dir: Path, machine: FinishedMachine,
                     fizzle_seconds: float) -> list[Path]:
    """Write the machine's record to apel-archive (and apel-outgoing if sent) exactly once.

    Returns the files written by this call: empty if the machine fizzled or its
    record was already complete. Safe to repeat after a crash at any point.
    """
    if not lived_long_enough(machine.start_time, machine.end_time, fizzle_seconds):
        log.info("machine %s lived %d s, less than fizzle_seconds %g: no accounting record",
                 machine.machine_uuid, machine.end_time - machine.start_time, fizzle_seconds)
        return []
    text = _stored_record(machine_dir, machine)
    # The stored text decides the day, so a repeat on a later day still finds the file.
    stored = parse_records(text)
    end_time = int(stored[0]["EndTime"]) if stored and stored[0].get("EndTime", "").isdigit() \
        else machine.end_time
    day = day_directory(end_time)
    name = _element_for(Path(state_dir) / ARCHIVE_DIR_NAME / day, machine.machine_uuid)
    archive_path = Path(state_dir) / ARCHIVE_DIR_NAME / day / name
    if archive_path.exists():
        # The archive copy is written last: it existing means this record is complete.
        return []
    written = []
    # The values themselves (a newline in one would make lines of its own),
    # then the text as stored, which a repeat sends.
    problems = field_problems(job_fields(machine)) or outgoing_problems(text)
    sending = sends_outgoing(machine.gocdb_sitename, machine.hs06_per_processor)
    if sending and problems:
        # One bad record must not stop ssmsend's whole queue: it stays in the archive only.
        log.error("machine %s: APEL record kept in %s only, not queued for sending: %s",
                  machine.machine_uuid, ARCHIVE_DIR_NAME, "; ".join(problems))
    elif sending:
        # ssmsend deletes outgoing files once sent, so their absence proves nothing:
        # the archive copy (written next) is the marker. A repeat can duplicate the
        # message only if ssmsend ran between these two writes, and the APEL
        # server replaces a record with the same Site, LocalJobId and EndTime.
        outgoing_path = _ensure_day_directory(Path(state_dir) / OUTGOING_DIR_NAME, day) / name
        write_atomic(outgoing_path, text.encode(), RECORD_FILE_MODE)
        written.append(outgoing_path)
    _ensure_day_directory(Path(state_dir) / ARCHIVE_DIR_NAME, day)
    if create_atomic(archive_path, text.encode(errors="backslashreplace"), RECORD_FILE_MODE):
        written.append(archive_path)
    log.info("machine %s: APEL record written to %s", machine.machine_uuid,
             ", ".join(str(path) for path in written) or "nowhere (already there)")
    return written


def archived_job_counts(state_dir: Path) -> Counter[tuple[str, str, int, int]]:
    """Jobs in apel-archive per (Site, SubmitHost, Year, Month) of their EndTime (UTC)."""
    counts: Counter[tuple[str, str, int, int]] = Counter()
    archive = Path(state_dir) / ARCHIVE_DIR_NAME
    for day_dir in sorted(archive.iterdir()) if archive.is_dir() else []:
        if not _DAY_DIRECTORY.fullmatch(day_dir.name) or not day_dir.is_dir():
            continue
        for element in sorted(day_dir.iterdir()):
            if not _ELEMENT_NAME.fullmatch(element.name):
                continue  # temp files of a write in progress
            try:
                text = _read_head(element)
            except OSError as error:
                log.warning("cannot read APEL record %s (%s); not counted", element, error)
                continue
            for record in parse_records(text):
                try:
                    ended = time.gmtime(int(record["EndTime"]))
                    key = (record["Site"], record["SubmitHost"], ended.tm_year, ended.tm_mon)
                except (KeyError, ValueError):
                    log.warning("APEL record in %s lacks Site, SubmitHost or EndTime; not counted", element)
                    continue
                counts[key] += 1
    return counts


def sync_message(counts: Counter[tuple[str, str, int, int]], site: str | None = None) -> str:
    """The APEL-sync-message for `counts`, one record per site, submit host and month."""
    lines = [SYNC_HEADER]
    for (record_site, host, year, month), number in sorted(counts.items()):
        if site is not None and record_site != site:
            continue  # records of other sites were never sent
        record = [f"Site: {record_site}", f"SubmitHost: {host}", f"NumberOfJobs: {number}",
                  f"Month: {month}", f"Year: {year}", RECORD_END]
        problems = field_problems([("Site", record_site), ("SubmitHost", host)])
        if problems:
            # Its jobs were never sent either; one such entry must not stop the queue.
            log.error("APEL sync record for %r %r left out: %s", record_site, host, "; ".join(problems))
            continue
        lines += record
    return "\n".join(lines) + "\n"


def write_sync_message(state_dir: Path, text: str, now: float) -> Path:
    """Queue a sync message in apel-outgoing under a time-based element name."""
    day = day_directory(now)
    # dirq's own naming: seconds, microseconds, one digit of the pid.
    name = f"{int(now):08x}{int((now % 1) * 1000000) % 0x100000:05x}{os.getpid() % 16:01x}"
    path = _ensure_day_directory(Path(state_dir) / OUTGOING_DIR_NAME, day) / name
    write_atomic(path, text.encode(), RECORD_FILE_MODE)
    return path



# Sync messages: APEL compares each month's NumberOfJobs with the job records it
# holds, so a lost record shows. The latest sync record for a month replaces
# the earlier ones, so writing one again (each day, or from cron) is harmless.
SYNC_INTERVAL_SECONDS = 86400
# When vacd last queued its daily sync message: a file in the state directory
# whose modification time survives restarts of the reaper and of vacd.
SYNC_STAMP_NAME = "apel-sync-stamp"


def month_counts(counts: Counter[tuple[str, str, int, int]], year: int,
                 month: int) -> Counter[tuple[str, str, int, int]]:
    """The part of `counts` for one month."""
    return Counter({key: number for key, number in counts.items() if key[2:] == (year, month)})


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def sync_months(now: float) -> list[tuple[int, int]]:
    """The (year, month)s vacd's daily sync message covers: the previous month and the current one (UTC).

    The previous month is repeated while its late records (a machine ending
    just before midnight, written after) can still be counted into it.
    """
    current = time.gmtime(now)
    return [previous_month(current.tm_year, current.tm_mon), (current.tm_year, current.tm_mon)]


def sync_due(last_written: float | None, now: float) -> bool:
    """True if vacd's daily sync message is due: never written, a day ago or more, or stamped in the future."""
    if last_written is None:
        return True
    return not 0 <= now - last_written < SYNC_INTERVAL_SECONDS


def write_month_sync(state_dir: Path, months: list[tuple[int, int]], site: str | None,
                     now: float) -> tuple[Path | None, int]:
    """Queue the sync message of `months` from the archive; (its path, or None if no jobs; the jobs counted).

    `site` keeps only that site's records (the ones sent); None keeps all.
    """
    counts = archived_job_counts(state_dir)
    chosen: Counter[tuple[str, str, int, int]] = Counter()
    for year, month in months:
        chosen.update(month_counts(counts, year, month))
    if site is not None:
        chosen = Counter({key: number for key, number in chosen.items() if key[0] == site})
    text = sync_message(chosen, site)
    if text == SYNC_HEADER + "\n":
        return None, 0
    return write_sync_message(state_dir, text, now), sum(chosen.values())


def last_sync(state_dir: Path) -> float | None:
    """When vacd last queued its daily sync message (the stamp's mtime), None if never."""
    try:
        return os.stat(Path(state_dir) / SYNC_STAMP_NAME).st_mtime
    except FileNotFoundError:
        return None


def daily_sync(state_dir: Path, site: str, now: float) -> Path | None:
    """Queue the previous and current month's sync message if a day has passed since the last.

    Returns the message written (None if not due or no jobs). An OSError is the
    caller's to log: the stamp is only renewed after the message is queued, so
    the next call tries again.
    """
    if not sync_due(last_sync(state_dir), now):
        return None
    path, jobs = write_month_sync(state_dir, sync_months(now), site, now)
    write_atomic(Path(state_dir) / SYNC_STAMP_NAME, b"", RECORD_FILE_MODE)
    os.utime(Path(state_dir) / SYNC_STAMP_NAME, (now, now))
    log.info("APEL sync message for %s: %s", ", ".join(f"{y}-{m:02d}" for y, m in sync_months(now)),
             f"{jobs} jobs, queued as {path}" if path else "no jobs in the archive, none queued")
    return path
