"""One poll of the space as Vac's client makes it, with the overall deadline Vac lacked (pure).

A poll asks every factory listed the same queries (machinetypes and
factory; machines when an operator asks for them). Each factory gets a
cookie of its own, derived from the poll's salt; answers are matched to it.
Like Vac's sendMachinetypesRequests: a round sends a query to each factory
that has returned fewer datagrams than it announced (one until it says), and
listens until nothing arrives for udp_timeout_seconds / 5; up to
MAX_QUERY_ROUNDS rounds. Unlike Vac, a peer that keeps sending cannot keep
the poll open: it ends at udp_timeout_seconds x DEADLINE_FACTOR whatever
arrives. Decisions take `now`; the caller sends and receives.
"""

from __future__ import annotations

import dataclasses

from vac.space import protocol

# Vac sends each query at most this often in one poll (its vacqueryTries + 1).
MAX_QUERY_ROUNDS = 6
# A round listens until no answer has come for udp_timeout_seconds / QUIET_DIVISOR.
QUIET_DIVISOR = 5
# A poll ends this many udp_timeout_seconds after it started, answered or not:
# six quiet rounds of silent factories take 1.2 of them.
DEADLINE_FACTOR = 2.0
# An operator's fresh poll starts at most this long after the last poll started.
ON_DEMAND_SECONDS = 5.0
# The answer each query is answered with.
ANSWER_OF = {protocol.MACHINETYPES_QUERY: protocol.MACHINETYPE_STATUS,
             protocol.MACHINES_QUERY: protocol.MACHINE_STATUS,
             protocol.FACTORY_QUERY: protocol.FACTORY_STATUS}


def longest_wait(udp_timeout: float) -> float:
    """How long an operator's request may take to be answered: until the poll starts, then its deadline."""
    return ON_DEMAND_SECONDS + DEADLINE_FACTOR * udp_timeout


@dataclasses.dataclass
class Asked:
    """One factory in one poll: what it announced and what it returned, per query."""
    name: str
    cookie: str
    expected: dict[str, int]                        # query -> datagrams announced (1 until it says)
    got: dict[str, dict[str, object]]               # query -> key (machinetype, machine, factory) -> status
    first_answer_at: float | None = None

    def short(self) -> list[str]:
        """The queries this factory has not answered in full."""
        return [query for query, count in self.expected.items() if len(self.got[query]) < count]


@dataclasses.dataclass(frozen=True)
class Send:
    """Send these (factory name, cookie, query) now, then listen."""
    queries: tuple[tuple[str, str, str], ...]


@dataclasses.dataclass(frozen=True)
class Wait:
    """Listen until `until` (or an answer) before deciding again."""
    until: float


@dataclasses.dataclass(frozen=True)
class End:
    """The poll is over: every factory answered in full, the rounds are spent, or the deadline passed."""
    why: str


class Poll:
    """The state of one poll of `names` with `queries`, started at `started_at` (monotonic)."""

    def __init__(self, names, *, queries, salt: bytes, started_at: float, udp_timeout: float):
        self.queries = tuple(queries)
        self.started_at = started_at
        self.deadline = started_at + DEADLINE_FACTOR * udp_timeout
        self.quiet = udp_timeout / QUIET_DIVISOR
        self.rounds = 0
        self._listen_until = started_at
        self.asked = {}
        for name in names:
            query_cookie = protocol.cookie(salt, name)
            self.asked[query_cookie] = Asked(name=name, cookie=query_cookie,
                                             expected={query: 1 for query in self.queries},
                                             got={query: {} for query in self.queries})

    def next_step(self, now: float) -> Send | Wait | End:
        """What to do at `now`: send a round, listen on, or end."""
        short = [(asked.name, asked.cookie, query) for asked in self.asked.values() for query in asked.short()]
        if not short:
            return End("every factory answered in full")
        if now >= self.deadline:
            return End(f"the poll's deadline of {self.deadline - self.started_at:g} s passed")
        if now < self._listen_until:
            return Wait(min(self._listen_until, self.deadline))
        if self.rounds >= MAX_QUERY_ROUNDS:
            return End(f"{MAX_QUERY_ROUNDS} rounds of queries were sent")
        return Send(tuple(short))

    def sent(self, now: float) -> None:
        """A round went out at `now`: listen for a quiet period."""
        self.rounds += 1
        self._listen_until = now + self.quiet

    def take(self, answer_cookie: str, query: str, key: str, announced: int, status, now: float) -> bool:
        """An answer to `query` carrying `status` (its `key`, and the count it announced); False if unasked.

        Each answer keeps the round listening for another quiet period, as Vac's
        receiving loop does, but never past the deadline.
        """
        asked = self.asked.get(answer_cookie)
        if asked is None or query not in asked.got:
            return False
        asked.expected[query] = announced
        asked.got[query][key] = status
        if asked.first_answer_at is None:
            asked.first_answer_at = now
        self._listen_until = max(self._listen_until, now + self.quiet)
        return True

    def by_name(self) -> dict[str, Asked]:
        return {asked.name: asked for asked in self.asked.values()}
