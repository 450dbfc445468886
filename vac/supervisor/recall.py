"""What a (re)started root reads back once, before its loop: recent outcomes and each slot's machines.

The loop must never wait on the disk, so this runs before it starts, and
every read is bounded. Backoff after aborts is rebuilt from the factory's
history (history.sqlite), so a restart does not let a machinetype that keeps
failing start again at once. What the machine directories say each slot
holds counts for that slot until its worker has reported (slot_table.py).
A read that fails is logged and leaves the root as it would have been
without it: a history or a directory that cannot be read never stops vacd.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Iterable

from vac import history
from vac.machine.layout import iter_machine_directories
from vac.machine.prepare import read_terms
from vac.machine.record import MachineRecord, is_finished, read_record
from vac.supervisor import aborts

log = logging.getLogger(__name__)

# A machine's record in one of these states may still hold its slot's processors.
_LIVE_STATES = ("preparing", "starting", "running", "stopping", "finishing")
# Reported for a remembered machine whose terms (machine.json) cannot be read.
UNKNOWN_SUPERSLOT = -1


def remembered_histories(state_dir: Path, machinetypes: Iterable, now: float) -> dict[str, aborts.OutcomeHistory]:
    """Each machinetype's outcome history, from the machines of the history that ended recently enough to matter."""
    machinetypes = list(machinetypes)
    window = aborts.backoff_memory_seconds(
        (machinetype.backoff_seconds, machinetype.fizzle_seconds) for machinetype in machinetypes)
    try:
        spans = history.ended_since(state_dir, now - window, aborts.BACKOFF_MEMORY_ROWS)
    except (sqlite3.Error, OSError) as error:
        log.error("cannot read the machine history in %s (%s): backoff after earlier aborts is forgotten",
                  state_dir, error)
        return {}
    histories = aborts.rebuilt_histories(
        ((span.machinetype, aborts.Outcome(span.started_at, span.ended_at, span.shutdown_code))
         for span in spans if span.ended_at is not None),
        {machinetype.name: machinetype.fizzle_seconds for machinetype in machinetypes})
    backing_off = sorted(name for name, outcome_history in histories.items()
                         if outcome_history.last_abort_at is not None)
    log.info("history: %d machine(s) ended in the last %.0f s; last aborts remembered for %s",
             len(spans), window, ", ".join(backing_off) or "no machinetype")
    return histories


def slot_holdings(records: Iterable[tuple[MachineRecord, int]], slots: int) -> dict[int, dict]:
    """Slot -> the machine its unfinished records say it holds, as the slot table shows machines.

    `records` are (record, superslot) of machines not yet finalised. Where a
    slot has several, the one with the most processors counts: until the
    worker says which is live, the slot may hold any of them.
    """
    holdings: dict[int, dict] = {}
    for record, superslot in records:
        if not 0 <= record.slot < slots or record.state not in _LIVE_STATES:
            continue
        machine = {
            "uuid": record.machine_uuid, "machinetype": record.machinetype, "processors": record.processors,
            "started_at": float(record.started if record.started is not None else record.created),
            "shutdown_at": int(record.shutdown_time), "superslot": superslot, "container_id": record.container_id}
        held = holdings.get(record.slot)
        if held is None or machine["processors"] > held["processors"]:
            holdings[record.slot] = machine
    return holdings


def remembered_holdings(state_dir: Path, slots: int) -> dict[int, dict]:
    """What each slot's unfinished machine directories say it holds (slot_holdings, read from disk)."""
    records = []
    try:
        for paths in iter_machine_directories(state_dir):
            if is_finished(paths):
                continue
            record = read_record(paths)
            if record is None or record.state not in _LIVE_STATES:
                continue
            terms = read_terms(paths)
            records.append((record, terms.superslot if terms is not None else UNKNOWN_SUPERSLOT))
    except OSError as error:
        log.error("cannot read the machine directories in %s (%s): slots hold nothing until they report",
                  state_dir, error)
    holdings = slot_holdings(records, slots)
    if holdings:
        log.info("machine directories: %d slot(s) hold a machine until their workers report: %s",
                 len(holdings), ", ".join(f"{slot:02d}" for slot in sorted(holdings)))
    return holdings


def recall(factory, state_dir: Path, now: float) -> None:
    """Give a new root's factory what the disk remembers: backoff histories and each slot's machine."""
    for machinetype, outcome_history in remembered_histories(
            state_dir, factory.machinetypes.values(), now).items():
        factory.histories.setdefault(machinetype, outcome_history)
    for slot, machine in remembered_holdings(state_dir, len(factory.table.entries)).items():
        factory.table.remember(slot, machine)
