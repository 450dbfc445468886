"""sd_notify against a real datagram socket the test owns (vac.supervisor.notify)."""

import logging
import os
import socket
import time
import uuid

import pytest

from vac.supervisor.notify import Notifier, forget_in_child, unset_environment

T0 = 100.0


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def received(self):
        """Every notification that has arrived, as lists of lines."""
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return got

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    fake.environ = {"NOTIFY_SOCKET": path}
    yield fake
    fake.close()


@pytest.fixture
def notifier_for(systemd):
    made = []

    def make(**environ):
        notifier = Notifier(environ={**systemd.environ, **environ})
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


def test_ready_carries_the_status(systemd, notifier_for):
    notifier = notifier_for()
    assert notifier.enabled
    notifier.ready("16 slots: 0 running, 16 idle")
    assert systemd.received() == [["READY=1", "STATUS=16 slots: 0 running, 16 idle"]]


def test_status_only_on_change_and_at_most_once_per_interval(systemd, notifier_for):
    notifier = notifier_for()
    script = [
        (0.0, "a", True),
        (0.5, "a", False),     # unchanged
        (0.5, "b", False),     # changed, but too soon
        (1.0, "b", True),
        (5.0, "b", False),     # unchanged, however late
        (5.5, "c", True),
        (6.0, "a", False),
        (6.5, "a", True),
    ]
    expected = []
    for offset, text, sent in script:
        notifier.status(text, T0 + offset)
        if sent:
            expected.append([f"STATUS={text}"])
    assert systemd.received() == expected


def test_status_after_ready(systemd, notifier_for):
    notifier = notifier_for()
    notifier.ready("starting")
    notifier.status("starting", T0)            # READY already said it
    notifier.status("running", T0)             # the first change goes out at once
    assert systemd.received() == [["READY=1", "STATUS=starting"], ["STATUS=running"]]


def test_watchdog_at_half_the_interval(systemd, notifier_for):
    notifier = notifier_for(WATCHDOG_USEC="10000000")
    assert notifier.next_watchdog() is None
    sent_at = []
    for offset in (0, 1, 4.9, 5, 7, 9.9, 10, 30):
        notifier.watchdog(T0 + offset)
        if systemd.received():
            sent_at.append(offset)
    assert sent_at == [0, 5, 10, 30]
    assert notifier.next_watchdog() == T0 + 35


def test_watchdog_for_this_pid(systemd, notifier_for):
    notifier = notifier_for(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    notifier.watchdog(T0)
    assert systemd.received() == [["WATCHDOG=1"]]


@pytest.mark.parametrize("environ", [
    pytest.param({}, id="no WATCHDOG_USEC"),
    pytest.param({"WATCHDOG_USEC": ""}, id="empty WATCHDOG_USEC"),
    pytest.param({"WATCHDOG_USEC": "soon"}, id="WATCHDOG_USEC not a number"),
    pytest.param({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, id="watchdog meant for another pid"),
])
def test_no_watchdog(systemd, notifier_for, environ):
    notifier = notifier_for(**environ)
    for offset in (0, 10, 100):
        notifier.watchdog(T0 + offset)
    assert systemd.received() == []
    assert notifier.next_watchdog() is None


def test_stopping_and_reloading(systemd, notifier_for):
    notifier = notifier_for()
    notifier.reloading()
    notifier.stopping()
    assert systemd.received() == [["RELOADING=1"], ["STOPPING=1"]]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_no_op_without_notify_socket(environ):
    notifier = Notifier(environ=environ)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("y", T0)
    notifier.watchdog(T0)
    notifier.stopping()
    notifier.reloading()
    notifier.close()


def test_abstract_socket_name():
    name = f"vac-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    notifier = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
    try:
        notifier.ready("abstract")
        assert fake.received() == [["READY=1", "STATUS=abstract"]]
    finally:
        notifier.close()
        fake.close()


def test_a_missing_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="vac.supervisor.notify"):
        notifier.ready("x")
    notifier.close()
    assert "READY" in caplog.text


def test_a_systemd_that_does_not_read_never_blocks(systemd, notifier_for, caplog):
    notifier = notifier_for()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vac.supervisor.notify"):
        for _ in range(5000):
            notifier.stopping()
    assert time.monotonic() - started < 2.0
    assert "STOPPING" in caplog.text          # the queue filled up and we went on


def test_forget_in_child(systemd, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.environ["NOTIFY_SOCKET"])
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    # The root, before it forks: the notifier keeps what it read.
    unset_environment()
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    assert notifier.enabled and notifier.watchdog_interval is not None
    forget_in_child(notifier)
    assert not notifier.enabled
    notifier.ready("from a child")
    assert systemd.received() == []
