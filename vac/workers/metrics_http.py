"""GET /metrics served from the metrics child's loop (vac/workers/http_server.py does the HTTP)."""

from vac.workers.http_server import CLIENT_SECONDS, MAX_CLIENTS, HttpServer, Reply

METRICS_PATH = "/metrics"


class MetricsServer(HttpServer):
    """Serves render() -> (body, content type) at GET (and HEAD) /metrics on (host, port)."""

    def __init__(self, host, port, render, *, max_clients=MAX_CLIENTS, client_seconds=CLIENT_SECONDS):
        super().__init__(host, port, self._metrics_answer, name="metrics", max_clients=max_clients,
                         client_seconds=client_seconds)
        self.render = render
        self.scrapes = 0

    def _metrics_answer(self, method, target):
        if method not in (b"GET", b"HEAD"):
            return Reply(405, "Method Not Allowed", b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        if target.split(b"?", 1)[0] != METRICS_PATH.encode():
            return Reply(404, "Not Found", b"metrics are at /metrics\n")
        body, content_type = self.render()
        self.scrapes += 1
        return Reply(200, "OK", body, content_type, head_only=method == b"HEAD")
