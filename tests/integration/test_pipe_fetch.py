"""The pipe fetcher against a real HTTP server on 127.0.0.1."""

import http.server
import json
import os
import threading
import time

import pytest
from tls_certificate import serve_tls

import vac
from vac.config.fetch import cache_path, fetch_pipe, read_cached

GOOD = json.dumps({"cache_seconds": 600, "machinetypes": [{"suffix": "prod"}]}).encode()
NEWER = json.dumps({"cache_seconds": 600, "machinetypes": [{"suffix": "new"}]}).encode()


class PipeServer:
    """A local server whose answer per path the test sets, counting requests."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("User-Agent")))
                route = server.routes.get(self.path, {"status": 404, "body": b"not here"})
                if route.get("stall"):
                    server.release.wait(30)
                    return
                self.send_response(route["status"])
                if "location" in route:
                    self.send_header("Location", route["location"])
                if route.get("length", True):
                    self.send_header("Content-Length", str(len(route["body"])))
                self.end_headers()
                for piece in route.get("pieces", [route["body"]]):
                    self.wfile.write(piece)
                    self.wfile.flush()
                    if route.get("pause"):
                        time.sleep(route["pause"])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def count(self, path):
        return sum(1 for requested, _ in self.requests if requested == path)


@pytest.fixture
def server():
    pipe_server = PipeServer()
    pipe_server.thread.start()
    yield pipe_server
    pipe_server.release.set()
    pipe_server.httpd.shutdown()
    pipe_server.httpd.server_close()
    pipe_server.thread.join(10)


def fetch(url, cache_dir, now, **options):
    options.setdefault("timeout_seconds", 5)
    options.setdefault("ca_paths", ())
    return fetch_pipe(url, str(cache_dir), now, **options)


def test_a_good_document_is_returned_and_kept(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    result = fetch(server.url("/p"), tmp_path, 1000.0)
    assert (result.document, result.fetched_at, result.requested, result.stale, result.error) == (
        GOOD, 1000.0, True, False, None)
    assert read_cached(server.url("/p"), str(tmp_path)) == (GOOD, 1000.0)
    # The copy was written through a temporary file and renamed: nothing else is left.
    assert os.listdir(tmp_path) == [os.path.basename(cache_path(server.url("/p"), str(tmp_path)))]


def test_the_user_agent_names_vac_and_its_version(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    fetch(server.url("/p"), tmp_path, 1000.0)
    assert server.requests[0][1].startswith(f"vac/{vac.__version__} ")


@pytest.mark.parametrize("status", [404, 500, 204, 302])
def test_a_status_other_than_200_is_an_error_not_an_exception(server, tmp_path, status):
    server.routes["/p"] = {"status": status, "body": b"" if status == 204 else b"nope"}
    result = fetch(server.url("/p"), tmp_path, 1000.0)
    assert result.document is None and result.requested and not result.stale
    assert str(status) in result.error
    assert not os.path.exists(cache_path(server.url("/p"), str(tmp_path)))


def test_no_second_request_while_the_copy_is_fresh(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    fetch(server.url("/p"), tmp_path, 1000.0)
    again = fetch(server.url("/p"), tmp_path, 1599.0)
    assert (again.document, again.fetched_at, again.requested) == (GOOD, 1000.0, False)
    assert server.count("/p") == 1
    server.routes["/p"] = {"status": 200, "body": NEWER}
    later = fetch(server.url("/p"), tmp_path, 1600.0)
    assert (later.document, later.fetched_at, later.requested) == (NEWER, 1600.0, True)
    assert server.count("/p") == 2


def test_a_clock_that_went_backwards_refetches(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    fetch(server.url("/p"), tmp_path, 1000.0)
    assert fetch(server.url("/p"), tmp_path, 900.0).requested
    assert server.count("/p") == 2


@pytest.mark.parametrize("failure, reason", [
    ({"status": 500, "body": b"oops"}, "HTTP status 500"),
    ({"status": 200, "body": b"<html>maintenance</html>"}, "document is not valid JSON"),
    ({"status": 200, "body": b'{"machinetypes": 3}'}, 'no "machinetypes" list'),
    ({"stall": True}, "no answer within 0.5 seconds"),
])
def test_a_failed_refresh_keeps_the_last_good_copy(server, tmp_path, failure, reason):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    fetch(server.url("/p"), tmp_path, 1000.0)
    server.routes["/p"] = failure
    result = fetch(server.url("/p"), tmp_path, 5000.0, timeout_seconds=0.5 if "stall" in failure else 5)
    assert (result.document, result.fetched_at, result.requested, result.stale) == (
        GOOD, 1000.0, True, True)
    assert reason in result.error
    # The good copy is still on disk for the next attempt.
    assert read_cached(server.url("/p"), str(tmp_path)) == (GOOD, 1000.0)


def test_a_stalled_server_is_given_up_on_after_the_timeout(server, tmp_path):
    server.routes["/p"] = {"stall": True}
    started = time.monotonic()
    result = fetch(server.url("/p"), tmp_path, 1000.0, timeout_seconds=0.5)
    assert time.monotonic() - started < 3
    assert result.document is None and "0.5 seconds" in result.error


def test_a_slow_trickle_is_given_up_on_at_the_deadline(server, tmp_path):
    body = GOOD
    server.routes["/p"] = {"status": 200, "body": body, "pause": 0.2,
                           "pieces": [body[i:i + 2] for i in range(0, len(body), 2)]}
    started = time.monotonic()
    result = fetch(server.url("/p"), tmp_path, 1000.0, timeout_seconds=1)
    assert time.monotonic() - started < 3
    assert result.document is None
    assert result.error == "document not complete within 1 seconds"


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversize_body_is_refused(server, tmp_path, declared):
    big = b"[" + b" " * 5000 + b"]"
    server.routes["/p"] = {"status": 200, "body": big, "length": declared}
    result = fetch(server.url("/p"), tmp_path, 1000.0, max_bytes=1000)
    assert result.document is None
    assert "1000 bytes" in result.error


def test_a_server_that_is_not_there_is_an_error(tmp_path):
    with socket_port() as port:
        pass
    result = fetch(f"http://127.0.0.1:{port}/p", tmp_path, 1000.0)
    assert result.document is None and "cannot fetch" in result.error


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/p", "data:,x", "not a url"])
def test_only_http_and_https_are_fetched(tmp_path, url):
    result = fetch(url, tmp_path, 1000.0)
    assert result.document is None
    assert result.error == "only http:// and https:// URLs are fetched"


def test_a_malformed_url_is_an_error_not_an_exception(tmp_path):
    result = fetch("http://[::1/p", tmp_path, 1000.0)
    assert result.document is None and result.error.startswith("bad URL")


def test_a_redirect_to_another_scheme_is_refused(server, tmp_path):
    server.routes["/p"] = {"status": 302, "body": b"", "location": "file:///etc/passwd"}
    result = fetch(server.url("/p"), tmp_path, 1000.0)
    assert result.document is None
    assert "302" in result.error and "file:///etc/passwd" in result.error


def test_a_redirect_within_http_is_followed(server, tmp_path):
    server.routes["/old"] = {"status": 301, "body": b"", "location": server.url("/p")}
    server.routes["/p"] = {"status": 200, "body": GOOD}
    assert fetch(server.url("/old"), tmp_path, 1000.0).document == GOOD


def test_a_corrupt_cache_file_is_ignored(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    with open(cache_path(server.url("/p"), str(tmp_path)), "wb") as stream:
        stream.write(b"garbage\x00")
    result = fetch(server.url("/p"), tmp_path, 1000.0)
    assert result.document == GOOD and result.requested


def test_a_cache_directory_that_cannot_be_written_still_returns_the_document(server, tmp_path):
    server.routes["/p"] = {"status": 200, "body": GOOD}
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = fetch(server.url("/p"), blocker / "cache", 1000.0)
    assert result.document == GOOD and result.error is None


class socket_port:
    """A port number that was free a moment ago."""

    def __enter__(self):
        import socket
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


@pytest.fixture
def tls_server(server, tmp_path):
    """The same server behind TLS with a certificate from a CA only the test knows."""
    cert, ca_dir = serve_tls(server.httpd, tmp_path)
    server.routes["/p"] = {"status": 200, "body": GOOD}
    return f"https://127.0.0.1:{server.httpd.server_address[1]}/p", cert, ca_dir


@pytest.fixture
def plain_server():
    """A second server, plain http, beside the TLS one."""
    pipe_server = PipeServer()
    pipe_server.thread.start()
    yield pipe_server
    pipe_server.httpd.shutdown()
    pipe_server.httpd.server_close()
    pipe_server.thread.join(10)


def test_https_is_verified_against_the_system_cas_plus_the_grid_ca_directory(tls_server, tmp_path):
    url, cert, ca_dir = tls_server
    refused = fetch(url, tmp_path / "a", 1000.0, ca_paths=(str(tmp_path / "missing"),))
    assert refused.document is None and "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert fetch(url, tmp_path / "b", 1000.0, ca_paths=(str(ca_dir),)).document == GOOD
    assert fetch(url, tmp_path / "c", 1000.0, ca_paths=(str(cert),)).document == GOOD


def test_a_redirect_from_https_down_to_http_is_refused(server, tls_server, plain_server, tmp_path):
    url, _, ca_dir = tls_server
    plain_server.routes["/p"] = {"status": 200, "body": GOOD}
    server.routes["/down"] = {"status": 302, "body": b"", "location": plain_server.url("/p")}
    result = fetch(url.replace("/p", "/down"), tmp_path, 1000.0, ca_paths=(str(ca_dir),))
    assert result.document is None
    assert "refused" in result.error and plain_server.url("/p") in result.error
    assert plain_server.count("/p") == 0


def test_a_redirect_from_http_up_to_https_is_followed(tls_server, plain_server, tmp_path):
    url, _, ca_dir = tls_server
    plain_server.routes["/up"] = {"status": 302, "body": b"", "location": url}
    assert fetch(plain_server.url("/up"), tmp_path, 1000.0, ca_paths=(str(ca_dir),)).document == GOOD
