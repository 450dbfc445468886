"""Which bench runs are alive: each holds a lock named after its run for as long as its process lives.

A bench removes what interrupted runs left on the engine before it starts
(engine_events.remove_leftovers). A run still going on in another process
(two benches started side by side) holds the lock of its factory name or
plain-run id, so its containers are left alone; a run whose process ended
(killed, interrupted) no longer holds it, whatever it left behind.
"""

import fcntl
import os
import tempfile

OWNERS_DIR = os.path.join(tempfile.gettempdir(), "vac-bench-runs")
_held = {}   # run name -> the descriptor that holds its lock


def _path(name):
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a bench run")
    return os.path.join(OWNERS_DIR, name)


def claim(name):
    """Mark the run `name` as this process's until release() or the process's end."""
    os.makedirs(OWNERS_DIR, mode=0o700, exist_ok=True)
    fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held[name] = fd


def release(name):
    """The run `name` of this process is over."""
    fd = _held.pop(name, None)
    if fd is not None:
        try:
            os.unlink(_path(name))
        except FileNotFoundError:
            pass
        os.close(fd)


def alive(name):
    """True if a live process (this one included) holds the run `name`; a dead run's lock file is removed."""
    try:
        fd = os.open(_path(name), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        os.unlink(_path(name))
        return False
    finally:
        os.close(fd)
