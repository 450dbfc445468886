"""The vacquery child's answers to the space's queries, within their caps.

Every query Vac's clients send is answered (machinetypes, machines,
factory; each in its message_type and legacy `method` forms) from what the
root last sent (LocalStatus), the factory's answer completed with the
host's figures. Answers are bounded, so spoofed queries cannot make the
factory an amplifier: per asking address (a burst, then a rate), per query
(MAX_ANSWER_DATAGRAMS) and overall (datagrams a second, a whole answer or
none). The amplification this leaves is in the README ("The space").
"""

from __future__ import annotations

import dataclasses

from vac.space import protocol
from vac.space.factory_status import FactoryStatus, factory_status
from vac.space.machine_status import MachineStatus, machine_statuses
from vac.space.protocol import MachinetypeStatus

# Answers per asking address: a burst, then this many per second.
ANSWER_BURST = 10
ANSWER_RATE = 2.0
# Datagrams answered per second to everyone together (a burst of one second's worth).
ANSWER_DATAGRAMS_PER_SECOND = 500
# Asking addresses remembered at most; beyond, those quiet for a minute are forgotten.
MAX_BUCKETS = 4096


@dataclasses.dataclass(frozen=True)
class LocalAnswers:
    """What this factory answers with, as the root last sent it."""
    machinetypes: tuple[MachinetypeStatus, ...]
    machines: tuple[MachineStatus, ...]
    factory: FactoryStatus
    made_at: float

    @classmethod
    def from_message(cls, msg) -> LocalAnswers:
        """From a LocalStatus, whose every status was checked on decode."""
        return cls(machinetypes=tuple(MachinetypeStatus(**status) for status in msg.statuses),
                   machines=tuple(MachineStatus(**status) for status in msg.machines),
                   factory=FactoryStatus(**msg.factory), made_at=msg.made_at)


class Responder:
    """Answers queries of `space` from `local`; host_figures() gives the host's part of factory_status."""

    def __init__(self, *, space, site, version, host_figures):
        self.space = space
        self.site = site
        self.version = version
        self.host_figures = host_figures
        self.local: LocalAnswers | None = None
        self._buckets: dict[str, tuple[float, float]] = {}
        self._sent_tokens, self._sent_at = float(ANSWER_DATAGRAMS_PER_SECOND), None

    def answer(self, query: protocol.Query, host: str, now: float, wall: float) -> list[bytes]:
        """The datagrams answering `query` from `host` at monotonic `now` (wall clock `wall`); [] if none may go.

        Nothing is answered before the root has said what this factory runs,
        as a Vac factory that has not yet looked: askers ask again.
        """
        if query.space != self.space or self.local is None:
            return []
        kind = query.message_type
        if kind == protocol.MACHINETYPES_QUERY:
            # Beyond the cap the answer names only the machinetypes it carries, so
            # the asker does not ask again for the rest.
            count = min(len(self.local.machinetypes), protocol.MAX_ANSWER_DATAGRAMS)
        elif kind == protocol.MACHINES_QUERY:
            count = len(self.local.machines)
        elif kind == protocol.FACTORY_QUERY:
            count = 1
        else:
            return []
        if count == 0 or not self._may_answer(host, now) or not self._may_send(count, now):
            return []
        common = {"space": self.space, "site": self.site, "query_cookie": query.cookie,
                  "daemon_version": self.version, "now": int(wall)}
        if kind == protocol.MACHINETYPES_QUERY:
            return protocol.machinetype_statuses(list(self.local.machinetypes[:count]), **common)
        if kind == protocol.MACHINES_QUERY:
            return machine_statuses(list(self.local.machines), **common)
        return [factory_status(self.factory_answer(wall), **common)]

    def factory_answer(self, wall: float) -> FactoryStatus:
        """This factory's status with the host's figures, its root's last word and this child's heartbeat."""
        return dataclasses.replace(self.local.factory, **self.host_figures(),
                                   factory_heartbeat_time=int(self.local.made_at),
                                   responder_heartbeat_time=int(wall))

    def _may_send(self, datagrams, now):
        """The overall bucket of answer datagrams, whoever asks: a whole answer or none."""
        refill = ANSWER_DATAGRAMS_PER_SECOND if self._sent_at is None else \
            max(now - self._sent_at, 0.0) * ANSWER_DATAGRAMS_PER_SECOND
        tokens = min(ANSWER_DATAGRAMS_PER_SECOND, self._sent_tokens + refill)
        self._sent_at = now
        if tokens < datagrams:
            self._sent_tokens = tokens
            return False
        self._sent_tokens = tokens - datagrams
        return True

    def _may_answer(self, host, now):
        """A token bucket per asking address."""
        tokens, then = self._buckets.get(host, (ANSWER_BURST, now))
        tokens = min(ANSWER_BURST, tokens + (now - then) * ANSWER_RATE)
        if tokens < 1:
            self._buckets[host] = (tokens, now)
            return False
        self._buckets[host] = (tokens - 1, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets = {h: b for h, b in self._buckets.items() if now - b[1] < 60}
        return True
