"""A simulated network and clock for VacQuery: datagrams delivered in-process and counted.

Each factory's vacquery is vac's own SpaceQuery (vac/workers/vacquery.py)
with its UDP socket replaced by a SimSocket: queries, answers, rate limits,
poll rounds and the SpaceStatus it reports are vac's code; only the wire
(a latency per datagram, optionally a loss rate) and the clock are simulated.
run() drives a set of them event by event: the clock jumps from one
delivery or poll deadline to the next, so an idle minute costs nothing.
"""

import collections
import dataclasses
import heapq
import time

from vac.space import protocol
from vac.workers import vacquery
from vac.workers.space_poller import Poller
from vac.workers.space_responder import Responder

# One hop inside a site's network, seconds (each datagram draws its own).
LATENCY = (0.0002, 0.0010)


class SimClock:
    """The simulated wall clock (the simulation's monotonic clock too)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@dataclasses.dataclass
class Traffic:
    """What one address sent and received."""
    datagrams_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    bytes_in: int = 0
    queries_out: int = 0


class SimSocket:
    """The part of a non-blocking UDP socket SpaceQuery uses, on the simulated network."""

    def __init__(self, network, address):
        self.network = network
        self.address = address
        self.inbox = collections.deque()

    def sendto(self, data, address):
        self.network.send(self.address, address, data)
        return len(data)

    def recvfrom(self, bufsize):
        if not self.inbox:
            raise BlockingIOError
        data, source = self.inbox.popleft()
        return data[:bufsize], source

    def close(self):
        self.network.sockets.pop(self.address, None)


class SimNetwork:
    """Datagrams in flight, ordered by arrival; per-address counts of what each sent and received."""

    def __init__(self, clock, rng, *, loss=0.0, latency=LATENCY):
        self.clock = clock
        self.rng = rng
        self.loss = loss
        self.latency = latency
        self.sockets = {}
        self.traffic = collections.defaultdict(Traffic)
        self.lost = 0
        self._in_flight = []
        self._sequence = 0

    def socket(self, host):
        address = (host, protocol.PORT)
        self.sockets[address] = SimSocket(self, address)
        return self.sockets[address]

    def send(self, source, destination, data):
        sender = self.traffic[source[0]]
        sender.datagrams_out += 1
        sender.bytes_out += len(data)
        if _is_query(data):
            sender.queries_out += 1
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        self._sequence += 1
        heapq.heappush(self._in_flight, (self.clock.now + self.rng.uniform(*self.latency), self._sequence,
                                         destination, source, data))

    def next_arrival(self):
        return self._in_flight[0][0] if self._in_flight else float("inf")

    def deliver_due(self, now):
        """Put every datagram that has arrived by `now` in its socket's inbox; the sockets that got one."""
        touched = {}
        while self._in_flight and self._in_flight[0][0] <= now:
            _, _, destination, source, data = heapq.heappop(self._in_flight)
            socket = self.sockets.get(destination)
            if socket is None:
                continue
            receiver = self.traffic[destination[0]]
            receiver.datagrams_in += 1
            receiver.bytes_in += len(data)
            socket.inbox.append((data, source))
            touched[destination] = socket
        return list(touched.values())


def _is_query(data):
    # vac's queries name themselves "..._query"; answers never do.
    return b'_query"' in data


class CountingResponder(Responder):
    """vac's responder, counting the queries it answers with nothing (its rate limits, or nothing to say yet)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.unanswered = 0

    def answer(self, query, host, now, wall):
        datagrams = super().answer(query, host, now, wall)
        if not datagrams:
            self.unanswered += 1
        return datagrams


class SimVacquery(vacquery.SpaceQuery):
    """vac's vacquery child on the simulated network: its socket and the host's figures are the only stand-ins."""

    def __init__(self, spec, network, host, *, first_poll_at, host_figures):
        self._network = network
        self._host = host
        super().__init__(spec, clock=network.clock, resolve_names=False)
        self.responder = CountingResponder(space=self.space, site=self.site, version=self.version,
                                           host_figures=lambda: host_figures)
        # The poller's first poll comes min(1 s, interval) after its start.
        interval = float(spec.get("interval_seconds", 60.0))
        self.poller = Poller(space=self.space, peers=self.peers, udp_timeout=self.udp_timeout, interval=interval,
                             version=self.version, clock=network.clock,
                             monotonic_start=first_poll_at - min(1.0, interval))

    def _open_socket(self):
        return self._network.socket(self._host)

    @property
    def address(self):
        return self.sock.address


def run(network, nodes, *, until, on_status, cpu=None):
    """Drive `nodes` (SimVacquery) and the network until no event is left before `until`.

    on_status(node, status) gets each SpaceStatus a poll ends with; `cpu`, a
    dict, gets each node's CPU seconds in vac's code (by its address).
    """
    clock = network.clock
    by_address = {node.address: node for node in nodes}
    due = {}
    wakes = []
    sequence = 0

    def reschedule(node):
        nonlocal sequence
        wake = node.next_wake(clock.now)
        if due.get(node.address) != wake:
            due[node.address] = wake
            sequence += 1
            heapq.heappush(wakes, (wake, sequence, node.address))

    for node in nodes:
        reschedule(node)
    while True:
        while wakes and due.get(wakes[0][2]) != wakes[0][0]:
            heapq.heappop(wakes)
        next_wake = wakes[0][0] if wakes else float("inf")
        now = min(network.next_arrival(), next_wake)
        if now > until:
            return
        clock.now = max(clock.now, now)
        if network.next_arrival() <= next_wake:
            for socket in network.deliver_due(clock.now):
                node = by_address.get(socket.address)
                if node is None:
                    socket.inbox.clear()
                    continue
                began = time.process_time()
                while socket.inbox:     # the socket stays readable past one wake's cap
                    node.read_datagrams(clock.now)
                if cpu is not None:
                    cpu[node.address] = cpu.get(node.address, 0.0) + time.process_time() - began
                reschedule(node)
        else:
            address = heapq.heappop(wakes)[2]
            due.pop(address, None)
            node = by_address[address]
            began = time.process_time()
            status = node.tick(clock.now)
            if cpu is not None:
                cpu[node.address] = cpu.get(node.address, 0.0) + time.process_time() - began
            if status is not None:
                on_status(node, status)
            reschedule(node)
