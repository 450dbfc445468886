"""A small HTTP/1.1 server that never blocks the loop it lives in (metrics, Machine/Job Features).

Every socket is non-blocking and registered in one epoll selector; its fd
is readable whenever any of them is ready, so a child's WorkerLoop waits on
that single fd beside its channel and heartbeats as usual. One request per
connection. Clients are bounded in number (in all and per peer address),
request size and time: a client that never sends, sends garbage or never
reads costs one connection until its deadline, nothing more.

What is served is the caller's: answer(method, target) returns the Reply.
"""

from __future__ import annotations

import logging
import selectors
import socket
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

MAX_CLIENTS = 8
MAX_REQUEST_BYTES = 8192
CLIENT_SECONDS = 10.0
BACKLOG = 16
READ_CHUNK = 4096
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Reply:
    """One response: status, body, its type, extra header lines; head_only for HEAD."""
    status: int
    reason: str
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()
    head_only: bool = False


Answer = Callable[[bytes, bytes], Reply]


class Client:
    """One connection: the request read so far, the response left to write, its deadline."""

    def __init__(self, sock, address, port, deadline):
        self.sock = sock
        self.address = address
        self.peer = f"{address}:{port}"
        self.deadline = deadline
        self.request = bytearray()
        self.response = None
        self.answered = False     # response written; reading what is left until EOF


class HttpServer:
    """Serves answer(method, target) on (host, port); call handle(now) when fileno() is ready."""

    def __init__(self, host, port, answer: Answer, *, name="http", max_clients=MAX_CLIENTS,
                 max_per_peer=None, client_seconds=CLIENT_SECONDS, backlog=BACKLOG):
        self.answer = answer
        self.name = name
        self.max_clients = max_clients
        self.max_per_peer = max_per_peer
        self.client_seconds = client_seconds
        self.refused_total = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # A restarted server rebinds at once despite its predecessor's
            # connections in TIME_WAIT.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(backlog)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.selector = selectors.EpollSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._accepting = True
        self.clients = {}
        self._per_peer = {}

    @property
    def address(self):
        """'IP:PORT' actually bound (the port the kernel chose when 0 was asked for)."""
        host, port = self.listener.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def fileno(self):
        """Readable whenever a connection or the listener has something to do."""
        return self.selector.fileno()

    def next_deadline(self):
        """The earliest client deadline (monotonic), or None with no clients."""
        return min((client.deadline for client in self.clients.values()), default=None)

    def handle(self, now):
        """Accept, read, answer and write whatever is ready, then drop expired clients."""
        for key, mask in self.selector.select(0):
            if key.data is None:
                self._accept(now)
                continue
            client = key.data
            if client.sock.fileno() == -1:
                continue  # closed earlier in this batch
            if mask & selectors.EVENT_READ and client.answered:
                self._discard(client)
            elif mask & selectors.EVENT_READ and client.response is None:
                self._read(client)
            if client.response is not None and not client.answered and client.sock.fileno() != -1:
                self._write(client)
        for client in list(self.clients.values()):
            if now >= client.deadline:
                log.info("%s client %s: still connected after %.0f s; closing it",
                         self.name, client.peer, self.client_seconds)
                self._close(client)

    def close(self):
        for client in list(self.clients.values()):
            self._close(client)
        self.selector.close()
        self.listener.close()

    def _accept(self, now):
        while len(self.clients) < self.max_clients:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # ECONNABORTED, EMFILE: this connection is lost, the server is not.
                log.warning("%s: accept failed: %s", self.name, error)
                return
            address = peer[0]
            if self.max_per_peer is not None and self._per_peer.get(address, 0) >= self.max_per_peer:
                # One peer holding every connection would starve the others.
                self.refused_total += 1
                if self.refused_total == 1 or self.refused_total % 1000 == 0:
                    log.warning("%s: %s already holds %d connections; closing its new ones "
                                "(%d refused so far)", self.name, address, self.max_per_peer,
                                self.refused_total)
                sock.close()
                continue
            sock.setblocking(False)
            client = Client(sock, address, peer[1], now + self.client_seconds)
            self.clients[sock.fileno()] = client
            self._per_peer[address] = self._per_peer.get(address, 0) + 1
            self.selector.register(sock, selectors.EVENT_READ, client)
        # Full: leave further connections in the backlog until one closes.
        self._set_accepting(False)

    def _set_accepting(self, accepting):
        if accepting != self._accepting:
            self._accepting = accepting
            if accepting:
                self.selector.register(self.listener, selectors.EVENT_READ, None)
            else:
                self.selector.unregister(self.listener)

    def _read(self, client):
        try:
            data = client.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not data:
            self._close(client)
            return
        client.request += data
        head_end = client.request.find(b"\r\n\r\n")
        if head_end < 0:
            head_end = client.request.find(b"\n\n")
        if head_end >= 0:
            self._answer(client, bytes(client.request[:head_end]))
        elif len(client.request) > MAX_REQUEST_BYTES:
            self._respond(client, Reply(431, "Request Header Fields Too Large", b"request too large\n"))

    def _answer(self, client, head):
        request_line = head.split(b"\n", 1)[0].strip()
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._respond(client, Reply(400, "Bad Request", b"bad request\n"))
            return
        self._respond(client, self.answer(parts[0], parts[1]))

    def _respond(self, client, reply):
        head = [f"HTTP/1.1 {reply.status} {reply.reason}", f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(reply.body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in reply.headers]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        client.response = bytearray(head_bytes if reply.head_only else head_bytes + reply.body)
        # Nothing more is read from it; wait until it can take the response.
        self.selector.modify(client.sock, selectors.EVENT_WRITE, client)

    def _write(self, client):
        try:
            sent = client.sock.send(client.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        del client.response[:sent]
        if client.response:
            return
        # Closing with unread input would reset the connection and could destroy
        # the answer before the client read it: end our side, read until EOF.
        client.answered = True
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(client)
            return
        self.selector.modify(client.sock, selectors.EVENT_READ, client)

    def _discard(self, client):
        try:
            data = client.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)

    def _close(self, client):
        fd = client.sock.fileno()
        if fd != -1:
            self.selector.unregister(client.sock)
            self.clients.pop(fd, None)
            client.sock.close()
            count = self._per_peer.pop(client.address, 1) - 1
            if count > 0:
                self._per_peer[client.address] = count
        self._set_accepting(True)
