"""Signal handlers set without the signal module's wrapper, for freshly forked children."""

import _signal

DEFAULT_HANDLER = _signal.SIG_DFL


def set_signal_handler(signum: int, handler) -> None:
    """signal.signal() without its wrapper.

    The wrapper turns the old and new handlers into enums, raising and
    catching an exception for each that is a function; in a child that
    shares the root's pages, that machinery writes (and so copies) some
    160 KiB of them. `handler`: a function, DEFAULT_HANDLER or _signal.SIG_IGN.
    """
    _signal.signal(int(signum), handler)
