"""The mjf child: Machine/Job Features over HTTP for machinetypes with mjf_http.

It serves every machine directory's machinefeatures/ and jobfeatures/ under
/<uuid>/<token>/ (vac/machine/mjf_http.py) on mjf_http_listen, or by
default on the IPv4 address of Docker's docker0 bridge, which containers on
the default bridge network reach as their gateway and Singularity machines,
on the host's network, reach as well. GET only; values are read when asked
for; anything else is 404. Its StateReport tells the root the base URL it
serves (state "serving"), which the root puts in the terms of machines of
mjf_http machinetypes, or why it cannot serve (state "failing"): those
machinetypes then wait. It binds the same address after a restart, so the
URLs of running machines stay valid.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from pathlib import Path

from vac.config.model import DEFAULT_MJF_HTTP_BRIDGE, DEFAULT_MJF_HTTP_PORT
from vac.machine.mjf_http import FeatureTooLarge, parse_path, read_feature
from vac.workers.harness import WorkerLoop
from vac.workers.http_server import HttpServer, Reply
from vac.workers.serving_child import SpecError, next_wake, options_or_exit, serve

log = logging.getLogger(__name__)

# Pilots read a few keys at start and the shutdown time now and then; a
# reader that sends its request needs milliseconds, not seconds.
CLIENT_SECONDS = 5.0
MAX_CLIENTS = 128
# Docker containers each come from their own address; Singularity machines all
# from the host's, so this must leave room for several at once.
MAX_CLIENTS_PER_PEER = 16
BACKLOG = 128
BIND_RETRY_SECONDS = 10.0
SIOCGIFADDR = 0x8915
IFNAMSIZ = 16


@dataclasses.dataclass(frozen=True)
class MjfOptions:
    """Where to serve from and what: the state directory, the address (or the bridge to take it from)."""
    state_dir: Path
    address: tuple[str, int] | None    # None: the bridge's IPv4 address, at `port`
    bridge: str
    port: int
    client_seconds: float


def mjf_options(spec) -> MjfOptions:
    """The checked MjfOptions of `spec`, or SpecError."""
    state_dir = spec.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        raise SpecError(f"state_dir {state_dir!r} is not an absolute path")
    listen = spec.get("listen")
    address = None
    if listen:
        host, _, port = str(listen).rpartition(":")
        try:
            address = (str(ipaddress.IPv4Address(host)), int(port))
        except ValueError:
            raise SpecError(f"listen {listen!r} is not IPv4 IP:PORT") from None
    bridge = spec.get("bridge") or DEFAULT_MJF_HTTP_BRIDGE
    if not isinstance(bridge, str) or not 0 < len(bridge) < IFNAMSIZ or "/" in bridge:
        raise SpecError(f"bridge {bridge!r} is not an interface name")
    port = int(spec.get("port") or DEFAULT_MJF_HTTP_PORT)
    client_seconds = float(spec.get("client_timeout_seconds", CLIENT_SECONDS))
    if client_seconds <= 0 or not 0 < port < 65536:
        raise SpecError("client_timeout_seconds must be greater than 0 and port between 1 and 65535")
    return MjfOptions(Path(state_dir), address, bridge, port, client_seconds)


def interface_ipv4(name: str) -> str:
    """The IPv4 address of network interface `name` (SIOCGIFADDR); OSError if it has none or is absent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        request = struct.pack("256s", name.encode()[:IFNAMSIZ - 1])
        reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
    return socket.inet_ntoa(reply[20:24])


def listen_address(options: MjfOptions, find_address=interface_ipv4) -> tuple[str, int]:
    """(IP, port) to serve on: the setting's, else the bridge's address; OSError saying why not."""
    if options.address is not None:
        return options.address
    try:
        return find_address(options.bridge), options.port
    except OSError as error:
        raise OSError(error.errno, f"no IPv4 address on {options.bridge} ({error.strerror or error}): "
                                   "is Docker running? Set mjf_http_listen otherwise") from None


def answer(state_dir: Path, method: bytes, target: bytes) -> Reply:
    """The reply to one request: the key's value, a directory's key names, 404 or 405."""
    if method != b"GET":
        return Reply(405, "Method Not Allowed", b"only GET\n", headers=(("Allow", "GET"),))
    request = parse_path(target)
    if request is None:
        return Reply(404, "Not Found", b"not found\n")
    try:
        body = read_feature(state_dir, request)
    except FeatureTooLarge as error:
        log.warning("machine %s: %s/%s not served: %s", request.machine_uuid, request.directory,
                    request.key, error)
        return Reply(500, "Internal Server Error", b"value too large\n")
    except OSError as error:
        # A disk error costs this request, not the server.
        log.warning("machine %s: reading %s/%s failed: %s", request.machine_uuid, request.directory,
                    request.key or "", error)
        return Reply(500, "Internal Server Error", b"cannot read it\n")
    if body is None:
        return Reply(404, "Not Found", b"not found\n")
    return Reply(200, "OK", body)


class MjfService:
    """The server (bound, or retrying) and what the root last heard of it."""

    def __init__(self, loop, options: MjfOptions, find_address=interface_ipv4):
        self.loop = loop
        self.options = options
        self.find_address = find_address
        self.server = None
        self.error = None
        self._bind_at = None
        self._reported = None

    def bind(self, now):
        try:
            host, port = listen_address(self.options, self.find_address)
        except OSError as error:
            self._failed(now, str(error.strerror or error))
            return
        try:
            self.server = HttpServer(host, port, self._answer, name="mjf", max_clients=MAX_CLIENTS,
                                     max_per_peer=MAX_CLIENTS_PER_PEER,
                                     client_seconds=self.options.client_seconds, backlog=BACKLOG)
        except OSError as error:
            self._failed(now, f"cannot listen on {host}:{port}: {error.strerror or error}")
            return
        self.error = None
        self._bind_at = None
        log.info("mjf: serving Machine/Job Features at http://%s/", self.server.address)

    def _failed(self, now, error):
        # A missing bridge or a taken port must not make the supervisor restart
        # us in a loop: machinetypes with mjf_http wait, and we retry.
        if error != self.error:
            log.error("mjf: %s; retrying every %.0f s (mjf_http machinetypes wait meanwhile)",
                      error, BIND_RETRY_SECONDS)
        self.error = error
        self._bind_at = now + BIND_RETRY_SECONDS

    def _answer(self, method, target):
        return answer(self.options.state_dir, method, target)

    @property
    def url(self):
        return f"http://{self.server.address}" if self.server is not None else None

    def next_deadline(self, now):
        return next_wake(now, self.server, self._bind_at)

    def on_pass(self, now):
        if self.server is not None:
            self.server.handle(now)
        if self._bind_at is not None and now >= self._bind_at:
            self.bind(now)
        self.report()

    def report(self):
        """Tell the root (and ps) the URL served, or why none is, when that changes."""
        state = "serving" if self.server is not None else "failing"
        detail = {"url": self.url, "error": self.error}
        if (state, detail) == self._reported:
            return
        self._reported = (state, detail)
        self.loop.report(state, **detail)
        self.loop.title(f"mjf [{self.url}]" if self.server is not None else "mjf [not serving]")

    def close(self):
        if self.server is not None:
            self.server.close()


def run(channel, spec):
    """Entry point in the forked mjf process."""
    loop = WorkerLoop(channel, spec, role="mjf")
    options = options_or_exit(mjf_options, spec, "mjf")
    service = MjfService(loop, options)
    service.bind(time.monotonic())
    loop.ready()
    service.report()

    def on_message(msg):
        log.warning("mjf: unexpected %s message; ignoring it", msg.TAG)

    serve(loop, service, "mjf", on_message)
