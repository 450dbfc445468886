"""The vacquery child: VacQuery over UDP with the other factories of the space.

It answers machinetypes_query datagrams from what the root last sent it
(LocalStatus), and every interval asks each factory listed in `factories`
for its machinetypes, gathering answers for udp_timeout_seconds (asking again
those that have not answered in full a third and two thirds of the way), then
sends the root one SpaceStatus. Names are resolved by a thread of their own
when a round asks for it, so a hung DNS lookup delays only that, never a
heartbeat. Answers are rate limited per asking address, so spoofed
queries cannot turn us into an amplifier.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from vac import __version__
from vac.ipc import messages
from vac.space import protocol
from vac.workers import space_responder
from vac.workers.harness import WorkerLoop
from vac.workers.host_figures import HostFigures
from vac.workers.space_responder import LocalAnswers, Responder

log = logging.getLogger(__name__)

RESOLVE_SECONDS = 300.0
# Datagrams one query is answered with at most, and answered per second to
# everyone together: with the per-address limit they bound what spoofed
# queries can make us send (README: the space).
MAX_ANSWER_DATAGRAMS_PER_QUERY = protocol.MAX_ANSWER_DATAGRAMS
ANSWER_DATAGRAMS_PER_SECOND = space_responder.ANSWER_DATAGRAMS_PER_SECOND
MAX_DATAGRAMS_PER_WAKE = 256
# A peer that sends answers we cannot read is named in the log at most this often.
BAD_ANSWER_LOG_SECONDS = 60.0


def run(channel, spec):
    """Entry point in the forked vacquery process."""
    loop = WorkerLoop(channel, spec, role="vacquery")
    node = SpaceQuery(spec)
    loop.title(node.title())
    loop.ready()
    loop.report("waiting")
    try:
        while not loop.stopping:
            now = time.monotonic()
            received = loop.wait(max(node.next_wake(now) - now, 0.0), fds=node.fds())
            for msg in received:
                if isinstance(msg, messages.LocalStatus):
                    node.responder.local = LocalAnswers.from_message(msg)
                else:
                    log.warning("vacquery: ignoring an unexpected %s message", type(msg).__name__)
            if loop.ready_fds:
                node.read_datagrams(time.monotonic())
            result = node.tick(time.monotonic())
            if result is not None:
                channel.send(result)
                loop.title(node.title())
    finally:
        node.close()
        log.info("vacquery stopping: %s", loop.stop_reason)


def _address(text, default_port):
    """'host:port', 'host' or ':port' -> (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, default_port
    return host, int(port)


class SpaceQuery:
    """The responder and the poller, driven by the worker's loop."""

    def __init__(self, spec, clock=time.time):
        self.space = spec["space"]
        self.factory_name = spec["factory_name"]
        self.site = protocol.site_of(self.space, spec.get("gocdb_sitename"))
        self.version = f"vac {__version__}"
        self.udp_timeout = float(spec.get("udp_timeout_seconds", 10.0))
        self.interval = max(float(spec.get("interval_seconds", 60.0)), self.udp_timeout)
        self.peers = [name for name in spec.get("factories", ()) if name not in (".", self.factory_name)]
        self.listen = spec.get("listen")
        self.clock = clock
        self.responder = Responder(space=self.space, site=self.site, version=self.version,
                                   host_figures=HostFigures(spec.get("state_dir", "/var/lib/vac"), clock).get)
        self.responder_error = None
        self.sock = self._open_socket()
        self.addresses: dict[str, tuple] = {}
        self._resolved_at = None      # when the resolver last went through the names
        self._resolve = threading.Event()
        self._closing = False
        self._resolver = threading.Thread(target=self._resolve_when_asked, name="vacquery-resolver", daemon=True)
        self._resolver.start()
        self._resolve.set()           # before the first round
        self._round = None            # cookie -> {"name", "expected", "got": {machinetype: status}}
        self._round_end = None
        self._resends: list[float] = []
        self._next_round = time.monotonic() + min(1.0, self.interval)
        self.answering = 0            # factories that answered the last round
        self._bad_logged_at = None    # when a bad answer was last logged
        self._bad_unlogged = 0        # bad answers since then
        self._silent = []             # those that did not

    # Sockets and names.

    def _open_socket(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if self.listen:
            host, port = _address(self.listen, protocol.PORT)
            try:
                sock.bind((host or "0.0.0.0", port))
                log.info("vacquery: answering on %s:%d", host or "0.0.0.0", port)
                return sock
            except OSError as error:
                self.responder_error = f"cannot listen on {self.listen}: {error.strerror}"
                log.error("vacquery: %s; asking the space only", self.responder_error)
        sock.bind(("0.0.0.0", 0))
        return sock

    def _resolve_when_asked(self):
        """The resolver thread: looks the factories' names up each time a round asks it to."""
        while True:
            self._resolve.wait()
            self._resolve.clear()
            if self._closing:
                return
            for name in self.peers:
                host, port = _address(name, protocol.PORT)
                try:
                    info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
                except OSError as error:
                    log.warning("vacquery: cannot resolve factory %s: %s", host, error)
                    continue
                self.addresses[name] = info[0][4]
            self._resolved_at = time.monotonic()

    def fds(self):
        return [self.sock]

    def close(self):
        self._closing = True
        self._resolve.set()
        self.sock.close()

    # What the loop calls.

    def next_wake(self, now):
        times = [self._next_round] + self._resends
        if self._round_end is not None:
            times.append(self._round_end)
        return min(times)

    def read_datagrams(self, now):
        for _ in range(MAX_DATAGRAMS_PER_WAKE):
            try:
                data, address = self.sock.recvfrom(protocol.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # An ICMP port unreachable from a factory that does not listen.
                log.debug("vacquery: %s", error)
                continue
            self._on_datagram(data, address, now)

    def tick(self, now):
        """Start, continue or end a round; returns a SpaceStatus when one ends."""
        if self._round is None and now >= self._next_round:
            self._start_round(now)
        if self._round is None:
            return None
        due = [at for at in self._resends if now >= at]
        if due:
            self._resends = [at for at in self._resends if now < at]
            self._send_queries()
        if now >= self._round_end or self._complete():
            return self._end_round(now)
        return None

    def title(self):
        asked = f"{len(self.peers)} factories, {self.answering} answering" if self.peers else "no other factories"
        if self.responder_error:
            return f"vacquery [{asked}; not answering: {self.responder_error}]"
        return f"vacquery [{asked}]"

    # Rounds.

    def _start_round(self, now):
        if not self.peers:
            self._next_round = now + self.interval
            return
        # Names are looked up again every RESOLVE_SECONDS, and while any is
        # unknown; this round asks with what is known now.
        if self._resolved_at is None or now - self._resolved_at >= RESOLVE_SECONDS or \
                len(self.addresses) < len(self.peers):
            self._resolve.set()
        salt = os.urandom(32)
        self._round = {protocol.cookie(salt, name): {"name": name, "expected": 1, "got": {}}
                       for name in self.peers}
        self._round_end = now + self.udp_timeout
        self._resends = [now + self.udp_timeout / 3, now + 2 * self.udp_timeout / 3]
        self._next_round = now + self.interval
        self._send_queries()

    def _send_queries(self):
        for query_cookie, peer in self._round.items():
            address = self.addresses.get(peer["name"])
            if address is None or len(peer["got"]) >= peer["expected"]:
                continue
            try:
                self.sock.sendto(protocol.machinetypes_query(self.space, query_cookie, self.version), address)
            except OSError as error:
                log.debug("vacquery: asking %s: %s", peer["name"], error)

    def _complete(self):
        return all(len(peer["got"]) >= peer["expected"] for peer in self._round.values())

    def _end_round(self, now):
        answered_at = self.clock()
        factories = {}
        for peer in self._round.values():
            if not peer["got"]:
                continue
            factories[peer["name"]] = {"answered_at": answered_at, "machinetypes": {
                status.machinetype: {"running_hs06": status.running_hs06,
                                     "running_machines": status.running_machines,
                                     "running_processors": status.running_processors}
                for status in peer["got"].values()}}
        silent = sorted(peer["name"] for peer in self._round.values() if not peer["got"])
        if silent != self._silent:
            log.info("vacquery: %s", f"no answer from {' '.join(silent)}" if silent else "every factory answers")
            self._silent = silent
        self.answering = len(factories)
        self._round, self._round_end, self._resends = None, None, []
        return messages.SpaceStatus(factories=factories, polled=list(self.peers))

    # Datagrams.

    def _on_datagram(self, data, address, now):
        answer = protocol.read_machinetype_status(data, self.space)
        if isinstance(answer, str) and not answer.startswith(protocol.NOT_AN_ANSWER):
            self._bad_answer(address[0], answer, now)
            return
        if not isinstance(answer, str):
            answer_cookie, status = answer
            peer = self._round.get(answer_cookie) if self._round is not None else None
            if peer is not None:
                peer["expected"] = status.num_machinetypes
                peer["got"][status.machinetype] = status
            return
        query = protocol.parse_query(data)
        if query is None or self.responder_error is not None:
            return
        for datagram in self.responder.answer(query, address[0], now, self.clock()):
            try:
                self.sock.sendto(datagram, address)
            except OSError as error:
                log.debug("vacquery: answering %s: %s", address[0], error)
                return

    def _bad_answer(self, host, reason, now):
        """Drop one answer (the rest of its round stands), naming it in the log at a bounded rate."""
        if self._bad_logged_at is not None and now - self._bad_logged_at < BAD_ANSWER_LOG_SECONDS:
            self._bad_unlogged += 1
            return
        more = f" ({self._bad_unlogged} more dropped since the last line)" if self._bad_unlogged else ""
        log.warning("vacquery: dropped an answer from %s: %s%s", host, reason, more)
        self._bad_logged_at, self._bad_unlogged = now, 0
