"""The reaper: removes what no live slot owns, and machine directories past their time.

Every sweep runs in a thread (Docker calls and directory removal can take
long) while the main loop keeps heartbeating. Expired directories and the
history are pruned at every sweep, whatever the slots are doing; containers
are removed only on a fresh live set from the root that is newer than their
start (reaper_rules), so the reaper never races a slot worker starting or
adopting its machine. (Orphaned processes are reaped by the root itself, the
tree's subreaper.) Processes of the Singularity accounts outside a running
machine are killed far more often, every singularity_sweep_seconds, in a
job of their own (singularity_reaper).
"""

import logging
import os
import pwd
import shutil
import sqlite3
import time
from pathlib import Path

from vac import history
from vac.accounting import apel
from vac.ipc import messages
from vac.machine import scratch
from vac.machine.joboutputs import SHUTDOWN_BY_FACTORY
from vac.machine.layout import MachinePaths, is_machine_uuid, iter_machine_directories
from vac.machine.prepare import read_terms, scratch_backend
from vac.machine.record import is_finished, read_record
from vac.mountinfo import mount_at
from vac.runtimes.base import ContainerRuntimeError
from vac.cgroups import layout as cgroup_layout
from vac.runtimes.by_model import runtimes_from_spec
from vac.runtimes.docker import DEFAULT_TIMEOUT_SECONDS
from vac.runtimes.singularity import SingularitySettings
from vac.runtimes.singularity_command import SINGULARITY_CGROUP_BASES
from vac.vocabulary.live_set import LIVE_SET_MAX_AGE_SECONDS
from vac.workers import finishing, reaper_rules, singularity_reaper
from vac.workers.harness import WorkerLoop
from vac.workers.job_runner import JobRunner

log = logging.getLogger(__name__)

DEFAULT_MACHINES_DIR_DAYS = 3.0
HISTORY_DAYS = 400
ORPHAN_STOP_GRACE_SECONDS = 10.0
# The first sweep comes soon after start, to expire directories left meanwhile.
FIRST_SWEEP_SECONDS = 10.0


def run(channel, spec):
    """Entry point in the forked reaper process."""
    loop = WorkerLoop(channel, spec, role="reaper")
    state_dir = Path(spec["state_dir"])
    factory = spec.get("factory_name", "localhost")
    slots = int(spec.get("slots", 0))
    interval = float(spec.get("interval_seconds", 60.0))
    grace = float(spec.get("grace_seconds", 120.0))
    apel_sync_site = spec.get("apel_sync_site")
    runtime = runtimes_from_spec(spec, float(spec.get("docker_timeout_seconds") or DEFAULT_TIMEOUT_SECONDS))
    singularity = SingularitySettings.from_plain(spec.get("singularity"))
    escapes = EscapeSweep(state_dir, singularity) if singularity.accounts else None
    jobs = JobRunner()
    live = None
    next_sweep = time.monotonic() + min(interval, FIRST_SWEEP_SECONDS)
    loop.title("reaper [no sweep yet]")
    loop.ready()
    loop.report("waiting")
    while not loop.stopping:
        now = time.monotonic()
        wake = min(next_sweep, escapes.next_at) if escapes is not None else next_sweep
        for msg in loop.wait(max(wake - now, 0), fds=(jobs,)):
            if isinstance(msg, messages.LiveSet):
                live = reaper_rules.live_set_from_message(msg.made_at, msg.slots)
            elif isinstance(msg, messages.ApelSyncSite):
                apel_sync_site = msg.site
        for result in jobs.take_done():
            if result.name == "escapes":
                escapes.done(result)
            else:
                _sweep_done(loop, result)
        now = time.monotonic()
        if escapes is not None and now >= escapes.next_at and not jobs.running("escapes"):
            # Its own job and timer: a slow engine or disk in the main sweep never delays it.
            jobs.submit("escapes", escapes.sweep)
            escapes.next_at = now + singularity.sweep_seconds
        if now < next_sweep or jobs.running("sweep"):
            continue
        # Directories and history whatever the live set; sweep() decides on containers.
        # submit() takes positional arguments only: now=None (the clock), then the site.
        jobs.submit("sweep", sweep, runtime, factory, state_dir, live, slots, grace, None, apel_sync_site)
        next_sweep = now + interval
    runtime.close()
    log.info("reaper stopping: %s", loop.stop_reason)


class EscapeSweep:
    """The Singularity accounts' rule (singularity_reaper.py), run every singularity_sweep_seconds."""

    def __init__(self, state_dir, settings):
        self.state_dir = state_dir
        self.settings = settings
        self.next_at = time.monotonic()
        self._layout = None
        self._missing_noted = set()

    def account_uids(self):
        """The uids of the accounts that exist (one created later is looked up again at each sweep)."""
        uids = set()
        for name in self.settings.accounts:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                if name not in self._missing_noted:
                    self._missing_noted.add(name)
                    log.warning("reaper: Singularity account %s does not exist; nothing of it to kill", name)
        return uids

    def sweep(self):
        if self._layout is None:
            self._layout = cgroup_layout.detect()
        # Machines of either placement are recognised: a restart with another
        # singularity_cgroups must not condemn the machines started before it.
        return singularity_reaper.sweep_singularity(self._layout, SINGULARITY_CGROUP_BASES, self.state_dir,
                                                    self.account_uids())

    def done(self, result):
        if result.error is None:
            return
        if isinstance(result.error, OSError):
            log.warning("reaper: the Singularity sweep failed (%s); trying again at the next one", result.error)
            return
        raise result.error


def _sweep_done(loop, result):
    if result.error is not None:
        if isinstance(result.error, (ContainerRuntimeError, OSError)):
            log.warning("reaper: sweep failed (%s); trying again at the next one", result.error)
            loop.title(f"reaper [last sweep failed: {type(result.error).__name__}]")
            return
        raise result.error
    finished, removed_dirs = result.value
    for outcome in finished or ():
        loop.channel.send(outcome)
    orphans = f"{len(finished)} orphans" if finished is not None else "no fresh live set"
    loop.title(f"reaper [last sweep: {orphans}, {removed_dirs} old directories]")


def sweep(runtime, factory, state_dir, live, slots, grace_seconds, now=None, apel_sync_site=None):
    """One pass: expired directories, history and the daily APEL sync message; orphaned containers on a fresh live set.

    Returns (MachineFinished of each orphan finalised, or None when the live
    set was not fresh enough to look; the number of directories removed).
    """
    clock = time.time if now is None else (lambda: now)
    # Expiry first: neither a failing engine nor a stale live set holds it up.
    try:
        removed = remove_expired(state_dir, clock())
    except OSError as error:
        log.warning("reaper: cannot remove an expired machine directory: %s; "
                    "trying again at the next sweep", error)
        removed = 0
    _prune_history(state_dir, clock())
    if apel_sync_site is not None:
        _daily_apel_sync(state_dir, apel_sync_site, clock())
    # Expiry may have taken a while: the live set's age is judged now.
    now = clock()
    if not reaper_rules.is_fresh(live, now):
        log.info("reaper: no live set from the root newer than %d s; orphaned containers wait",
                 LIVE_SET_MAX_AGE_SECONDS)
        return None, removed
    return reap_orphans(runtime, factory, state_dir, live, slots, grace_seconds, now), removed


def reap_orphans(runtime, factory, state_dir, live, slots, grace_seconds, now):
    """Finalise and remove the containers no slot owns; their MachineFinished messages."""
    # Every runtime that answers: one that does not (no Docker engine on a Singularity-only host) hides nothing
    # the slots could act on meanwhile.
    handles = runtime.find(factory, models=())
    found = [(h.slot, h.machine_uuid, _latest_start(h)) for h in handles]
    orphans = {(slot, uuid) for slot, uuid, _ in
               reaper_rules.orphaned(found, live, slots, now, grace_seconds)}
    finished = []
    for handle in handles:
        if (handle.slot, handle.machine_uuid) in orphans:
            outcome = reap_container(runtime, factory, state_dir, handle, now)
            if outcome is not None:
                finished.append(outcome)
    return finished


def _latest_start(handle):
    """When the engine last created or started the container, or None if it says neither."""
    known = [t for t in (handle.created_at, handle.started_at) if t is not None]
    return max(known) if known else None


def _prune_history(state_dir, now):
    # The occupancy history is kept far longer than machine directories.
    try:
        history.forget_ended_before(state_dir, now - HISTORY_DAYS * reaper_rules.SECONDS_PER_DAY)
    except sqlite3.Error as error:
        log.warning("reaper: cannot prune the machine history: %s; trying at the next sweep", error)


def _daily_apel_sync(state_dir, site, now):
    # Its stamp is renewed only once the message is queued: a failure is tried at the next sweep.
    try:
        apel.daily_sync(state_dir, site, now)
    except OSError as error:
        log.warning("reaper: cannot queue the daily APEL sync message: %s; trying at the next sweep", error)


def reap_container(runtime, factory, state_dir, handle, now):
    """End, finalise (once) and remove one orphaned container; its MachineFinished or None."""
    uuid = handle.machine_uuid
    log.warning("reaper: container %s (slot %s, machine %s) belongs to no slot: removing it",
                handle.name, handle.slot, uuid)
    paths = MachinePaths.for_machine(state_dir, uuid) if uuid and is_machine_uuid(uuid) else None
    record = read_record(paths) if paths is not None and paths.root.is_dir() else None
    outcome = None
    if record is not None and not is_finished(paths):
        if not handle.state.has_ended:
            finishing.write_message_if_none(paths, SHUTDOWN_BY_FACTORY)
            runtime.stop(handle, ORPHAN_STOP_GRACE_SECONDS)
        terms = read_terms(paths)
        record = finishing.finish_machine(paths, record, terms, runtime.exit_status(handle),
                                         record.cpu_seconds or 0.0, now)
        outcome = messages.MachineFinished(
            uuid=uuid, machinetype=record.machinetype,
            started_at=float(record.started or record.created), ended_at=float(record.ended),
            code=record.shutdown_code, text=record.shutdown_text or "",
            processors=record.processors, cpu_seconds=record.cpu_seconds or 0.0)
    runtime.remove(handle)
    if paths is not None and paths.root.is_dir():
        terms = read_terms(paths)
        backend = scratch_backend(terms.factory) if terms is not None else scratch.DirectoryScratch()
        backend.destroy(paths)
    return outcome


def remove_expired(state_dir, now):
    """Delete finished machines' directories older than their machines_dir_days."""
    removed = 0
    for paths in iter_machine_directories(state_dir):
        if not is_finished(paths):
            continue
        finished_at = os.lstat(paths.finished_marker).st_mtime
        terms = read_terms(paths)
        days = DEFAULT_MACHINES_DIR_DAYS
        if terms is not None:
            days = float(terms.machinetype.get("machines_dir_days", days))
        if not reaper_rules.expired(finished_at, days, now):
            continue
        backend = scratch_backend(terms.factory) if terms is not None else scratch.DirectoryScratch()
        backend.destroy(paths)
        if mount_at(paths.scratch) is not None:
            log.error("reaper: %s is still mounted; keeping machine directory %s",
                      paths.scratch, paths.root)
            continue
        shutil.rmtree(paths.root)
        removed += 1
        log.info("reaper: removed machine directory %s, finished %.1f days ago", paths.root,
                 (now - finished_at) / reaper_rules.SECONDS_PER_DAY)
    return removed
