"""A Unix-socket proxy in front of the Docker engine that holds back chosen answers.

Requests reach the engine at once; only the answer to a matching request is
held, for a fixed time (an engine slow to answer, as after a dockerd restart)
or until the test releases it (a window the test wants a process to be in).
The proxy knows which process sent each request (SO_PEERCRED), so a test can
signal the very process that waits for a held answer.
"""

import os
import re
import socket
import struct
import tempfile
import threading
import time
import urllib.parse

import pytest

DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
# A held answer that nobody releases is let go after this long, so a failing test ends.
RELEASE_AT_THE_LATEST_SECONDS = 120.0
CHUNK = 65536


def engine_socket():
    """The engine's socket path, from DOCKER_HOST when it names a Unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else DEFAULT_ENGINE_SOCKET


class Held:
    """One request whose answer was held: what it was, who sent it, when it was asked and answered."""

    def __init__(self, request, pid):
        self.request = request
        self.pid = pid
        self.asked_at = time.time()
        self.answered_at = None


class Rule:
    """Hold the answers to requests whose 'METHOD /path?query' matches `pattern`."""

    def __init__(self, pattern, seconds=None, count=None):
        self.pattern = re.compile(pattern)
        self.seconds = seconds          # None: until released
        self.count = count              # None: every matching request
        self.held = []
        self._released = threading.Event()
        self._changed = threading.Condition()

    def release(self):
        self._released.set()

    def wait_held(self, timeout=30.0):
        """The first Held of this rule, once one is held (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.held:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no request matching {self.pattern.pattern} within {timeout} s"
                self._changed.wait(remaining)
            return self.held[0]

    def _claims(self, request):
        if not self.pattern.search(request):
            return False
        with self._changed:
            return self.count is None or len(self.held) < self.count

    def _hold(self, request, pid):
        entry = Held(request, pid)
        with self._changed:
            self.held.append(entry)
            self._changed.notify_all()
        if self.seconds is not None:
            time.sleep(self.seconds)
        else:
            self._released.wait(RELEASE_AT_THE_LATEST_SECONDS)
        entry.answered_at = time.time()


class EngineProxy:
    """Listens on a socket of its own and forwards every connection to the engine's socket."""

    def __init__(self, upstream=None):
        self.upstream = upstream or engine_socket()
        # A short directory of its own: Unix socket paths are limited to 107 bytes.
        self.directory = tempfile.mkdtemp(prefix="vac-proxy-", dir="/tmp")
        self.path = os.path.join(self.directory, "engine.sock")
        self.url = f"unix://{self.path}"
        self.rules = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        self._sockets = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def hold(self, pattern, seconds=None, count=None):
        """Hold answers to requests matching `pattern` (see Rule); returns the rule."""
        rule = Rule(pattern, seconds, count)
        self.rules.append(rule)
        return rule

    def close(self):
        self._closed = True
        for rule in self.rules:
            rule.release()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._server, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.directory)
        except OSError:
            pass

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            pid = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, engine]
            connection = _Connection(self, client, engine, pid)
            threading.Thread(target=connection.requests, name="proxy-requests", daemon=True).start()
            threading.Thread(target=connection.answers, name="proxy-answers", daemon=True).start()

    def _rule_for(self, request):
        for rule in self.rules:
            if rule._claims(request):
                return rule
        return None


class _Connection:
    """One client connection: requests go up as they come; each answer may be held before it goes down.

    The engine's clients send a request only once the previous answer has been
    read, so the first bytes from the engine after a new request are its answer.
    """

    def __init__(self, proxy, client, engine, pid):
        self.proxy = proxy
        self.client = client
        self.engine = engine
        self.pid = pid
        self.asked = []            # requests sent up, in order
        self.answering = 0         # how many of them have begun to be answered
        self.lock = threading.Lock()

    def requests(self):
        buffer = b""
        body_left = 0
        try:
            while True:
                data = self.client.recv(CHUNK)
                if not data:
                    break
                buffer += data
                # Note each request line before the request reaches the engine.
                while True:
                    if body_left:
                        taken = min(body_left, len(buffer))
                        body_left -= taken
                        self.engine.sendall(buffer[:taken])
                        buffer = buffer[taken:]
                        if body_left:
                            break
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buffer = buffer[:end + 4], buffer[end + 4:]
                    body_left = _content_length(head)
                    with self.lock:
                        self.asked.append(_request_text(head))
                    self.engine.sendall(head)
            if buffer:
                self.engine.sendall(buffer)
        except OSError:
            pass
        finally:
            _shut(self.engine, socket.SHUT_WR)

    def answers(self):
        try:
            while True:
                data = self.engine.recv(CHUNK)
                if not data:
                    break
                with self.lock:
                    starts = self.answering < len(self.asked)
                    request = self.asked[self.answering] if starts else None
                    if starts:
                        self.answering += 1
                if request is not None:
                    rule = self.proxy._rule_for(request)
                    if rule is not None:
                        rule._hold(request, self.pid)
                self.client.sendall(data)
        except OSError:
            pass   # the client went away (killed while its answer was held): nothing to deliver
        finally:
            _shut(self.client, socket.SHUT_WR)


@pytest.fixture
def engine_proxy():
    """A proxy in front of the engine's socket that holds the answers a test names."""
    proxy = EngineProxy()
    yield proxy
    proxy.close()


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _request_text(head):
    """'METHOD /path?query' of a request head, with the query decoded."""
    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    target = rest.rsplit(" ", 1)[0]
    return f"{method} {urllib.parse.unquote_plus(target)}"


def _shut(sock, how):
    try:
        sock.shutdown(how)
    except OSError:
        pass
