"""Vacuum Pipes in a real vacd: fetched by the fetcher child from a local server."""

import http.server
import json
import threading

import psutil
import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)

ENTRY = {"machine_model": "docker", "root_image": "docker://exp:latest",
         "user_data": "https://exp.example.org/user_data", "max_wallclock_seconds": 3600}


class PipeServer:
    """A pipe document served on 127.0.0.1; `status` and `document` can be changed."""

    def __init__(self):
        self.status = 200
        self.document = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("User-Agent"))
                body = json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pipe.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pipe_server():
    server = PipeServer()
    yield server
    server.close()


def test_pipe_machinetypes_arrive_through_the_fetcher_and_survive_a_failed_refresh(
        tmp_path, daemon_factory, pipe_server):  # noqa: F811
    pipe_server.document = {"cache_seconds": 1, "machinetypes": [
        dict(ENTRY, suffix="prod", target_share=3),
        dict(ENTRY, suffix="test", target_share=1),
        dict(ENTRY, suffix="evil", heartbeat_file="../../etc/shadow"),
    ]}
    config = tmp_path / "vac.conf"
    config.write_text(f"""
[settings]
vac_space = pipes.example.com
total_processors = 1

[vacuum_pipe exp]
vacuum_pipe_url = {pipe_server.url}
target_share = 1
""")
    daemon = daemon_factory(config)
    daemon.wait_log("pipe exp: 2 machinetype(s): exp-prod, exp-test")
    assert "exp-evil" in daemon.text() and "heartbeat_file" in daemon.text(), \
        "the hostile entry is skipped with its own message"
    assert pipe_server.requests[0].startswith("vac/")
    fetchers = [p for p in psutil.Process(daemon.proc.pid).children()
                if p.cmdline()[0].startswith("vacd: pipe-fetcher")]
    assert len(fetchers) == 1, "fetching happens in its own child, not in the root"
    assert list((tmp_path / "state" / "pipes").iterdir()), "the last good copy is cached"

    pipe_server.status = 500
    daemon.wait_log("pipe exp: refresh failed", timeout=15)
    daemon.wait_log("pipe exp: 2 machinetype(s): exp-prod, exp-test", count=2)
    daemon.stop()
    assert daemon.proc.returncode == 0
