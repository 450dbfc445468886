"""Singularity images from http(s) URLs, cached under the state directory, against real HTTP servers on 127.0.0.1."""

import email.utils
import fcntl
import functools
import http.server
import logging
import os
import stat
import threading
import time

import pytest
from tls_certificate import serve_tls

from vac import http_fetch
from vac.runtimes import image_cache
from vac.runtimes.image_cache import ImageUnavailable, cached_image_path, ensure_cached

USER_AGENT = "vac-test (image cache)"
IMAGE = b"SIF\x00" + bytes(range(256)) * 40
NEWER_IMAGE = b"SIF\x00newer" + bytes(range(256)) * 50
RELEASED_AT = 1_700_000_000
CHANGED_AT = RELEASED_AT + 3600


class ImageServer:
    """A local server whose answer per path the test sets; it records every request and status it sent.

    A route is a dict: `image` and `last_modified` serve an image that honours If-Modified-Since;
    `status` and `location` a bare answer; `length` is "declared" (default), "absent" or a number to
    declare; `delay` waits before answering; `piece_bytes` and `pause` send the body slowly;
    `stall_after_first_piece` stops sending after one piece; `stall` never answers."""

    def __init__(self, directory=None):
        self.routes = {}
        self.requests = []
        self.statuses = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({"path": self.path, "user_agent": self.headers.get("User-Agent"),
                                        "if_modified_since": self.headers.get("If-Modified-Since")})
                route = server.routes.get(self.path, {"status": 404, "body": b"not here"})
                if route.get("stall"):
                    server.release.wait(30)
                    return
                time.sleep(route.get("delay", 0))
                status, body, headers = server.answer(route, self.headers.get("If-Modified-Since"))
                server.statuses.append(status)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                piece = route.get("piece_bytes") or len(body) or 1
                for start in range(0, len(body), piece):
                    self.wfile.write(body[start:start + piece])
                    self.wfile.flush()
                    if route.get("pause"):
                        time.sleep(route["pause"])
                    if route.get("stall_after_first_piece"):
                        server.release.wait(30)

            def log_message(self, *args):
                pass

        class QuietServer(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that gave up (limits under test) break the pipe on purpose

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.ca_dir = None
        if directory is not None:
            _, self.ca_dir = serve_tls(self.httpd, directory)
        self.scheme = "https" if directory is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @staticmethod
    def answer(route, if_modified_since):
        headers = []
        if "image" in route:
            last_modified = route.get("last_modified")
            if last_modified is not None:
                headers.append(("Last-Modified", email.utils.formatdate(last_modified, usegmt=True)))
                since = email.utils.parsedate_tz(if_modified_since) if if_modified_since else None
                if since is not None and email.utils.mktime_tz(since) >= last_modified:
                    return 304, b"", headers
            status, body = 200, route["image"]
        else:
            status, body = route["status"], route.get("body", b"")
        if "location" in route:
            headers.append(("Location", route["location"]))
        length = route.get("length", "declared")
        if length == "declared":
            headers.append(("Content-Length", str(len(body))))
        elif length != "absent":
            headers.append(("Content-Length", str(length)))
        headers.append(("Connection", "close"))
        return status, body, headers

    def url(self, path):
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A site proxy from the environment must not carry requests for 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    image_server = ImageServer()
    yield image_server
    image_server.stop()


@pytest.fixture
def tls_server(tmp_path):
    (tmp_path / "tls").mkdir()
    image_server = ImageServer(tmp_path / "tls")
    yield image_server
    image_server.stop()


@pytest.fixture
def state_dir(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


def ensure(state_dir, url, seconds=5.0, **options):
    options.setdefault("user_agent", USER_AGENT)
    return ensure_cached(state_dir, url, time.monotonic() + seconds, **options)


def cache_listing(state_dir):
    return sorted(os.listdir(state_dir / image_cache.IMAGE_CACHE_DIR_NAME))


def expected_listing(state_dir, url, with_image=True):
    image = cached_image_path(state_dir, url)
    lock = image.name.partition(".")[0] + ".lock"
    return sorted([image.name, lock] if with_image else [lock])


def test_the_first_download_is_cached_readable_by_the_accounts_with_the_servers_date(server, state_dir):
    server.routes["/images/worker.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT}
    url = server.url("/images/worker.sif")

    path = ensure(state_dir, url)

    assert path == cached_image_path(state_dir, url)
    assert path.read_bytes() == IMAGE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert path.stat().st_mtime == RELEASED_AT
    assert server.requests == [{"path": "/images/worker.sif", "user_agent": USER_AGENT, "if_modified_since": None}]
    # Written through a temporary file and renamed: only the image and its lock are left.
    assert cache_listing(state_dir) == expected_listing(state_dir, url)


def test_without_last_modified_the_copy_is_dated_when_it_was_fetched(server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE}
    before = time.time()
    path = ensure(state_dir, server.url("/i.sif"))
    assert before - 1 <= path.stat().st_mtime <= time.time() + 1


def test_an_unchanged_image_is_not_downloaded_again(server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT}
    first = ensure(state_dir, server.url("/i.sif"))
    inode = first.stat().st_ino

    again = ensure(state_dir, server.url("/i.sif"))

    assert again == first and again.read_bytes() == IMAGE and again.stat().st_ino == inode
    assert server.statuses == [200, 304]
    assert server.requests[1]["if_modified_since"] == email.utils.formatdate(RELEASED_AT, usegmt=True)


def test_a_changed_image_replaces_the_cached_copy(server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT}
    ensure(state_dir, server.url("/i.sif"))
    server.routes["/i.sif"] = {"image": NEWER_IMAGE, "last_modified": CHANGED_AT}

    path = ensure(state_dir, server.url("/i.sif"))

    assert path.read_bytes() == NEWER_IMAGE
    assert path.stat().st_mtime == CHANGED_AT
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert server.statuses == [200, 200]
    assert cache_listing(state_dir) == expected_listing(state_dir, server.url("/i.sif"))


@pytest.mark.parametrize("length", ["declared", "absent"])
def test_an_image_over_the_size_cap_is_refused_and_nothing_is_left(server, state_dir, length):
    server.routes["/big.sif"] = {"image": IMAGE, "length": length, "piece_bytes": 1000}
    with pytest.raises(ImageUnavailable, match="more than the limit of 4000 bytes") as caught:
        ensure(state_dir, server.url("/big.sif"), max_bytes=4000)
    assert server.url("/big.sif") in str(caught.value)
    assert cache_listing(state_dir) == expected_listing(state_dir, server.url("/big.sif"), with_image=False)


def test_a_server_sending_more_than_it_declared_cannot_pass_the_cap(server, state_dir):
    # Only the declared bytes are read; what the server sends beyond them never reaches the disk.
    server.routes["/liar.sif"] = {"image": IMAGE, "length": 3000}
    path = ensure(state_dir, server.url("/liar.sif"), max_bytes=4000)
    assert path.read_bytes() == IMAGE[:3000]


def test_a_body_shorter_than_declared_is_not_taken_for_an_image(server, state_dir):
    server.routes["/short.sif"] = {"image": IMAGE, "length": len(IMAGE) + 100}
    with pytest.raises(ImageUnavailable, match=f"ended after {len(IMAGE)} of its {len(IMAGE) + 100} bytes"):
        ensure(state_dir, server.url("/short.sif"))
    assert not cached_image_path(state_dir, server.url("/short.sif")).exists()


def test_a_trickling_server_is_cut_at_the_deadline(server, state_dir):
    # 40 pieces 0.1 s apart would take 4 s; each arrives well within the socket timeout.
    server.routes["/slow.sif"] = {"image": IMAGE[:40], "piece_bytes": 1, "pause": 0.1}
    started = time.monotonic()
    with pytest.raises(ImageUnavailable, match="not complete within"):
        ensure(state_dir, server.url("/slow.sif"), seconds=0.6)
    assert time.monotonic() - started < 1.5
    assert cache_listing(state_dir) == expected_listing(state_dir, server.url("/slow.sif"), with_image=False)


def test_a_stall_late_in_the_body_still_ends_at_the_deadline(server, state_dir):
    # The answer comes late, then the body stops: the receive that waits must not be
    # allowed the whole time there was when the connection was made.
    server.routes["/stuck.sif"] = {"image": IMAGE, "delay": 0.5, "piece_bytes": 100,
                                   "stall_after_first_piece": True}
    started = time.monotonic()
    with pytest.raises(ImageUnavailable, match="not complete within"):
        ensure(state_dir, server.url("/stuck.sif"), seconds=1.0)
    assert time.monotonic() - started < 1.3


def test_a_silent_server_is_given_up_on_at_the_deadline(server, state_dir):
    server.routes["/silent.sif"] = {"stall": True}
    started = time.monotonic()
    with pytest.raises(ImageUnavailable, match="no answer within"):
        ensure(state_dir, server.url("/silent.sif"), seconds=0.5)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("failure, reason", [
    ({"status": 500, "body": b"oops"}, "HTTP status 500"),
    ({"image": NEWER_IMAGE, "last_modified": CHANGED_AT}, "more than the limit"),
    ({"image": NEWER_IMAGE[:40], "last_modified": CHANGED_AT, "piece_bytes": 1, "pause": 0.1}, "not complete"),
    ("server gone", "cannot fetch"),
])
def test_a_failed_refresh_keeps_the_cached_copy(server, state_dir, caplog, failure, reason):
    url = server.url("/i.sif")
    server.routes["/i.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT}
    ensure(state_dir, url)
    if failure == "server gone":
        server.stop()
    else:
        server.routes["/i.sif"] = failure

    with caplog.at_level(logging.WARNING, logger=image_cache.__name__):
        path = ensure(state_dir, url, seconds=0.6, max_bytes=len(IMAGE))

    assert path.read_bytes() == IMAGE and path.stat().st_mtime == RELEASED_AT
    assert cache_listing(state_dir) == expected_listing(state_dir, url)
    [warning] = [record.getMessage() for record in caplog.records if record.name == image_cache.__name__]
    assert url in warning and reason in warning and str(path) in warning


@pytest.mark.parametrize("route, reason", [
    ({"status": 404, "body": b"not here"}, "HTTP status 404"),
    ({"status": 204}, "HTTP status 204"),
    ({"status": 304}, "HTTP status 304"),  # not asked for: there was no copy to compare with
])
def test_a_failure_without_a_cached_copy_names_the_url_and_the_reason(server, state_dir, route, reason):
    server.routes["/i.sif"] = route
    with pytest.raises(ImageUnavailable, match=reason) as caught:
        ensure(state_dir, server.url("/i.sif"))
    assert f"cannot download image {server.url('/i.sif')}" in str(caught.value)
    assert cache_listing(state_dir) == expected_listing(state_dir, server.url("/i.sif"), with_image=False)


def test_a_server_that_is_not_there_is_unavailable_not_a_crash(state_dir):
    gone = ImageServer()
    url = gone.url("/i.sif")
    gone.stop()
    with pytest.raises(ImageUnavailable, match="cannot fetch"):
        ensure(state_dir, url)


def test_a_redirect_from_https_down_to_http_is_refused(server, tls_server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE}
    tls_server.routes["/i.sif"] = {"status": 302, "location": server.url("/i.sif")}
    trusting = functools.partial(http_fetch.download, ca_paths=(str(tls_server.ca_dir),))

    with pytest.raises(ImageUnavailable, match="refused"):
        ensure(state_dir, tls_server.url("/i.sif"), download=trusting)

    assert server.requests == []
    assert len(tls_server.requests) == 1


def test_a_redirect_from_http_up_to_https_is_followed(server, tls_server, state_dir):
    tls_server.routes["/i.sif"] = {"image": IMAGE}
    server.routes["/i.sif"] = {"status": 301, "location": tls_server.url("/i.sif")}
    trusting = functools.partial(http_fetch.download, ca_paths=(str(tls_server.ca_dir),))
    assert ensure(state_dir, server.url("/i.sif"), download=trusting).read_bytes() == IMAGE


def test_slots_asking_at_once_share_one_download(server, state_dir):
    # The body takes about half a second, so the second caller finds the lock taken.
    server.routes["/i.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT,
                               "piece_bytes": len(IMAGE) // 10 + 1, "pause": 0.05}
    start = threading.Barrier(2)
    paths, errors = [], []

    def slot():
        start.wait(5)
        try:
            paths.append(ensure(state_dir, server.url("/i.sif"), seconds=10))
        except Exception as error:  # reported below: a thread's exception would be lost
            errors.append(error)

    threads = [threading.Thread(target=slot) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    assert errors == []
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].read_bytes() == IMAGE
    # One body was sent; the slot that waited only asked whether it had changed.
    assert server.statuses == [200, 304]
    assert [request["if_modified_since"] is None for request in server.requests] == [True, False]


def _hold_lock(state_dir, url):
    directory = state_dir / image_cache.IMAGE_CACHE_DIR_NAME
    directory.mkdir(exist_ok=True)
    image = cached_image_path(state_dir, url)
    descriptor = os.open(image.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def test_a_download_held_by_another_slot_past_the_deadline_is_unavailable(server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE}
    holder = _hold_lock(state_dir, server.url("/i.sif"))
    try:
        started = time.monotonic()
        with pytest.raises(ImageUnavailable, match="another slot is still downloading"):
            ensure(state_dir, server.url("/i.sif"), seconds=0.4)
        assert 0.4 <= time.monotonic() - started < 1.5
    finally:
        os.close(holder)
    assert server.requests == []


def test_a_cached_copy_is_used_while_another_slot_refreshes_it(server, state_dir):
    server.routes["/i.sif"] = {"image": IMAGE, "last_modified": RELEASED_AT}
    first = ensure(state_dir, server.url("/i.sif"))
    holder = _hold_lock(state_dir, server.url("/i.sif"))
    try:
        assert ensure(state_dir, server.url("/i.sif"), seconds=0.3) == first
    finally:
        os.close(holder)
    assert len(server.requests) == 1


def test_partial_downloads_left_by_a_killed_slot_are_removed(server, state_dir):
    url = server.url("/i.sif")
    server.routes["/i.sif"] = {"image": IMAGE}
    directory = state_dir / image_cache.IMAGE_CACHE_DIR_NAME
    directory.mkdir()
    leftover = directory / f".{cached_image_path(state_dir, url).stem}.abc123.part"
    leftover.write_bytes(b"half an image")

    ensure(state_dir, url)

    assert cache_listing(state_dir) == expected_listing(state_dir, url)


@pytest.mark.parametrize("url, extension", [
    ("https://images.example.org/cms/worker.sif", ".sif"),
    ("https://images.example.org/old.img?version=3", ".img"),
    ("https://images.example.org/images/", ""),
    ("https://images.example.org/worker", ""),
    ("https://images.example.org/trick.lock", ""),
    ("https://images.example.org/a.verylongextension", ""),
    ("https://images.example.org/a.s%2Fif", ""),
    ("http://[::1/broken.sif", ""),
])
def test_one_cache_file_per_url_named_by_its_hash_and_plain_extension(tmp_path, url, extension):
    path = cached_image_path(tmp_path, url)
    assert path.parent == tmp_path / "image-cache"
    assert len(path.stem) == 64 and set(path.stem) <= set("0123456789abcdef")
    assert path.suffix == extension
    assert cached_image_path(tmp_path, url) == path
    assert cached_image_path(tmp_path, url + "x").stem != path.stem
