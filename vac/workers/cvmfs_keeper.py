"""The CernVM-FS keeper: checks the repositories machines need, outside the root.

Each check is a separate `stat` process on /cvmfs/REPO (which triggers the
automount) with a deadline: a hung repository leaves a process stuck in the
kernel, which we abandon rather than wait for, and no second check of that
repository starts while the first hangs. Checking every interval also keeps
autofs from expiring the repositories. The root hears which repositories
are unavailable and starts no machinetype that needs one; it sends the list
to check (Repositories) whenever the keeper's report shows another than the
machinetypes now need: after a reload, a pipe update or a keeper restart.
"""

import logging
import os
import subprocess
import time

from vac.ipc import messages
from vac.runtimes.mounts import host_propagation
from vac.workers.harness import WorkerLoop

log = logging.getLogger(__name__)

CHECK_COMMAND = ("stat", "-t")


class RepositoryCheck:
    """The state of one repository and the check process under way, if any."""

    def __init__(self, name):
        self.name = name
        self.ok = None            # None until the first check ends
        self.reason = "not checked yet"
        self.process = None
        self.abandoned = None     # a check stuck in the kernel, reaped when it ends
        self.pidfd = None
        self.started = None
        self.due = 0.0
        self.watched = False      # the root wants it checked

    def fileno(self):
        return self.pidfd


def run(channel, spec):
    """Entry point in the forked keeper process."""
    loop = WorkerLoop(channel, spec, role="cvmfs-keeper")
    root = spec.get("cvmfs_root", "/cvmfs")
    command = tuple(spec.get("check_command", CHECK_COMMAND))
    interval = float(spec.get("interval_seconds", 30.0))
    timeout = float(spec.get("timeout_seconds", 10.0))
    # Every repository ever watched: one the root stops asking for keeps its
    # check object, so a hung check of it is still reaped, and not doubled
    # if the root asks for it again.
    checks = {}
    _watch(checks, spec.get("repositories", []), time.monotonic())
    # Said here, once for the factory, rather than by every slot that binds a repository.
    warning = private_root_warning(root, host_propagation(root))
    if warning is not None:
        log.warning("%s", warning)
    loop.title(_title(checks))
    loop.ready()
    loop.report("checking", repositories=_summary(checks))
    while not loop.stopping:
        now = time.monotonic()
        for check in checks.values():
            if check.abandoned is not None:
                if check.abandoned.poll() is None:
                    # While an earlier check hangs, another would only hang
                    # beside it: look again an interval later.
                    check.due = max(check.due, now + interval)
                    continue
                check.abandoned = None
            if check.watched and check.process is None and now >= check.due:
                _start(check, root, command, now)
        running = [c for c in checks.values() if c.process is not None]
        deadlines = [c.started + timeout for c in running] + [
            c.due for c in checks.values() if c.process is None and (c.watched or c.abandoned)]
        wait = max(min(deadlines, default=now + interval) - now, 0)
        received = loop.wait(min(wait, interval), fds=[c for c in running if c.pidfd is not None])
        changed = False
        now = time.monotonic()
        for msg in received:
            if isinstance(msg, messages.Repositories):
                changed |= _watch(checks, msg.names, now)
                # The root learns from this report that its list arrived.
                changed = True
            else:
                log.warning("cvmfs-keeper: ignoring an unexpected %s message", type(msg).__name__)
        for check in running:
            changed |= _collect(check, now, timeout, interval)
        if changed:
            loop.title(_title(checks))
            loop.report("checking", repositories=_summary(checks))
    for check in checks.values():
        if check.process is not None:
            check.process.kill()
    log.info("cvmfs-keeper stopping: %s", loop.stop_reason)


def private_root_warning(root, propagation):
    """What to tell the site when the host keeps `root` on a private mount, or None."""
    if propagation != "private":
        return None
    return (f"{root} is on a private mount, which the engine cannot bind with propagation: repositories "
            "are bound as mounted when each machine starts, and one the automounter mounts again "
            "later stays hidden from running machines (make it shared, as systemd does: "
            "mount --make-rshared /)")


def _watch(checks, names, now):
    """Watch exactly `names`; True if that changed the list."""
    wanted = set(names)
    changed = False
    for name in wanted - {name for name, check in checks.items() if check.watched}:
        check = checks.setdefault(name, RepositoryCheck(name))
        check.watched, check.ok, check.reason = True, None, "not checked yet"
        check.due = now
        changed = True
        log.info("cvmfs repository %s: watching", name)
    for name, check in checks.items():
        if check.watched and name not in wanted:
            check.watched = False
            changed = True
            log.info("cvmfs repository %s: no longer needed", name)
    return changed


def _start(check, root, command, now):
    path = os.path.join(root, check.name) + "/."
    check.process = subprocess.Popen([*command, path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    check.pidfd = os.pidfd_open(check.process.pid)
    check.started = now


def _collect(check, now, timeout, interval):
    """Take the result of a finished or overdue check; True if the verdict changed."""
    before = (check.ok, check.reason)
    code = check.process.poll()
    if code is None and now - check.started < timeout:
        return False
    if code is None:
        # Stuck in the automounter or a hung FUSE mount: kill it and move on
        # without waiting, since a process in the kernel may not die soon.
        check.process.kill()
        check.abandoned = check.process
        check.ok, check.reason = False, f"no answer within {timeout:.0f} s"
    elif code == 0:
        check.ok, check.reason = True, "ok"
    else:
        error = check.process.stderr.read(500).decode(errors="replace").strip()
        check.ok, check.reason = False, error or f"check exited with {code}"
    check.process.stderr.close()
    os.close(check.pidfd)
    check.process = check.pidfd = None
    check.due = now + interval
    if check.watched and (check.ok, check.reason) != before:
        level = logging.INFO if check.ok else logging.WARNING
        log.log(level, "cvmfs repository %s: %s", check.name, check.reason)
        return True
    return False


def _summary(checks):
    return {name: {"ok": c.ok, "reason": c.reason} for name, c in sorted(checks.items()) if c.watched}


def _title(checks):
    watched = [c for c in checks.values() if c.watched]
    failing = sorted(c.name for c in watched if c.ok is False)
    ok = sum(1 for c in watched if c.ok)
    if failing:
        return f"cvmfs-keeper [{ok} ok, {len(failing)} failing: {', '.join(failing)}]"
    return f"cvmfs-keeper [{ok} of {len(watched)} repos ok]"
