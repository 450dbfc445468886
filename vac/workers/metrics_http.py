"""A small HTTP server for GET /metrics that never blocks the loop it lives in.

Every socket is non-blocking and registered in one epoll selector; its fd
is readable whenever any of them is ready, so the metrics child's WorkerLoop
waits on that single fd beside its channel and heartbeats as usual. Clients
are few and bounded in number, request size and time: a scraper that never
sends or never reads costs one connection until its deadline, nothing more.
"""

import logging
import selectors
import socket

log = logging.getLogger(__name__)

MAX_CLIENTS = 8
MAX_REQUEST_BYTES = 8192
CLIENT_SECONDS = 10.0
BACKLOG = 16
READ_CHUNK = 4096
METRICS_PATH = "/metrics"


class Client:
    """One connection: the request read so far, the response left to write, its deadline."""

    def __init__(self, sock, peer, deadline):
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.request = bytearray()
        self.response = None
        self.answered = False     # response written; reading what is left until EOF


class MetricsServer:
    """Serves render() at GET /metrics on (host, port); call handle(now) when fileno() is ready."""

    def __init__(self, host, port, render, *, max_clients=MAX_CLIENTS,
                 client_seconds=CLIENT_SECONDS):
        self.render = render
        self.max_clients = max_clients
        self.client_seconds = client_seconds
        self.scrapes = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # A restarted exporter rebinds at once despite its predecessor's
            # connections in TIME_WAIT.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(BACKLOG)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.selector = selectors.EpollSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._accepting = True
        self.clients = {}

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
                log.info("metrics client %s: still connected after %.0f s; closing it",
                         client.peer, self.client_seconds)
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
                log.warning("metrics: accept failed: %s", error)
                return
            sock.setblocking(False)
            client = Client(sock, f"{peer[0]}:{peer[1]}", now + self.client_seconds)
            self.clients[sock.fileno()] = client
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
            self._answer_status(client, 431, "Request Header Fields Too Large",
                                b"request too large\n")

    def _answer(self, client, head):
        request_line = head.split(b"\n", 1)[0].strip()
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._answer_status(client, 400, "Bad Request", b"bad request\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._answer_status(client, 405, "Method Not Allowed", b"only GET and HEAD\n",
                                extra=b"Allow: GET, HEAD\r\n")
            return
        if target != METRICS_PATH.encode():
            self._answer_status(client, 404, "Not Found", b"metrics are at /metrics\n")
            return
        body, content_type = self.render()
        self.scrapes += 1
        self._respond(client, 200, "OK", body, content_type, head_only=method == b"HEAD")

    def _answer_status(self, client, code, reason, body, extra=b""):
        self._respond(client, code, reason, body, "text/plain; charset=utf-8", extra=extra)

    def _respond(self, client, code, reason, body, content_type, head_only=False, extra=b""):
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n"
        client.response = bytearray(head if head_only else head + body)
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
        self._set_accepting(True)
