"""Handlers set without the signal module's wrapper behave as signal.signal's."""

import os
import signal

from vac.signals import DEFAULT_HANDLER, set_signal_handler


def test_a_handler_set_runs_and_the_default_comes_back():
    received = []
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        set_signal_handler(signal.SIGUSR1, lambda signum, frame: received.append(signum))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert received == [signal.SIGUSR1]
        set_signal_handler(signal.SIGUSR1, DEFAULT_HANDLER)
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, previous)
