"""The vacquery child: VacQuery over UDP with the other factories of the space.

It answers every query of the space (space_responder.py) from what the root
last sent it (LocalStatus), polls the factories listed in `factories` as
Vac's client does (space_poller.py, vac/space/rounds.py) every interval and
when an operator asks (SpaceRequest), sends the root one SpaceStatus per
poll, and after each poll reports this factory to VacMon (`vacmon_hostport`)
as Vac does. Names are resolved by a thread of their own when a poll asks for
it, so a hung DNS lookup delays only that, never a heartbeat.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from vac import __version__
from vac.ipc import messages
from vac.ipc.framing import Unencodable
from vac.space import protocol
from vac.space.factory_status import factory_status
from vac.workers import space_poller, space_responder
from vac.workers.harness import WorkerLoop
from vac.workers.host_figures import HostFigures
from vac.workers.space_poller import Poller
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
# VacMon's messages carry this cookie, as Vac's do.
VACMON_COOKIE = "0"


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
                    node.take_local(msg)
                elif isinstance(msg, messages.SpaceRequest):
                    node.poller.request(msg.request, msg.machines)
                else:
                    log.warning("vacquery: ignoring an unexpected %s message", type(msg).__name__)
            if loop.ready_fds:
                node.read_datagrams(time.monotonic())
            result = node.tick(time.monotonic())
            if result is not None:
                send_report(channel, result)
                loop.title(node.title())
    finally:
        node.close()
        log.info("vacquery stopping: %s", loop.stop_reason)


def send_report(channel, status):
    """Send the root a poll's report; one too large for a frame goes lighter, saying so in the log."""
    try:
        channel.send(status)
        return
    except Unencodable as error:
        log.warning("vacquery: the space's report cannot be sent whole (%s); sending it without machines", error)
    for smaller in space_poller.lighter(status):
        try:
            channel.send(smaller)
            return
        except Unencodable:
            continue
    log.error("vacquery: the space's report does not fit a message even without machines and with one "
              "factory; this poll is not reported")


def _address(text, default_port):
    """'host:port', 'host' or ':port' -> (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, default_port
    return host, int(port)


class SpaceQuery:
    """The responder, the poller and VacMon's reports, driven by the worker's loop."""

    def __init__(self, spec, clock=time.time, resolve_names=True):
        self.space = spec["space"]
        self.factory_name = spec["factory_name"]
        self.site = protocol.site_of(self.space, spec.get("gocdb_sitename"))
        self.version = f"vac {__version__}"
        self.udp_timeout = float(spec.get("udp_timeout_seconds", 10.0))
        self.peers = [name for name in spec.get("factories", ()) if name not in (".", self.factory_name)]
        self.listen = spec.get("listen")
        self.clock = clock
        self.responder = Responder(space=self.space, site=self.site, version=self.version,
                                   host_figures=HostFigures(spec.get("state_dir", "/var/lib/vac"), clock).get)
        self.poller = Poller(space=self.space, peers=self.peers, udp_timeout=self.udp_timeout,
                             interval=float(spec.get("interval_seconds", 60.0)), version=self.version,
                             clock=clock, monotonic_start=time.monotonic())
        self.vacmon: list[str] = []
        self.responder_error = None
        self.sock = self._open_socket()
        self.addresses: dict[str, tuple] = {}
        self.unresolved: dict[str, str] = {}
        self._resolved_at = None      # when the resolver last went through the names
        self._resolve = threading.Event()
        self._closing = False
        if resolve_names:         # tests set the addresses themselves
            threading.Thread(target=self._resolve_when_asked, name="vacquery-resolver", daemon=True).start()
            self._resolve.set()       # before the first poll
        self._bad_logged_at = None    # when a bad answer was last logged
        self._bad_unlogged = 0        # bad answers since then
        self._silent = []             # the factories that did not answer the last poll

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
        """The resolver thread: looks the factories' and VacMon's names up each time a poll asks it to."""
        while True:
            self._resolve.wait()
            self._resolve.clear()
            if self._closing:
                return
            for name in self.peers + list(self.vacmon):
                host, port = _address(name, protocol.PORT)
                try:
                    info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
                except OSError as error:
                    if self.unresolved.get(name) != str(error):
                        log.warning("vacquery: cannot resolve %s: %s", host, error)
                    self.unresolved[name] = str(error)
                    continue
                self.addresses[name] = info[0][4]
                self.unresolved.pop(name, None)
            self._resolved_at = time.monotonic()

    def fds(self):
        return [self.sock]

    def close(self):
        self._closing = True
        self._resolve.set()
        self.sock.close()

    # What the loop calls.

    def take_local(self, msg):
        """The root's LocalStatus: what to answer with, and where VacMon listens."""
        self.responder.local = LocalAnswers.from_message(msg)
        if list(msg.vacmon) != self.vacmon:
            self.vacmon = list(msg.vacmon)
            self._resolve.set()

    def next_wake(self, now):
        return self.poller.next_wake(now)

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
        """Start, continue or end a poll; returns a SpaceStatus when one ends."""
        polling = self.poller.poll is not None
        status = self.poller.tick(now, self.addresses, self._send, self.unresolved)
        if not polling and self.poller.poll is not None and (
                self._resolved_at is None or now - self._resolved_at >= RESOLVE_SECONDS
                or len(self.addresses) < len(self.peers) + len(self.vacmon)):
            # Names are looked up again every RESOLVE_SECONDS, and while any is
            # unknown; this poll asks with what is known now.
            self._resolve.set()
        if status is not None:
            silent = sorted(status.silent)
            if silent != self._silent:
                log.info("vacquery: %s", f"no answer from {' '.join(silent)}" if silent else "every factory answers")
                self._silent = silent
            self._report_to_vacmon()
        return status

    def title(self):
        asked = f"{len(self.peers)} factories, {self.poller.answering} answering" if self.peers \
            else "no other factories"
        if self.responder_error:
            return f"vacquery [{asked}; not answering: {self.responder_error}]"
        return f"vacquery [{asked}]"

    # Datagrams.

    def _send(self, datagram, address, name):
        try:
            self.sock.sendto(datagram, address)
        except OSError as error:
            log.debug("vacquery: sending to %s: %s", name, error)

    def _on_datagram(self, data, address, now):
        answer = space_poller.read_answer(data, self.space)
        if not isinstance(answer, str):
            self.poller.take(answer, now)
            return
        if not answer.startswith(protocol.NOT_AN_ANSWER):
            self._bad_answer(address[0], answer, now)
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
        """Drop one answer (the rest of its poll stands), naming it in the log at a bounded rate."""
        self.poller.dropped(host, reason)
        if self._bad_logged_at is not None and now - self._bad_logged_at < BAD_ANSWER_LOG_SECONDS:
            self._bad_unlogged += 1
            return
        more = f" ({self._bad_unlogged} more dropped since the last line)" if self._bad_unlogged else ""
        log.warning("vacquery: dropped an answer from %s: %s%s", host, reason, more)
        self._bad_logged_at, self._bad_unlogged = now, 0

    def _report_to_vacmon(self):
        """After each poll, as Vac does: this factory's factory_status and every machinetype_status (cookie 0)."""
        local = self.responder.local
        if not self.vacmon or local is None:
            return
        wall = self.clock()
        common = {"space": self.space, "site": self.site, "query_cookie": VACMON_COOKIE,
                  "daemon_version": self.version, "now": int(wall)}
        datagrams = [factory_status(self.responder.factory_answer(wall), **common),
                     *protocol.machinetype_statuses(list(local.machinetypes[:MAX_ANSWER_DATAGRAMS_PER_QUERY]),
                                                    **common)]
        for name in self.vacmon:
            address = self.addresses.get(name)
            if address is not None:
                for datagram in datagrams:
                    self._send(datagram, address, name)
