"""The root's exchanges with its helpers: pipe fetcher, cvmfs keeper, vacquery, reaper (no I/O).

Each class takes in its helper's reports and says what to send it next; the
Factory routes the reports to them and sends what they return.
"""

import logging

from vac.config import pipes, plain
from vac.ipc import messages
from vac.space import protocol
from vac.space import status as space_status
from vac.vocabulary.live_set import LIVE_SET_SECONDS
from vac.vocabulary.slot_states import SETTLED_STATES

# Logged under the factory's name, as before the helpers' exchanges had a module of their own.
log = logging.getLogger("vac.supervisor.factory")

PIPE_FETCHER = "pipe-fetcher"
REAPER = "reaper"
CVMFS_KEEPER = "cvmfs-keeper"
VACQUERY = "vacquery"
NOT_ASKED = object()   # vacquery has not reported yet: send it nothing


class PipeFetcherHandshake:
    """The pipes' machinetypes as the fetcher last reported them, and the pipe list it needs."""

    def __init__(self):
        self.reports = {}        # prefix -> the fetcher's latest PipeMachinetypes
        self.machinetypes = {}   # prefix -> {name: Machinetype} of a usable pipe
        self.send_list = False

    def on_state(self, msg):
        # A (re)started fetcher knows no pipes yet.
        self.send_list = msg.state == "waiting"

    def take_report(self, msg, config):
        """Take in a pipe's machinetypes, expanded and checked by the fetcher (and on decode); False if stale."""
        pipe = config.vacuum_pipes.get(msg.prefix)
        if pipe is None or msg.url != pipe.url:
            # Sent before a reload changed the pipes; the fetcher has the new list.
            return False
        previous = self.reports.get(msg.prefix)
        self.reports[msg.prefix] = msg
        if msg.stale:
            log.warning("pipe %s: refresh failed (%s); using the copy fetched at %d",
                        msg.prefix, msg.error, msg.fetched_at)
        if msg.usable:
            self.machinetypes[msg.prefix] = plain.machinetypes_from_plain(msg.machinetypes, msg.prefix)
        else:
            self.machinetypes.pop(msg.prefix, None)
        # A refetch of the same document says nothing new: only a change is logged.
        if previous is None or _pipe_outcome(previous) != _pipe_outcome(msg):
            _log_pipe_report(msg)
        return True

    def effective_machinetypes(self, config):
        """The configuration's machinetypes with those of every usable pipe."""
        return pipes.effective_machinetypes(
            config.machinetypes, [self.machinetypes[prefix] for prefix in sorted(self.machinetypes)])

    def reloaded(self, config):
        """A pipe dropped or moved adds nothing now; the others keep their machinetypes
        until the fetcher, sent the new list, expands them with the new options."""
        for prefix in list(self.reports):
            pipe = config.vacuum_pipes.get(prefix)
            if pipe is None or pipe.url != self.reports[prefix].url:
                self.reports.pop(prefix)
                self.machinetypes.pop(prefix, None)
        self.send_list = True

    def outgoing(self, config):
        if not self.send_list:
            return []
        self.send_list = False
        return [(PIPE_FETCHER, pipe_list(config))]

    def status(self, config):
        """Each pipe's freshness and what it yields, for status."""
        status = {}
        for prefix, pipe in config.vacuum_pipes.items():
            report = self.reports.get(prefix)
            status[prefix] = {
                "url": pipe.url,
                "fetched_at": report.fetched_at if report else None,
                "stale": report.stale if report else None,
                "error": report.error if report else "not fetched yet",
                "machinetypes": sorted(self.machinetypes.get(prefix, {})),
                "problems": list(report.problems) if report else [],
                "problems_total": report.problems_total if report else 0,
            }
        return status


class KeeperHandshake:
    """Which repositories the cvmfs keeper finds unavailable, and which it should watch."""

    def __init__(self):
        self.unavailable = frozenset()
        self._watches = None    # the repositories the keeper last reported checking
        self._asked = None      # what we asked it for since that report

    def on_report(self, msg):
        repositories = msg.detail.get("repositories", {})
        self.unavailable = frozenset(name for name, check in repositories.items() if check.get("ok") is False)
        self._watches = sorted(repositories)
        self._asked = None

    def outgoing(self, needed):
        """Tell the keeper the repositories the machinetypes need, when its report shows others.

        Its list at start is the configuration's when the root started; reloads
        and Vacuum Pipes change what is needed, and a restarted keeper starts
        from that first list again.
        """
        if self._watches is None or needed in (self._watches, self._asked):
            return []
        self._asked = needed
        log.info("cvmfs-keeper: asking it to watch %s", " ".join(needed) or "no repository")
        return [(CVMFS_KEEPER, messages.Repositories(names=needed))]


# What vacquery answers with is sent again this often even unchanged: its
# factory_heartbeat_time says the root is alive.
LOCAL_STATUS_REFRESH_SECONDS = 30.0
# What vacquery answers with is looked at no more often than this while the
# factory changes: building and checking it costs the root, and decoding it
# vacquery, more than the rest of a machine's placement and end (at 32 slots
# of machines that exit at once, a change comes with nearly every pass).
# The space's answers are then at most this much behind.
LOCAL_STATUS_MIN_SECONDS = 1.0


# An operator's request for a fresh poll not answered after this long is
# given up (vacquery restarted meanwhile): the next request is sent anew.
SPACE_REQUEST_SECONDS = 60.0


class VacqueryHandshake:
    """What the other factories of the space last answered, and our statuses for vacquery."""

    def __init__(self):
        self.answers = {}        # factory -> its latest answer (SpaceStatus.factories entry)
        self.polled = []         # the factories the last VacQuery poll asked
        self.silent = {}         # factory -> why it did not answer the last poll
        self.poll = {}           # the last poll: started_at, ended_at, request
        self.machines = {}       # factory -> its machines, as the last poll that asked for them returned them
        self.machines_poll = {}  # that poll: started_at, ended_at, request, silent, left_out
        self.request_done = 0    # the latest operator's request a poll has answered
        self._requested = 0      # the latest request number sent
        self._pending = None     # (number, machines, sent at) of a request not answered yet
        self._local_sent = NOT_ASKED   # the statuses last sent to vacquery
        self._local_sent_at = None
        self._looked_at = None         # when the statuses were last built
        self._look_again_at = None     # a pass came too soon after that: build them then
        self._refused = None     # why the last statuses could not be sent (logged once)

    def on_state(self, msg):
        # A (re)started vacquery has nothing to answer with yet, nor any request.
        if msg.state == "waiting":
            self._local_sent = None
            self._pending = None

    def on_space_status(self, msg):
        # A factory no longer listed is forgotten; one that did not answer
        # this poll keeps its last answer until that grows stale.
        self.polled = list(msg.polled)
        self.answers = {name: answer for name, answer in {**self.answers, **msg.factories}.items()
                        if name in self.polled}
        self.silent = dict(msg.silent)
        self.poll = {"started_at": msg.started_at, "ended_at": msg.ended_at, "request": msg.request}
        if msg.machines or msg.machines_left_out or (self._pending is not None and self._pending[1]
                                                     and msg.request is not None
                                                     and msg.request >= self._pending[0]):
            self.machines = dict(msg.machines)
            self.machines_poll = dict(self.poll, silent=dict(msg.silent), left_out=msg.machines_left_out)
        if msg.request is not None:
            self.request_done = max(self.request_done, msg.request)
            if self._pending is not None and msg.request >= self._pending[0]:
                self._pending = None

    def request(self, machines, now):
        """(request number, messages): a fresh poll an operator asks for, joined to one on its way if it can."""
        pending = self._pending
        if pending is not None and now - pending[2] < SPACE_REQUEST_SECONDS and (pending[1] or not machines):
            return pending[0], []
        self._requested += 1
        self._pending = (self._requested, machines, now)
        return self._requested, [(VACQUERY, messages.SpaceRequest(request=self._requested, machines=machines))]

    def outgoing(self, local_report, vacmon, now):
        """Send vacquery what this factory answers with when it changed, it restarted, or
        LOCAL_STATUS_REFRESH_SECONDS passed; local_report() gives (machinetypes, machines, factory).

        A (re)started vacquery gets them at once; otherwise they are built at
        most every LOCAL_STATUS_MIN_SECONDS, and a pass that comes sooner
        leaves next_deadline() at the time to build them again.
        """
        if self._local_sent is NOT_ASKED:
            return []
        if (self._local_sent is not None and self._looked_at is not None
                and 0 <= now - self._looked_at < LOCAL_STATUS_MIN_SECONDS):
            self._look_again_at = self._looked_at + LOCAL_STATUS_MIN_SECONDS
            return []
        self._looked_at, self._look_again_at = now, None
        statuses, machines, factory = local_report()
        content = {"statuses": [protocol.as_plain(status) for status in statuses],
                   "machines": [protocol.as_plain(machine) for machine in machines],
                   "factory": protocol.as_plain(factory), "vacmon": list(vacmon)[:messages.MAX_VACMONS]}
        if content == self._local_sent and now - self._local_sent_at < LOCAL_STATUS_REFRESH_SECONDS:
            return []
        try:
            message = messages.LocalStatus(**content, made_at=now)
        except messages.MalformedMessage as error:
            # Placements go on; vacquery answers with what it last had.
            if str(error) != self._refused:
                log.error("vacquery: cannot send it this factory's statuses: %s", error)
            self._refused = str(error)
            return []
        self._refused = None
        self._local_sent, self._local_sent_at = content, now
        return [(VACQUERY, message)]

    def next_deadline(self):
        """When statuses held back by LOCAL_STATUS_MIN_SECONDS are to be built, or None."""
        return self._look_again_at

    def space_hs06(self, factory_name, now):
        """HS06 per machinetype the other factories of the space run now (as they last answered)."""
        return space_status.space_hs06(self.answers, now=now, exclude=(factory_name,))

    def space_aborts(self, factory_name, now):
        """Per machinetype, the latest abort the other factories reported and their machines before fizzle."""
        return space_status.space_aborts(self.answers, now=now, exclude=(factory_name,))


class ReaperHandshake:
    """The live set the reaper acts on, sent every LIVE_SET_SECONDS whatever the slots do."""

    def __init__(self):
        self.sent_at = None

    def outgoing(self, now, table, apel_sync_site):
        """What every slot holds, for the reaper, when LIVE_SET_SECONDS have passed; with the APEL sync site.

        A slot whose worker is gone or not in a settled state is marked so: the
        reaper leaves its containers alone. Stamped with `now`, so the reaper
        judges no container started after the root looked. The site goes with
        it, so a reload that turns outgoing records on or off reaches the reaper
        (and a restarted reaper learns it) within LIVE_SET_SECONDS.
        """
        if self.sent_at is not None and now - self.sent_at < LIVE_SET_SECONDS:
            return []
        self.sent_at = now
        return [(REAPER, messages.LiveSet(made_at=now, slots=[
            {"slot": e.slot, "state": e.state,
             "uuid": (e.machine or e.pending or {}).get("uuid"),
             "settled": e.worker_alive and e.state in SETTLED_STATES}
            for e in table.entries.values()])),
            (REAPER, messages.ApelSyncSite(site=apel_sync_site))]

    def next_at(self):
        return None if self.sent_at is None else self.sent_at + LIVE_SET_SECONDS


def pipe_list(config):
    """The PipeList for the fetcher: each pipe with the local options that take precedence."""
    return messages.PipeList(settings=plain.to_plain(config.settings), pipes=[
        {"pipe": plain.to_plain(pipe),
         "local": {name: plain.to_plain(options)
                   for name, options in config.machinetype_options.items()
                   if name.startswith(prefix + "-")}}
        for prefix, pipe in config.vacuum_pipes.items()])


def _pipe_outcome(msg):
    return (msg.usable, tuple(msg.problems), msg.problems_total,
            tuple(machinetype["name"] for machinetype in msg.machinetypes))


def _log_pipe_report(msg):
    if not msg.usable:
        log.error("pipe %s: %s; its machinetypes are not started", msg.prefix,
                  msg.problems[0] if msg.problems else f"no document ({msg.error})")
        return
    for problem in msg.problems:
        log.warning("pipe %s: %s", msg.prefix, problem)
    if msg.problems_total > len(msg.problems):
        log.warning("pipe %s: and %d more problem(s)", msg.prefix,
                    msg.problems_total - len(msg.problems))
    log.info("pipe %s: %d machinetype(s): %s", msg.prefix, len(msg.machinetypes),
             ", ".join(machinetype["name"] for machinetype in msg.machinetypes) or "none")
