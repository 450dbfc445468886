"""The peer's child program: a slot worker's imports, a first heartbeat, then idling.

supervisord can only exec a program, so each of its restarts pays for a
fresh interpreter and the imports a slot worker needs (docker, msgpack,
psutil, setproctitle); vac forks a root that loaded them once. The first
heartbeat goes, as soon as they are loaded, to the datagram socket named in
BENCH_HEARTBEAT_SOCKET; later ones follow every BENCH_HEARTBEAT_INTERVAL
seconds, like a vac child's heartbeats to its root.
"""

import time

# Stamped before any import: when this program's first line ran.
CODE_STARTED = time.time()

import os  # noqa: E402
import socket  # noqa: E402

import docker  # noqa: E402,F401  imported for its cost, as a slot worker needs it
import msgpack  # noqa: E402
import psutil  # noqa: E402,F401  imported for its cost, as a slot worker needs it
import setproctitle  # noqa: E402


def main():
    address = os.environ["BENCH_HEARTBEAT_SOCKET"]
    interval = float(os.environ.get("BENCH_HEARTBEAT_INTERVAL", "5.0"))
    name = os.environ.get("SUPERVISOR_PROCESS_NAME", "child")
    parent = os.getppid()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A bench that stops reading must not freeze its children.
    sock.setblocking(False)
    setproctitle.setproctitle(f"bench-child: {name} idle")

    def beat(kind):
        message = {"kind": kind, "name": name, "pid": os.getpid(),
                   "t": time.time(), "code_started": CODE_STARTED}
        try:
            sock.sendto(msgpack.packb(message), address)
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError):
            pass  # the bench is busy or gone; its cleanup ends us

    beat("ready")
    # Orphaned (supervisord gone): nobody would stop us, so stop ourselves.
    while os.getppid() == parent:
        time.sleep(interval)
        beat("heartbeat")


if __name__ == "__main__":
    main()
