"""Fetching user_data templates from a real HTTP server on 127.0.0.1: status, time and size limits."""

import http.server
import threading
import time

import pytest
from tls_certificate import serve_tls

from vac.machine.userdata import USER_AGENT, Template, UserDataError, fetch_url, obtain_template

TEMPLATE = b"#!/bin/sh\necho ##user_data_uuid## from ##user_data_url##\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    seen_user_agents: list = []
    seen_paths: list = []
    # Where /to-plain and /to-tls send a client: the plain and the TLS server.
    plain_url = tls_url = ""

    def log_message(self, *args):
        pass  # keep pytest output clean

    def _send(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        _Handler.seen_user_agents.append(self.headers.get("User-Agent"))
        _Handler.seen_paths.append(self.path)
        if self.path == "/template":
            self._send(200, TEMPLATE)
        elif self.path == "/redirect":
            self._send(302, b"", [("Location", "/template")])
        elif self.path == "/to-file":
            self._send(302, b"", [("Location", "file:///etc/shadow")])
        elif self.path == "/to-plain":
            self._send(302, b"", [("Location", f"{_Handler.plain_url}/template")])
        elif self.path == "/to-tls":
            self._send(302, b"", [("Location", f"{_Handler.tls_url}/template")])
        elif self.path == "/missing":
            self._send(404, b"not here")
        elif self.path == "/broken":
            self._send(500, b"oops")
        elif self.path == "/no-content":
            self._send(204, b"")
        elif self.path == "/big":
            self._send(200, b"x" * 5000)
        elif self.path == "/big-undeclared":
            # No Content-Length: the limit must hold while reading.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"y" * 5000)
        elif self.path == "/silent":
            time.sleep(3)
            self._send(200, TEMPLATE)
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"d")
                self.wfile.flush()
                time.sleep(0.1)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that gave up (timeouts under test) break the pipe on purpose


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A site proxy from the environment must not carry requests for 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server():
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.plain_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield _Handler.plain_url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tls_server(tmp_path):
    """The same handler behind TLS; yields its URL and a CA directory that trusts it."""
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    _, ca_dir = serve_tls(httpd, tmp_path)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.tls_url = f"https://127.0.0.1:{httpd.server_address[1]}"
    yield _Handler.tls_url, ca_dir
    httpd.shutdown()
    httpd.server_close()


def test_template_is_fetched_with_our_user_agent_and_keeps_its_url(server, tmp_path):
    _Handler.seen_user_agents.clear()

    template = obtain_template(f"{server}/template", tmp_path)

    assert template == Template(TEMPLATE.decode(), url=f"{server}/template")
    assert _Handler.seen_user_agents == [USER_AGENT]


def test_redirects_within_http_are_followed(server):
    assert fetch_url(f"{server}/redirect", timeout=5) == TEMPLATE


def test_redirect_to_a_local_file_is_refused(server):
    with pytest.raises(UserDataError, match="to-file"):
        fetch_url(f"{server}/to-file", timeout=5)


@pytest.mark.parametrize("path, status", [("/missing", "404"), ("/broken", "500"), ("/no-content", "204")])
def test_anything_but_200_is_an_error_naming_url_and_status(server, path, status):
    with pytest.raises(UserDataError, match=status) as caught:
        fetch_url(f"{server}{path}", timeout=5)
    assert path in str(caught.value)


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
def test_size_cap(server, path):
    with pytest.raises(UserDataError, match="limit of 4096"):
        fetch_url(f"{server}{path}", timeout=5, max_bytes=4096)
    assert len(fetch_url(f"{server}{path}", timeout=5, max_bytes=5000)) == 5000


def test_silent_server_times_out(server):
    started = time.monotonic()
    with pytest.raises(UserDataError, match="silent"):
        fetch_url(f"{server}/silent", timeout=0.5)
    assert time.monotonic() - started < 2


def test_dripping_server_cannot_outlast_the_deadline(server):
    # 40 bytes at 0.1 s each would take 4 s; each read returns within the
    # socket timeout, so only the overall deadline stops it.
    started = time.monotonic()
    with pytest.raises(UserDataError, match="longer than 0.5 s"):
        fetch_url(f"{server}/drip", timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_refused_connection_is_an_error(tmp_path):
    with pytest.raises(UserDataError, match="127.0.0.1:9"):
        fetch_url("http://127.0.0.1:9/template", timeout=2)


def test_a_redirect_from_https_down_to_http_is_refused(server, tls_server):
    tls_url, ca_dir = tls_server
    _Handler.seen_paths.clear()
    with pytest.raises(UserDataError, match="refused"):
        fetch_url(f"{tls_url}/to-plain", timeout=5, ca_paths=(str(ca_dir),))
    assert _Handler.seen_paths == ["/to-plain"]


def test_a_redirect_from_http_up_to_https_is_followed(server, tls_server):
    _, ca_dir = tls_server
    assert fetch_url(f"{server}/to-tls", timeout=5, ca_paths=(str(ca_dir),)) == TEMPLATE
