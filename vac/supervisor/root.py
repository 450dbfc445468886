"""The root process: one single-threaded selectors loop that never blocks.

It waits on child channels, child pidfds, a signal wake-up pipe and any
extra readers (the control socket), with the next timer deadline as its
timeout; then it dispatches, reaps, checks deadlines and executes the
tree's decisions. It is the tree's subreaper and the only place that reaps.
"""

import functools
import gc
import logging
import os
import selectors
import signal
import time

from vac import logs, proctitle
from vac.ipc import messages
from vac.ipc.channel import WorkerChannel
from vac.ipc.framing import ChannelClosed, IpcError, Unencodable
from vac.supervisor import notify, tree as treemod
from vac.supervisor.barrier import FaultBarrier
from vac.supervisor.policy import ExitStatus, overdue_by
from vac.signals import DEFAULT_HANDLER, set_signal_handler
from vac.supervisor.process import Processes, die_with_parent
from vac.vocabulary.child_states import ChildState, FactoryState

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
MAX_IDLE_WAIT = 5.0
# The process title and systemd's status follow the slots at most this often:
# under turnover nearly every message of a pool brings a pass.
SUMMARY_MIN_SECONDS = 0.5


class Live:
    """The root's view of one running child process."""

    def __init__(self, spawned, now):
        self.pid = spawned.pid
        self.channel = spawned.channel
        self.pidfd = spawned.pidfd
        self.last_seen = now
        self.kill_at = None
        # From its latest heartbeat: its state and when that must change (time.monotonic(), None: nothing due).
        self.state = None
        self.state_deadline = None
        self.registered = False   # its channel is in the selector
        self.writing = False      # ... and watched for writability (output waits)


class Root:
    """The supervisor tree's root: runs the loop until asked to stop."""

    def __init__(self, tree_spec, *, app=None, notifier=None, processes=None, observer=None,
                 on_reload=None, clock=time.monotonic):
        self.tree = treemod.Tree(tree_spec)
        # The factory logic (placements, outcomes); None runs a bare tree.
        self.app = app
        self.notifier = notifier or notify.Notifier()
        self.processes = processes or Processes()
        self.observers = [observer] if observer is not None else []
        self.on_reload = on_reload
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.live = {}            # child id -> Live
        self.by_pid = {}          # pid -> child id
        self.reports = {}         # child id -> latest StateReport
        self.state = FactoryState.STARTING
        self.stop_requested = False
        self._reload_at = None
        self.started_at = None
        self._readers = {}        # extra fd -> callback
        self._writers = {}        # extra fd -> callback while it waits to write
        self._services = []       # objects with next_deadline() and on_pass(now)
        self._wake_r = self._wake_w = None
        self._title = None
        self._summary_at = None   # when the title and status may be made again (None: at once)
        self._summary_waits = False
        self._wake_at = None      # when the next full pass is due
        # The earliest deadline of any child as of the last look at them all
        # (None: none), and whether one may have moved earlier since: a pass
        # looks at every child only then, not at every message.
        self._children_due = None
        self._children_changed = True
        self._busy = False        # this pass saw more than heartbeats
        self._forking = []        # Spawned of a batch being forked, not yet taken in

    # Public surface for the daemon, the control socket and tests.

    def add_reader(self, fd, callback):
        """Call callback() from the loop whenever fd is readable."""
        self._readers[fd] = callback
        self.selector.register(fd, selectors.EVENT_READ, ("reader", fd))

    def remove_reader(self, fd):
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self.selector.unregister(fd)

    def want_write(self, fd, callback):
        """Also call callback() when the reader fd is writable; None stops that."""
        if callback is None:
            self._writers.pop(fd, None)
            events = selectors.EVENT_READ
        else:
            self._writers[fd] = callback
            events = selectors.EVENT_READ | selectors.EVENT_WRITE
        self.selector.modify(fd, events, ("reader", fd))

    def add_service(self, service):
        """A part of the loop with deadlines: next_deadline() (monotonic) and on_pass(now)."""
        self._services.append(service)

    def add_observer(self, callback):
        """callback(event dict) for every event the root emits."""
        self.observers.append(callback)

    def remove_observer(self, callback):
        self.observers.remove(callback)

    def reset(self, child_id):
        """Operator reset of a FATAL child."""
        self._execute(self.tree.reset(child_id, self.clock()))

    def request_stop(self):
        self.stop_requested = True

    def request_reload(self, delay=0.0):
        """Reload after `delay` s; later requests within it fold into one."""
        at = self.clock() + delay
        if self._reload_at is None or at < self._reload_at:
            self._reload_at = at

    def send(self, child_id, msg):
        """Send a message to a live child; a child that cannot take it has failed.

        A message that cannot be encoded (out of its bounds, not valid Unicode,
        larger than a frame) is the sender's fault, not the child's: it is
        logged and dropped. What the socket does not take at once is written
        as the child reads (the loop waits for writability meanwhile).
        """
        live = self.live.get(child_id)
        if live is None:
            log.warning("%s is not running: dropping its %s message", child_id, msg.TAG)
            return False
        try:
            live.channel.send(msg)
        except Unencodable as error:
            log.error("%s (pid %d): cannot encode a %s message for it: %s; message dropped",
                      child_id, live.pid, msg.TAG, error)
            self.emit("dropped", child=child_id, tag=msg.TAG, error=str(error))
            return False
        except (IpcError, OSError) as error:
            log.error("%s (pid %d) cannot take messages: %s; treating it as failed",
                      child_id, live.pid, error)
            self._execute(self.tree.fail(child_id, f"channel: {error}"))
            return False
        self._watch_output(child_id, live)
        return True

    def emit(self, event, **fields):
        if self.observers:
            event = dict(fields, event=event, t=time.time())
            for observer in list(self.observers):
                with FaultBarrier("observer", "%s event %s", observer, event["event"]):
                    observer(event)

    def run(self):
        """Start the tree, loop until SIGTERM/SIGINT, stop it in order; return 0."""
        self.processes.become_subreaper()
        self._install_signals()
        # Read by the notifier already; no child need look for them, nor see them.
        notify.unset_environment()
        # setproctitle's first call moves the environment and builds its title
        # buffer (some 200 KiB of writes); made here, before any fork, every
        # child inherits that work instead of doing it again in pages of its own.
        self._update_title(self.clock())
        # Children share the root's heap copy-on-write; a garbage collection in
        # a child would touch (and so copy) every object it walks. Freezing moves
        # what exists now out of the collector's reach.
        gc.freeze()
        self.started_at = self.clock()
        self._execute(self.tree.start(self.started_at))
        self.state = FactoryState.RUNNING
        self.notifier.ready(self.summary())
        log.info("supervisor running: %s", self.summary())
        self.emit("running")
        while not self.stop_requested:
            self._pass()
            if self._reload_at is not None and self.clock() >= self._reload_at:
                self._reload()
        self._shutdown()
        return 0

    # The loop.

    def _pass(self, stopping=False):
        now = self.clock()
        timeout = 0 if self._wake_at is None else max(self._wake_at - now, 0)
        self._busy = False
        for key, mask in self.selector.select(timeout):
            kind, ident = key.data
            if kind == "channel":
                if mask & selectors.EVENT_WRITE:
                    self._flush_channel(ident)
                if mask & selectors.EVENT_READ:
                    self._on_channel(ident)
                continue
            self._busy = True
            if kind == "wake":
                self._on_signals()
            elif kind == "pidfd":
                self._reap()
            elif kind == "reader":
                # A callback may have closed this fd or another one of this batch.
                if mask & selectors.EVENT_WRITE and ident in self._writers:
                    with FaultBarrier("loop", "writer of fd %d", ident):
                        self._writers[ident]()
                if mask & selectors.EVENT_READ and ident in self._readers:
                    with FaultBarrier("loop", "reader of fd %d", ident):
                        self._readers[ident]()
        now = self.clock()
        if not self._busy and self._wake_at is not None and now < self._wake_at:
            # Only heartbeats arrived: they move deadlines later, never earlier,
            # so there is nothing to decide (this keeps 128 idle slots cheap).
            return
        if self._children_changed or (self._children_due is not None and now >= self._children_due):
            self._check_deadlines(now)
        for service in self._services:
            with FaultBarrier("loop", "a pass of %s", type(service).__name__):
                service.on_pass(now)
        if not stopping:
            self._execute(self.tree.due(now))
            if self.app is not None:
                may_start = self.state is FactoryState.RUNNING and not self.tree.degraded
                with FaultBarrier("factory", "its tick"):
                    for child_id, msg in self.app.tick(may_start):
                        self.send(child_id, msg)
        if stopping or self._summary_at is None or now >= self._summary_at:
            # For the title and systemd's status alike.
            summary = self.summary()
            self._update_title(now, summary)
            if not stopping:
                self.notifier.status(summary, now)
            self._summary_at = now + SUMMARY_MIN_SECONDS
            self._summary_waits = False
        else:
            self._summary_waits = True
        if not stopping:
            # Only a pass that got this far is healthy enough to pet the watchdog.
            self.notifier.watchdog(now)
        self._wake_at = self._next_wake(now)

    def _next_wake(self, now):
        """The earliest deadline of anything the loop watches (monotonic)."""
        deadlines = [now + MAX_IDLE_WAIT]
        if self._children_changed:
            # A child's deadline moved while the children were being looked at.
            deadlines.append(now)
        for deadline in (self._children_due, self._summary_at if self._summary_waits else None,
                         self.tree.next_deadline(), self.notifier.next_watchdog(), self._reload_at):
            if deadline is not None:
                deadlines.append(deadline)
        for service in self._services:
            with FaultBarrier("loop", "the next deadline of %s", type(service).__name__):
                deadline = service.next_deadline()
                if deadline is not None:
                    deadlines.append(deadline)
        if self.app is not None:
            with FaultBarrier("factory", "its next deadline"):
                # The app thinks in wall-clock time (shutdown times are absolute).
                wall_deadline = self.app.next_deadline()
                if wall_deadline is not None:
                    deadlines.append(now + wall_deadline - time.time())
        return min(deadlines)

    def _install_signals(self):
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            # The handler does nothing: the signal number arrives on the
            # wake-up pipe and the loop acts on it.
            signal.signal(signum, _only_wake)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def _on_signals(self):
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stop_requested:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                self.stop_requested = True
            elif signum == signal.SIGHUP:
                self.request_reload()
            elif signum == signal.SIGCHLD:
                self._reap()

    def _reload(self):
        self._reload_at = None
        self.notifier.reloading()
        log.info("reload requested")
        if self.on_reload is not None:
            with FaultBarrier("reload", "a reload request"):
                self.on_reload(self)
        self.notifier.ready(self.summary())

    # Children.

    def _execute(self, actions):
        now = self.clock()
        starts = []
        for action in actions:
            if isinstance(action, treemod.Start):
                starts.append(action.child_id)
            elif isinstance(action, treemod.Stop):
                self._start_all(starts, now)
                starts = []
                self._stop(action.child_id, now)
        self._start_all(starts, now)

    def _start_all(self, child_ids, now):
        """Fork each child in order, then take them in: logs, selector, tree, observers.

        Children share the root's memory copy-on-write, and a page the root
        writes between two forks stays behind as the earlier child's own
        copy. Forking a whole pool before doing the bookkeeping of any of it
        lets its slots share those pages instead of each keeping its own.
        """
        if not child_ids:
            return
        prepared = []
        for child_id in child_ids:
            spec = self.tree.leaves[child_id].spec
            args = dict(spec.args, child_id=child_id, heartbeat_interval=spec.heartbeat_interval,
                        root_pid=os.getpid())
            prepared.append((child_id, functools.partial(self._child_main, spec, args)))
        outcomes = []
        try:
            for child_id, child_main in prepared:
                try:
                    spawned = self.processes.spawn(child_main)
                except OSError as error:
                    outcomes.append((child_id, error))
                    continue
                outcomes.append((child_id, spawned))
                self._forking.append(spawned)
        finally:
            self._forking = []
        for child_id, outcome in outcomes:
            if isinstance(outcome, OSError):
                # fork failing (EAGAIN, ENOMEM) is a failed start, handled by policy.
                log.error("%s: fork failed: %s", child_id, outcome)
                self._execute(self.tree.exited(child_id, ExitStatus(code=-1), now))
            else:
                self._take_in(child_id, outcome, now)

    def _take_in(self, child_id, spawned, now):
        live = Live(spawned, now)
        self.live[child_id] = live
        self.by_pid[live.pid] = child_id
        self.selector.register(live.channel, selectors.EVENT_READ, ("channel", child_id))
        live.registered = True
        self._children_changed = True
        if live.pidfd is not None:
            self.selector.register(live.pidfd, selectors.EVENT_READ, ("pidfd", child_id))
        self.tree.started(child_id, live.pid)
        log.info("%s started, pid %d", child_id, live.pid)
        self.emit("started", child=child_id, pid=live.pid)

    def _child_main(self, spec, args, sock):
        """Runs in the forked child: shed the root's resources, then the worker."""
        status = 0
        try:
            self._forget_in_child()
            die_with_parent()
            spec.target(WorkerChannel(sock), args)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:
            # The one catch-all of a child: log with traceback, exit non-zero,
            # and let the supervisor's policy decide.
            log.exception("%s crashed", spec.id)
            status = 1
        finally:
            logging.shutdown()
            os._exit(status)

    def _forget_in_child(self):
        # Its own process group: a signal to the root's group (Ctrl-C in a
        # terminal, `timeout`, `kill -- -PGID`) reaches the root alone, which
        # then stops the children in order.
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            set_signal_handler(signum, DEFAULT_HANDLER)
        for live in (*self.live.values(), *self._forking):
            live.channel.close()
            if live.pidfd is not None:
                os.close(live.pidfd)
        for fd in (self._wake_r, self._wake_w, *self._readers):
            if fd is not None:
                os.close(fd)
        self.selector.close()
        notify.forget_in_child(self.notifier)
        logs.set_role("child")

    def _stop(self, child_id, now):
        live = self.live.get(child_id)
        if live is None:
            return
        spec = self.tree.leaves[child_id].spec
        if spec.shutdown == treemod.BRUTAL_KILL:
            self.processes.signal(live.pid, signal.SIGKILL)
            live.kill_at = now
        else:
            self.processes.signal(live.pid, signal.SIGTERM)
            live.kill_at = now + spec.shutdown
        self._children_changed = True
        self.emit("stop", child=child_id, pid=live.pid)

    def _on_channel(self, child_id):
        live = self.live.get(child_id)
        if live is None:
            return
        received = live.channel.receive()
        now = self.clock()
        if received:
            live.last_seen = now
        if live.channel.failure is not None or any(
                not isinstance(msg, messages.Heartbeat) for msg in received):
            self._busy = True
        for msg in received:
            with FaultBarrier("factory", "%s (pid %d) message %s", child_id, live.pid, msg.TAG):
                self._on_message(child_id, live, msg, now)
        error = live.channel.failure
        if error is None:
            return
        self._close_channel(live)
        if isinstance(error, ChannelClosed):
            # It is exiting (or broken); its exit or its silence decides.
            return
        log.error("%s (pid %d) sent a bad frame: %s; treating it as failed",
                  child_id, live.pid, error)
        self.emit("bad_frame", child=child_id, pid=live.pid, error=str(error))
        self._execute(self.tree.fail(child_id, f"bad frame: {error}"))

    def _on_message(self, child_id, live, msg, now):
        if isinstance(msg, messages.Ready):
            self.tree.ready(child_id, now)
            log.info("%s ready, pid %d", child_id, live.pid)
            self.emit("ready", child=child_id, pid=live.pid)
        elif isinstance(msg, messages.Heartbeat):
            if msg.deadline != live.state_deadline:
                # A new deadline may fall before the wake-up planned without it.
                self._busy = True
                self._children_changed = True
            live.state, live.state_deadline = msg.state, msg.deadline
        elif isinstance(msg, messages.StateReport):
            self.reports[child_id] = msg
            self.emit("state", child=child_id, state=msg.state, detail=msg.detail)
            if self.app is not None:
                self.app.on_message(child_id, msg)
        elif self.app is not None:
            self.emit(msg.TAG, child=child_id, **messages.encode(msg)[2])
            self.app.on_message(child_id, msg)
        else:
            log.warning("%s sent an unexpected %s message; ignoring it", child_id, msg.TAG)

    def _close_channel(self, live):
        live.registered = live.writing = False
        try:
            self.selector.unregister(live.channel)
        except (KeyError, ValueError):
            pass

    def _watch_output(self, child_id, live):
        """Wait for the child's channel to be writable exactly while output waits for it."""
        wanted = live.channel.wants_write
        if not live.registered or wanted == live.writing:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        self.selector.modify(live.channel, events, ("channel", child_id))
        live.writing = wanted

    def _flush_channel(self, child_id):
        """The child's channel is writable: write what waits for it."""
        live = self.live.get(child_id)
        if live is None:
            return
        try:
            live.channel.flush()
        except ChannelClosed:
            # It closed its end: reading shows the EOF, its exit or silence decides.
            live.channel.discard_output()
        except OSError as error:
            log.error("%s (pid %d): writing to its channel failed: %s; treating it as failed",
                      child_id, live.pid, error)
            live.channel.discard_output()
            self._execute(self.tree.fail(child_id, f"channel: {error}"))
        self._watch_output(child_id, live)

    def _check_deadlines(self, now):
        """Kill the children past their deadlines; note the earliest deadline of those left."""
        self._children_changed = False
        earliest = None
        for child_id, live in list(self.live.items()):
            self._check_child(child_id, live, now)
            deadline = self._child_deadline(live, self.tree.leaves[child_id])
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        self._children_due = earliest

    @staticmethod
    def _child_deadline(live, leaf):
        """When the child must have been heard from, or have ended (None: nothing due)."""
        if live.kill_at is not None:
            return live.kill_at
        if leaf.state is ChildState.STOPPING:
            return None
        timeout = leaf.spec.heartbeat_timeout
        if live.state_deadline is not None:
            return min(live.last_seen, live.state_deadline) + timeout
        return live.last_seen + timeout

    def _check_child(self, child_id, live, now):
        leaf = self.tree.leaves[child_id]
        if live.kill_at is not None:
            if now >= live.kill_at:
                log.warning("%s (pid %d) still running after its shutdown budget: SIGKILL",
                            child_id, live.pid)
                self.processes.signal(live.pid, signal.SIGKILL)
                self.emit("kill", child=child_id, pid=live.pid)
                live.kill_at = now + 3600  # already killed; wait for the reap
            return
        if leaf.state is ChildState.STOPPING:
            return
        silent = now - live.last_seen
        overdue = overdue_by(live.state_deadline, now, leaf.spec.heartbeat_timeout)
        if silent > leaf.spec.heartbeat_timeout:
            log.error("%s (pid %d) silent for %.1fs (limit %.1fs): killing it",
                      child_id, live.pid, silent, leaf.spec.heartbeat_timeout)
            self.emit("hung", child=child_id, pid=live.pid)
            self._execute(self.tree.fail(child_id, f"no heartbeat for {silent:.1f}s"))
        elif overdue is not None:
            # Heartbeats without progress: the loop turns, the state does not move.
            log.error("%s (pid %d) still %s %.1fs past the deadline its heartbeats carry (margin %.1fs): "
                      "killing it", child_id, live.pid, live.state, overdue, leaf.spec.heartbeat_timeout)
            self.emit("hung", child=child_id, pid=live.pid, state=live.state)
            self._execute(self.tree.fail(child_id, f"{live.state} {overdue:.1f}s past its deadline"))

    def _reap(self):
        now = self.clock()
        for pid, status in self.processes.reap():
            exit_status = ExitStatus.from_wait_status(status)
            child_id = self.by_pid.pop(pid, None)
            if child_id is None:
                log.info("reaped orphaned process %d (%s)", pid, exit_status)
                self.emit("orphan_reaped", pid=pid, status=str(exit_status))
                continue
            live = self.live.pop(child_id)
            self._close_channel(live)
            live.channel.close()
            if live.pidfd is not None:
                self.selector.unregister(live.pidfd)
                os.close(live.pidfd)
            leaf = self.tree.leaves[child_id]
            level = logging.INFO if leaf.state is ChildState.STOPPING else logging.WARNING
            log.log(level, "%s (pid %d) ended: %s", child_id, pid, exit_status)
            self.reports.pop(child_id, None)
            if self.app is not None:
                self.app.on_child_exit(child_id)
            self.emit("exited", child=child_id, pid=pid, status=str(exit_status))
            self._execute(self.tree.exited(child_id, exit_status, now))

    # Shutdown.

    def _shutdown(self):
        self.state = FactoryState.STOPPING
        self.notifier.stopping()
        self.emit("stopping")
        log.info("stopping: slots first, then helpers in reverse start order")
        for phase in self.tree.shutdown_phases():
            alive = [child_id for child_id in phase if child_id in self.live]
            if not alive:
                continue
            self.emit("phase", children=alive)
            now = self.clock()
            for child_id in alive:
                self.tree.leaves[child_id].state = ChildState.STOPPING
                self._stop(child_id, now)
            while any(child_id in self.live for child_id in alive):
                self._pass(stopping=True)
        self._reap()
        log.info("stopped")
        self.emit("stopped")

    # What operators see.

    def counts(self):
        """Slots by state: running (a machine), idle, backoff, fatal."""
        counts = {"slots": 0, "running": 0, "idle": 0, "backoff": 0, "fatal": 0}
        for leaf in self.tree.leaves.values():
            if leaf.spec.role != "slot":
                continue
            counts["slots"] += 1
            report = self.reports.get(leaf.id)
            if leaf.state is ChildState.FATAL:
                counts["fatal"] += 1
            elif leaf.state in (ChildState.BACKOFF, ChildState.STOPPED, ChildState.EXITED):
                counts["backoff"] += 1
            elif report is not None and (report.state == "running"
                                         or report.detail.get("machine") is not None):
                # A slot that holds a machine counts as running in every state
                # (starting, stopping, or unable to reach the engine for a while).
                counts["running"] += 1
            else:
                counts["idle"] += 1
        return counts

    def summary(self):
        counts = self.counts()
        text = (f"{counts['slots']} slots: {counts['running']} running, "
                f"{counts['idle']} idle, {counts['backoff']} backoff")
        if counts["fatal"]:
            text += f", {counts['fatal']} fatal"
        if self.tree.degraded:
            text += ", DEGRADED"
        if self.state is FactoryState.STOPPING:
            text += ", stopping"
        return text

    def _update_title(self, now, summary=None):
        title = f"supervisor [{summary if summary is not None else self.summary()}]"
        if title != self._title:
            proctitle.set_title(title)
            self._title = title


def _only_wake(signum, frame):
    """Signal handler: nothing; the wake-up pipe carries the signal to the loop."""
