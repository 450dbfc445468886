"""The vacquery child's polls of the space: when to poll, what to ask, and the report to the root.

Every interval (and when an operator asks, at most every
ON_DEMAND_SECONDS) a poll asks each factory listed in `factories` for its
machinetypes and its factory_status, and for its machines when the operator
asked for them; vac/space/rounds.py decides the rounds. When it ends, the
root gets one SpaceStatus: each factory's answer, and for those that gave
none, why (a name that does not resolve, answers that were dropped, or
silence for so long). The caller owns the socket: sending goes through
the `send` it passes.
"""

from __future__ import annotations

import logging
import os

from vac.ipc import messages
from vac.space import protocol, report, rounds
from vac.space.factory_status import read_factory_status
from vac.space.machine_status import read_machine_status

log = logging.getLogger("vac.workers.vacquery")

ON_DEMAND_SECONDS = rounds.ON_DEMAND_SECONDS
# How each answer is read, which query it answers, and what keys each of its datagrams.
_READERS = {
    protocol.MACHINETYPE_STATUS: (protocol.read_machinetype_status, protocol.MACHINETYPES_QUERY,
                                  lambda status: (status.machinetype, status.num_machinetypes)),
    protocol.MACHINE_STATUS: (read_machine_status, protocol.MACHINES_QUERY,
                              lambda status: (status.machine, status.num_machines)),
    protocol.FACTORY_STATUS: (read_factory_status, protocol.FACTORY_QUERY, lambda status: ("factory", 1)),
}
_NOUNS = {protocol.MACHINETYPES_QUERY: "machinetypes", protocol.MACHINES_QUERY: "machines",
          protocol.FACTORY_QUERY: "factory status"}


def read_answer(data: bytes, space: str):
    """(query, cookie, key, announced, status) of an answer of `space`, or why it is none.

    The reason starts with NOT_AN_ANSWER for datagrams that are no answer at all (queries, other spaces).
    """
    message = protocol.loads(data)
    kind = message.get("message_type") if message is not None else None
    if kind not in _READERS:
        return f"{protocol.NOT_AN_ANSWER}: no answer's message_type"
    reader, query, key_of = _READERS[kind]
    answer = reader(data, space)
    if isinstance(answer, str):
        return answer
    answer_cookie, status = answer
    key, announced = key_of(status)
    return query, answer_cookie, key, announced, status


class Poller:
    """Polls of the space, one at a time."""

    def __init__(self, *, space, peers, udp_timeout, interval, version, clock, monotonic_start):
        self.space = space
        self.peers = list(peers)
        self.udp_timeout = udp_timeout
        # Polls never overlap: the next starts after the last one's deadline.
        self.interval = max(interval, rounds.DEADLINE_FACTOR * udp_timeout)
        self.version = version
        self.clock = clock
        self.poll: rounds.Poll | None = None
        self._next_at = monotonic_start + min(1.0, self.interval)
        self._started_at = None           # when the last poll started (monotonic)
        self._wall_started = None
        self._request = None              # (number, machines) an operator asked for, not yet polled
        self._answering_request = None    # the request the running poll answers
        self._dropped: dict[str, str] = {}  # asking host -> why its last answer was dropped, this poll
        self.answering = 0

    # What the child's loop calls.

    def request(self, number: int, machines: bool) -> None:
        """An operator asks for a fresh poll; requests made meanwhile join it (machines if any asks)."""
        wanted = machines or (self._request is not None and self._request[1])
        self._request = (number, wanted)

    def next_wake(self, now: float) -> float:
        if self.poll is not None:
            step = self.poll.next_step(now)
            return step.until if isinstance(step, rounds.Wait) else now
        times = [self._next_at]
        if self._request is not None:
            times.append(self._on_demand_at())
        return min(times)

    def tick(self, now: float, addresses, send, unresolved=None) -> messages.SpaceStatus | None:
        """Start, continue or end a poll; the SpaceStatus for the root when one ends.

        addresses: factory name -> (ip, port) as resolved; unresolved: name ->
        why its lookup failed; send(datagram, address, name).
        """
        # A factory alone in its space polls nobody, but its polls still end
        # (at once), and VacMon hears from it after each.
        if self.poll is None and (now >= self._next_at or (
                self._request is not None and now >= self._on_demand_at())):
            self._start(now)
        if self.poll is None:
            return None
        step = self.poll.next_step(now)
        if isinstance(step, rounds.Send):
            for name, query_cookie, query in step.queries:
                address = addresses.get(name)
                if address is not None:
                    send(protocol.query(query, self.space, query_cookie, self.version), address, name)
            self.poll.sent(now)
            step = self.poll.next_step(now)
        if isinstance(step, rounds.End):
            return self._end(now, addresses, unresolved or {}, step.why)
        return None

    def take(self, answer, now: float) -> bool:
        """An answer read by read_answer(); False if no running poll asked for it."""
        query, answer_cookie, key, announced, status = answer
        return self.poll is not None and self.poll.take(answer_cookie, query, key, announced, status, now)

    def dropped(self, host: str, reason: str) -> None:
        """An answer from `host` could not be read: a factory there that says nothing else is silent for this."""
        if self.poll is not None and len(self._dropped) < report.MAX_FACTORIES:
            self._dropped[host] = reason

    # Polls.

    def _on_demand_at(self):
        return self._started_at + ON_DEMAND_SECONDS if self._started_at is not None else 0.0

    def _start(self, now):
        queries = [protocol.MACHINETYPES_QUERY, protocol.FACTORY_QUERY]
        self._answering_request = self._request
        if self._request is not None and self._request[1]:
            queries.append(protocol.MACHINES_QUERY)
        self._request = None
        self.poll = rounds.Poll(self.peers, queries=queries, salt=os.urandom(32), started_at=now,
                                udp_timeout=self.udp_timeout)
        self._started_at, self._wall_started = now, self.clock()
        self._next_at = now + self.interval
        self._dropped = {}

    def _end(self, now, addresses, unresolved, why):
        poll, self.poll = self.poll, None
        answered_at = self.clock()
        factories, silent, machines, left_out = {}, {}, {}, 0
        for name, asked in sorted(poll.by_name().items()):
            got = asked.got
            if not any(got.values()):
                silent[name] = self._why_silent(name, addresses, unresolved, now - poll.started_at, poll.rounds)
                continue
            short = [f"{len(got[query])} of {asked.expected[query]} {_NOUNS[query]}" for query in asked.short()]
            factories[name] = report.answer(got[protocol.MACHINETYPES_QUERY],
                                            got[protocol.FACTORY_QUERY].get("factory"), short, answered_at)
            if protocol.MACHINES_QUERY in got:
                rows = report.machine_rows([got[protocol.MACHINES_QUERY][key]
                                            for key in sorted(got[protocol.MACHINES_QUERY])])
                room = report.MAX_SPACE_MACHINES - sum(len(kept) for kept in machines.values())
                machines[name], left_out = rows[:room], left_out + max(len(rows) - room, 0)
        self.answering = len(factories)
        log.debug("vacquery: poll over (%s): %d answering, %d silent", why, len(factories), len(silent))
        request = self._answering_request[0] if self._answering_request is not None else None
        return messages.SpaceStatus(factories=factories, polled=list(self.peers), silent=silent,
                                    machines=machines, machines_left_out=left_out, request=request,
                                    started_at=self._wall_started, ended_at=answered_at)

    def _why_silent(self, name, addresses, unresolved, waited, rounds_sent):
        address = addresses.get(name)
        if address is None:
            return f"its name does not resolve: {unresolved[name]}"[:report.MAX_REASON] if name in unresolved \
                else "its name is not resolved yet"
        if address[0] in self._dropped:
            return f"its answers were dropped: {self._dropped[address[0]]}"[:report.MAX_REASON]
        return f"no answer within {waited:.0f} s ({rounds_sent} queries)"


def lighter(status: messages.SpaceStatus):
    """Smaller versions of a report too large for a frame: without machines, then with fewer factories."""
    total = sum(len(rows) for rows in status.machines.values()) + status.machines_left_out
    yield messages.SpaceStatus(**{**vars_of(status), "machines": {}, "machines_left_out": total})
    factories = dict(status.factories)
    while factories:
        factories = dict(list(factories.items())[:len(factories) // 2])
        yield messages.SpaceStatus(**{**vars_of(status), "factories": factories, "machines": {},
                                      "machines_left_out": total})


def vars_of(status):
    return {name: getattr(status, name) for name in status._FIELD_TYPES}
