"""One poll of the space, as Vac's client makes it, with an overall deadline (vac.space.rounds)."""

from vac.space import protocol, rounds
from vac.space.rounds import End, Poll, Send, Wait

TIMEOUT = 10.0
QUIET = TIMEOUT / rounds.QUIET_DIVISOR
QUERIES = (protocol.MACHINETYPES_QUERY, protocol.FACTORY_QUERY)


def poll(names=("f2", "f3"), queries=QUERIES):
    return Poll(names, queries=queries, salt=b"salt", started_at=0.0, udp_timeout=TIMEOUT)


def cookie_of(p, name):
    return protocol.cookie(b"salt", name)


def test_each_factory_is_asked_every_query_with_a_cookie_of_its_own():
    p = poll()
    step = p.next_step(0.0)
    assert isinstance(step, Send)
    assert sorted(step.queries) == sorted((name, cookie_of(p, name), query) for name in ("f2", "f3")
                                          for query in QUERIES)
    p.sent(0.0)
    assert p.next_step(0.1) == Wait(QUIET)


def test_factories_short_of_what_they_announced_are_asked_again_after_a_quiet_spell():
    p = poll()
    p.sent(0.0)
    # f2 says it has 3 machinetypes and sends 2, and its factory status; f3 is silent.
    for i, machinetype in enumerate(("a", "b")):
        assert p.take(cookie_of(p, "f2"), protocol.MACHINETYPES_QUERY, machinetype, 3, object(), 0.5 + i)
    assert p.take(cookie_of(p, "f2"), protocol.FACTORY_QUERY, "factory", 1, object(), 1.5)
    # Each answer keeps the round listening for another quiet spell.
    assert p.next_step(2.0) == Wait(1.5 + QUIET)
    step = p.next_step(1.5 + QUIET)
    assert isinstance(step, Send) and sorted((name, query) for name, _, query in step.queries) == [
        ("f2", protocol.MACHINETYPES_QUERY), ("f3", protocol.FACTORY_QUERY), ("f3", protocol.MACHINETYPES_QUERY)]


def test_a_poll_ends_when_every_factory_answered_in_full():
    p = poll(names=("f2",))
    p.sent(0.0)
    p.take(cookie_of(p, "f2"), protocol.MACHINETYPES_QUERY, "a", 1, "status", 0.2)
    p.take(cookie_of(p, "f2"), protocol.FACTORY_QUERY, "factory", 1, "status", 0.3)
    assert isinstance(p.next_step(0.4), End)
    assert p.by_name()["f2"].got[protocol.MACHINETYPES_QUERY] == {"a": "status"}


def test_six_rounds_at_most_then_the_poll_ends():
    p = poll()
    now, sends = 0.0, 0
    while not isinstance(step := p.next_step(now), End):
        if isinstance(step, Send):
            sends += 1
            p.sent(now)
        else:
            now = step.until
    assert sends == rounds.MAX_QUERY_ROUNDS and "rounds" in step.why
    assert now == rounds.MAX_QUERY_ROUNDS * QUIET < rounds.DEADLINE_FACTOR * TIMEOUT


def test_a_peer_that_keeps_answering_cannot_hold_the_poll_past_its_deadline():
    p = poll(names=("f2",))
    p.sent(0.0)
    now = 0.0
    # A million machinetypes announced, one arriving every second: Vac's loop would never end.
    while now < 100:
        p.take(cookie_of(p, "f2"), protocol.MACHINETYPES_QUERY, f"m{now}", 10**6, object(), now)
        step = p.next_step(now)
        if isinstance(step, End):
            break
        assert not isinstance(step, Wait) or step.until <= p.deadline
        now += 1.0
    assert isinstance(step, End) and "deadline" in step.why and now == rounds.DEADLINE_FACTOR * TIMEOUT


def test_answers_nobody_asked_for_are_refused():
    p = poll()
    assert not p.take("not-a-cookie", protocol.MACHINETYPES_QUERY, "a", 1, object(), 1.0)
    assert not p.take(cookie_of(p, "f2"), protocol.MACHINES_QUERY, "m", 1, object(), 1.0), "machines not asked"
    with_machines = poll(queries=QUERIES + (protocol.MACHINES_QUERY,))
    assert with_machines.take(cookie_of(with_machines, "f2"), protocol.MACHINES_QUERY, "m", 2, object(), 1.0)
