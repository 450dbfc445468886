"""What VacQuery costs as the space grows: every poll of every factory, datagram by datagram.

Each factory is vac's Factory, filled once as in the week (so it answers
with what a full factory of the week's space answers), and its vacquery is
vac's own on the simulated network. Polls start at the factories' own
times, spread over the poll interval; every datagram of the polls started
in the window is counted, both ways, with its size: the queries each
factory sends, the answers it gets, and the answers it gives every other
factory's polls. A window shorter than the interval sees the polls of as
many factories as it lasts, every factory answering them.
"""

import dataclasses
import random
import statistics
import time

from space_factories import SimFactory
from space_network import SimClock, SimNetwork, SimVacquery, run


@dataclasses.dataclass
class TrafficResult:
    factories: int
    loss: float
    window_seconds: float
    polls: int = 0
    polls_answered_in_full: int = 0      # every other factory answered every query
    silent: int = 0                      # factories missing from a poll's report
    poll_seconds: list = dataclasses.field(default_factory=list)
    datagrams_out: int = 0
    datagrams_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    queries_out: int = 0
    queries_unanswered: int = 0          # queries a responder answered with nothing (its rate limits)
    lost: int = 0
    vacquery_cpu_seconds: float = 0.0    # in vac's vacquery code, all factories together
    seconds: float = 0.0                 # the simulation's own CPU time

    def per_factory_minute(self, total):
        return total / self.factories / (self.window_seconds / 60.0)


def measure(scenario, configs, *, window_seconds, loss, seed, host_figures):
    """Traffic of the polls `scenario`'s factories start within `window_seconds` of its start."""
    began = time.process_time()
    rng = random.Random(seed)
    clock = SimClock(scenario.start)
    network = SimNetwork(clock, rng, loss=loss)
    count = scenario.factories
    names = [scenario.name(i) for i in range(count)]
    spread = scenario.poll_interval / count
    offset = rng.uniform(0.0, spread)
    order = list(range(count))
    rng.shuffle(order)
    nodes = []
    for i in range(count):
        factory = SimFactory(names[i], configs[tuple(scenario.offers(i))], clock=clock,
                             rng=random.Random(seed * 1000 + i), in_space=True)
        factory.tick()
        node = SimVacquery(scenario.vacquery_spec(i, names), network, scenario.host(i),
                           first_poll_at=scenario.start + offset + order[i] * spread, host_figures=host_figures)
        node.addresses = {names[j]: (scenario.host(j), node.address[1]) for j in range(count) if j != i}
        node.responder.local = factory.said_at(clock.now)[1]
        nodes.append(node)
    result = TrafficResult(factories=count, loss=loss, window_seconds=window_seconds)
    window_end = scenario.start + window_seconds

    def on_status(node, status):
        if status.started_at >= window_end:
            return
        result.polls += 1
        result.silent += len(status.silent)
        result.polls_answered_in_full += not status.silent and not any(
            answer["short"] for answer in status.factories.values())
        result.poll_seconds.append(status.ended_at - status.started_at)

    cpu = {}
    run(network, nodes, until=window_end, on_status=on_status, cpu=cpu)
    for node in nodes:
        node.poller.peers = []            # polls after the window ask nobody
    run(network, nodes, until=window_end + 3 * scenario.udp_timeout, on_status=on_status, cpu=cpu)
    for traffic in network.traffic.values():
        result.datagrams_out += traffic.datagrams_out
        result.datagrams_in += traffic.datagrams_in
        result.bytes_out += traffic.bytes_out
        result.bytes_in += traffic.bytes_in
        result.queries_out += traffic.queries_out
    result.queries_unanswered = sum(node.responder.unanswered for node in nodes)
    result.lost = network.lost
    result.vacquery_cpu_seconds = sum(cpu.values())
    result.seconds = time.process_time() - began
    return result


def summary(result):
    """The figures per factory per minute, and per other factory, as plain data."""
    per = result.per_factory_minute
    others = result.factories - 1
    datagrams = per(result.datagrams_out + result.datagrams_in)
    kilobytes = per(result.bytes_out + result.bytes_in) / 1000.0
    return {
        "factories": result.factories, "loss": result.loss, "window_seconds": result.window_seconds,
        "polls": result.polls, "polls_answered_in_full": result.polls_answered_in_full,
        "silent": result.silent, "lost": result.lost, "queries_unanswered": result.queries_unanswered,
        "poll_seconds_p50": statistics.median(result.poll_seconds) if result.poll_seconds else None,
        "poll_seconds_max": max(result.poll_seconds, default=None),
        "datagrams_per_factory_minute": datagrams, "kilobytes_per_factory_minute": kilobytes,
        "datagrams_out_per_factory_minute": per(result.datagrams_out),
        "kilobytes_out_per_factory_minute": per(result.bytes_out) / 1000.0,
        "queries_per_factory_minute": per(result.queries_out),
        "datagrams_per_other_factory": datagrams / others, "kilobytes_per_other_factory": kilobytes / others,
        "vacquery_cpu_ms_per_factory_minute": 1000.0 * per(result.vacquery_cpu_seconds),
        "simulation_seconds": result.seconds,
    }
