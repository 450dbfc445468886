"""Erlang-style supervision: child specs, nested supervisor nodes, restarts.

The Tree is bookkeeping and decisions only. The root feeds it what happened
to its OS processes (started, ready, exited, failed) and executes the Start
and Stop actions it returns; it never forks, signals or reads a clock.
Nodes (a "services" group, a "slots" pool) live inside the root process;
the leaves are OS processes.
"""

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping

import msgpack

from vac.supervisor import policy
from vac.vocabulary.child_states import ChildState, Restart, Strategy

log = logging.getLogger(__name__)

BRUTAL_KILL = "brutal_kill"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
ALIVE = (ChildState.STARTING, ChildState.RUNNING, ChildState.STOPPING)


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """One supervised OS process: `target(channel, args)` runs in the child."""
    id: str
    target: Callable
    args: Mapping = dataclasses.field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown: float | str = 5.0          # seconds between TERM and KILL, or BRUTAL_KILL
    heartbeat_interval: float = 2.0      # how often the child reports (passed to it)
    heartbeat_timeout: float = 20.0      # silence after which the child is killed
    role: str = "helper"                 # "slot" or "helper": how status counts it


@dataclasses.dataclass(frozen=True)
class PoolPolicy:
    """A pool of transient workers restarts each with its own backoff, never escalating."""
    slot_restart: policy.SlotRestartPolicy = policy.SlotRestartPolicy()
    breaker: policy.BreakerPolicy = policy.BreakerPolicy()


@dataclasses.dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor node: its children in start order and how it restarts them."""
    id: str
    children: tuple
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: policy.Intensity = policy.Intensity()
    # How long a crashed member waits before it runs again (nodes that are not pools).
    helper_restart: policy.HelperRestartPolicy = policy.HelperRestartPolicy()
    pool: PoolPolicy | None = None
    # At the top, escalation must not kill running machines: the failed group
    # is retried after this delay and the factory shows DEGRADED meanwhile.
    degraded_retry: float = 60.0


class TreeSpecError(ValueError):
    """A tree specification that cannot be run; `problems` lists every fault."""

    def __init__(self, problems):
        super().__init__("invalid supervision tree: " + "; ".join(problems))
        self.problems = problems


def validate_tree(spec):
    """Return every problem of the tree `spec` (an empty list when it is sound)."""
    problems = []
    seen = set()

    def visit(node, path):
        if not isinstance(node, (ChildSpec, SupervisorSpec)):
            problems.append(f"{path}: {node!r} is neither a ChildSpec nor a SupervisorSpec")
            return
        where = f"{path}/{node.id}" if path else node.id
        # fullmatch: with match, '$' would let an id end in a newline.
        if not isinstance(node.id, str) or not ID_PATTERN.fullmatch(node.id):
            problems.append(f"{where}: id must match {ID_PATTERN.pattern}")
        if node.id in seen:
            problems.append(f"{where}: id {node.id!r} is used twice")
        seen.add(node.id)
        if isinstance(node, ChildSpec):
            _validate_child(node, where, problems)
            return
        if node.intensity.max_restarts < 0 or node.intensity.period <= 0:
            problems.append(f"{where}: intensity needs max_restarts >= 0 and period > 0")
        if node.pool is not None:
            if node.strategy is not Strategy.ONE_FOR_ONE:
                problems.append(f"{where}: a pool restarts one_for_one only")
            if any(isinstance(c, SupervisorSpec) for c in node.children):
                problems.append(f"{where}: a pool holds processes, not nodes")
        for child in node.children:
            visit(child, where)

    visit(spec, "")
    return problems


def _validate_child(child, where, problems):
    if not callable(child.target):
        problems.append(f"{where}: target is not callable")
    if not isinstance(child.restart, Restart):
        problems.append(f"{where}: restart must be a Restart")
    if child.shutdown != BRUTAL_KILL and not (
            isinstance(child.shutdown, (int, float)) and child.shutdown >= 0):
        problems.append(f"{where}: shutdown must be {BRUTAL_KILL!r} or seconds >= 0")
    if not 0 < child.heartbeat_interval < child.heartbeat_timeout:
        problems.append(f"{where}: need 0 < heartbeat_interval < heartbeat_timeout")
    try:
        msgpack.packb(dict(child.args), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        # OverflowError: an int beyond 64 bits, which msgpack cannot carry.
        problems.append(f"{where}: args must be plain data ({error})")


@dataclasses.dataclass(frozen=True)
class Start:
    """Action: fork the child `child_id` now."""
    child_id: str


@dataclasses.dataclass(frozen=True)
class Stop:
    """Action: ask `child_id` to stop (TERM, then KILL after its shutdown budget)."""
    child_id: str


class Leaf:
    """Runtime record of one supervised process."""

    def __init__(self, spec, parent):
        self.spec = spec
        self.parent = parent
        self.state = ChildState.STOPPED
        self.pid = None
        self.started_at = None
        self.ready_at = None
        self.restart_at = None
        self.failed_starts = 0
        self.failure = None        # why the supervisor ended it, if it did
        self.last_exit = None
        self.starts = 0

    @property
    def id(self):
        return self.spec.id

    def leaves(self):
        return [self]


class Node:
    """Runtime record of a supervisor node."""

    def __init__(self, spec, parent):
        self.spec = spec
        self.parent = parent
        self.members = [Node(c, self) if isinstance(c, SupervisorSpec) else Leaf(c, self)
                        for c in spec.children]
        self.history = ()
        self.breaker = policy.Breaker()
        self.pending_group = None  # members restarting together once all have stopped
        self.pending_at = None

    @property
    def id(self):
        return self.spec.id

    def leaves(self):
        return [leaf for member in self.members for leaf in member.leaves()]


class Tree:
    """The supervision state of the whole tree and its restart decisions."""

    def __init__(self, spec):
        problems = validate_tree(spec)
        if problems:
            raise TreeSpecError(problems)
        self.top = Node(spec, None)
        self.leaves = {leaf.id: leaf for leaf in self.top.leaves()}
        self.nodes = {}
        self._index_nodes(self.top)
        self.degraded_since = None
        self.shutting_down = False
        # next_deadline() as last worked out; any event that may change it forgets it.
        self._next_at = None
        self._next_known = False

    def _index_nodes(self, node):
        self.nodes[node.id] = node
        for member in node.members:
            if isinstance(member, Node):
                self._index_nodes(member)

    # Events from the root.

    def start(self, now):
        """Start every child, in tree order."""
        self._next_known = False
        return [self._start(leaf, now) for leaf in self.top.leaves()]

    def started(self, child_id, pid):
        self.leaves[child_id].pid = pid

    def ready(self, child_id, now):
        leaf = self.leaves[child_id]
        if leaf.state is ChildState.STARTING:
            leaf.state = ChildState.RUNNING
            leaf.ready_at = now

    def fail(self, child_id, reason):
        """The supervisor judged a live child faulty (silent, bad frame): stop it."""
        leaf = self.leaves[child_id]
        if leaf.state not in ALIVE:
            return []
        self._next_known = False
        leaf.failure = reason
        if leaf.state is ChildState.STOPPING:
            return []
        return [self._stop(leaf)]

    def exited(self, child_id, exit_status, now):
        """A child process ended; return the actions that follow."""
        leaf = self.leaves[child_id]
        self._next_known = False
        failed = leaf.failure is not None
        leaf.pid = None
        leaf.last_exit = exit_status
        if self.shutting_down:
            leaf.state = ChildState.STOPPED
            return []
        group_node = self._waiting_group(leaf)
        if group_node is not None and not failed:
            leaf.state = ChildState.STOPPED
            return self._finish_group(group_node, now)
        if group_node is not None:
            # Stopped for a fault while its group was restarting: the group
            # restart starts it again anyway.
            leaf.state = ChildState.STOPPED
            return self._finish_group(group_node, now)
        if not policy.wants_restart(leaf.spec.restart, exit_status, failed):
            leaf.state = ChildState.FATAL if exit_status.bad_spec else ChildState.EXITED
            if exit_status.bad_spec:
                log.error("%s exited with %s (bad spec): not restarting it", leaf.id, exit_status)
            return []
        if leaf.parent.spec.pool is not None:
            return self._pool_restart(leaf, failed or not exit_status.normal, now)
        decision = policy.helper_restart(leaf.failed_starts, leaf.ready_at, now,
                                         leaf.parent.spec.helper_restart,
                                         leaf.parent.spec.intensity)
        leaf.failed_starts = decision.failed_starts
        leaf.state = ChildState.STOPPED
        log.warning("%s restarts in %.1fs (quick failures in a row: %d)",
                    leaf.id, decision.at - now, decision.failed_starts)
        return self._restart_in(leaf.parent, leaf, now, decision.at)

    def due(self, now):
        """Restarts whose time has come (backoff over, breaker closed, group stopped).

        Nothing is, before next_deadline() and with no event since it was
        worked out, and then no member is looked at (DEGRADED is left by
        time alone, so a degraded tree is always looked at).
        """
        if self._next_known and self.degraded_since is None and (self._next_at is None or now < self._next_at):
            return []
        self._next_known = False
        actions = []
        for leaf in self.top.leaves():
            if leaf.state is ChildState.BACKOFF and leaf.restart_at <= now:
                breaker = leaf.parent.breaker
                if breaker.is_open(now):
                    leaf.restart_at = max(leaf.restart_at, breaker.open_until)
                    continue
                actions.append(self._start(leaf, now))
        for node in self.nodes.values():
            if node.pending_group is not None:
                actions.extend(self._finish_group(node, now))
        self._clear_degraded(now)
        return actions

    def next_deadline(self):
        """The earliest time due() may have something to do, or None."""
        if self._next_known:
            return self._next_at
        times = [leaf.restart_at for leaf in self.leaves.values()
                 if leaf.state is ChildState.BACKOFF and leaf.restart_at is not None]
        # A group still waiting for its members to stop is woken by their exits.
        times += [node.pending_at for node in self.nodes.values()
                  if node.pending_group is not None and not any(
                      leaf.state in ALIVE for member in node.pending_group for leaf in member.leaves())]
        self._next_at = min(times) if times else None
        self._next_known = True
        return self._next_at

    def reset(self, child_id, now):
        """Operator reset: a FATAL child gets a clean record and starts again."""
        leaf = self.leaves[child_id]
        if leaf.state is not ChildState.FATAL:
            return []
        self._next_known = False
        leaf.failed_starts = 0
        leaf.state = ChildState.BACKOFF
        leaf.restart_at = now
        log.info("%s reset by operator: restarting it", child_id)
        return self.due(now)

    def shutdown_phases(self):
        """Stop order: later members first; a pool's children all at once."""
        self.shutting_down = True
        self._next_known = False
        phases = []

        def visit(node):
            for member in reversed(node.members):
                if isinstance(member, Node) and member.spec.pool is not None:
                    phases.append([leaf.id for leaf in member.members])
                elif isinstance(member, Node):
                    visit(member)
                else:
                    phases.append([member.id])

        visit(self.top)
        return phases

    @property
    def degraded(self):
        return self.degraded_since is not None

    # Decisions.

    def _start(self, leaf, now):
        leaf.state = ChildState.STARTING
        leaf.started_at = now
        leaf.ready_at = None
        leaf.restart_at = None
        leaf.failure = None
        leaf.starts += 1
        return Start(leaf.id)

    def _stop(self, leaf):
        leaf.state = ChildState.STOPPING
        return Stop(leaf.id)

    def _pool_restart(self, leaf, crashed, now):
        node = leaf.parent
        if crashed:
            was_open = node.breaker.is_open(now)
            node.breaker = policy.breaker_after_crash(node.breaker, now, node.spec.pool.breaker)
            if node.breaker.is_open(now) and not was_open:
                log.error("%s: crash storm, restarts paused until +%.0fs",
                          node.id, node.breaker.open_until - now)
        decision = policy.slot_restart(leaf.failed_starts, leaf.ready_at, now,
                                       node.spec.pool.slot_restart)
        leaf.failed_starts = decision.failed_starts
        if decision.fatal:
            leaf.state = ChildState.FATAL
            leaf.restart_at = None
            log.error("%s failed to start %d times in a row: FATAL until an operator resets it",
                      leaf.id, decision.failed_starts)
            return []
        leaf.state = ChildState.BACKOFF
        leaf.restart_at = policy.restart_time(decision.at, node.breaker, now)
        if leaf.restart_at > now:
            log.warning("%s restarts in %.1fs (failed starts: %d)",
                        leaf.id, leaf.restart_at - now, leaf.failed_starts)
        return self.due(now)

    def _restart_in(self, node, member, now, at):
        """`member` of `node` failed: restart per strategy at `at`, or escalate."""
        node.history, exceeded = policy.record_restart(node.history, now, node.spec.intensity)
        if not exceeded:
            return self._restart_members(node, self._affected(node, member), now, at)
        if node.parent is not None:
            log.error("%s: more than %d restarts in %.0fs, escalating to %s",
                      node.id, node.spec.intensity.max_restarts, node.spec.intensity.period,
                      node.parent.id)
            node.history = ()
            self._clear_groups(node)
            return self._restart_in(node.parent, node, now, at)
        # The top never terminates: that would kill running machines.
        node.history = ()
        if self.degraded_since is None:
            log.error("%s exhausted its restart intensity: DEGRADED, no new machines; "
                      "retrying %s in %.0fs", node.id, member.id, node.spec.degraded_retry)
        self.degraded_since = now
        return self._restart_members(node, [member], now,
                                     max(at, now + node.spec.degraded_retry))

    def _affected(self, node, member):
        index = node.members.index(member)
        if node.spec.strategy is Strategy.ONE_FOR_ALL:
            return list(node.members)
        if node.spec.strategy is Strategy.REST_FOR_ONE:
            return node.members[index:]
        return [member]

    def _restart_members(self, node, members, now, at):
        """Stop what still runs of `members`, then start them all in order at `at`."""
        if node.pending_group is not None:
            # A restart of this node still waits for its members to stop:
            # widen it, or the members it was to start would never start.
            members = [m for m in node.members if m in node.pending_group or m in members]
            at = max(at, node.pending_at)
        node.pending_group = list(members)
        node.pending_at = at
        actions = []
        for member in reversed(members):
            for leaf in reversed(member.leaves()):
                if leaf.state in (ChildState.STARTING, ChildState.RUNNING):
                    actions.append(self._stop(leaf))
                elif leaf.state is ChildState.BACKOFF:
                    leaf.state = ChildState.STOPPED
        return actions + self._finish_group(node, now)

    def _finish_group(self, node, now):
        group = node.pending_group
        if group is None or node.pending_at > now:
            return []
        leaves = [leaf for member in group for leaf in member.leaves()]
        if any(leaf.state in ALIVE for leaf in leaves):
            return []
        node.pending_group = node.pending_at = None
        return [self._start(leaf, now) for leaf in leaves if self._restartable(leaf)]

    @staticmethod
    def _restartable(leaf):
        if leaf.state is ChildState.FATAL:
            return False
        return not (leaf.state is ChildState.EXITED and leaf.spec.restart is Restart.TEMPORARY)

    def _waiting_group(self, leaf):
        """The node whose pending group restart includes `leaf`, if any."""
        member, node = leaf, leaf.parent
        while node is not None:
            if node.pending_group is not None and member in node.pending_group:
                return node
            member, node = node, node.parent
        return None

    def _clear_groups(self, node):
        node.pending_group = node.pending_at = None
        for member in node.members:
            if isinstance(member, Node):
                self._clear_groups(member)

    def _degraded_clear_after(self):
        return 2 * self.top.spec.intensity.period

    def _clear_degraded(self, now):
        """Leave DEGRADED once every helper has run well for a while again."""
        if self.degraded_since is None:
            return
        if now - self.degraded_since < self._degraded_clear_after():
            return
        # A helper that ended for good as its restart type allows (EXITED) is
        # not failing: waiting for it to run again would never end.
        helpers = [leaf for leaf in self.leaves.values()
                   if leaf.parent.spec.pool is None and leaf.state is not ChildState.EXITED]
        if all(leaf.state is ChildState.RUNNING and leaf.ready_at is not None
               and now - leaf.ready_at >= self._degraded_clear_after() for leaf in helpers):
            log.warning("every helper runs again: leaving DEGRADED")
            self.degraded_since = None
