"""Watching the configuration files with inotify, from the root's loop.

Directories are watched rather than files, because editors and package
managers replace a file by renaming a new one over it.
"""

import fnmatch
import logging
import os

import pyinotify

from vac.supervisor.barrier import FaultBarrier

log = logging.getLogger(__name__)

MASK = (pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM
        | pyinotify.IN_CREATE | pyinotify.IN_DELETE)
DEFAULT_DIRECTORY = "/etc/vac.d"
DEFAULT_FILES = ("/etc/vac.conf", "/var/run/vac.conf")


def watch_targets(config_args):
    """{directory: file-name patterns} for the files a reload would read."""
    targets = {}
    if config_args:
        paths, directories = list(config_args), [p for p in config_args if os.path.isdir(p)]
    else:
        paths, directories = list(DEFAULT_FILES), [DEFAULT_DIRECTORY]
        # /etc/vac.d may appear later: watch /etc for its creation too.
        targets.setdefault("/etc", set()).add("vac.d")
    for directory in directories:
        targets.setdefault(os.path.abspath(directory), set()).add("*.conf")
    for path in paths:
        if path not in directories:
            path = os.path.abspath(path)
            targets.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    return targets


class ConfigWatcher:
    """Calls on_change(path) when a configuration file is written, added or removed."""

    def __init__(self, config_args, on_change):
        self.on_change = on_change
        self.targets = watch_targets(config_args)
        self.manager = pyinotify.WatchManager()
        self.notifier = pyinotify.Notifier(self.manager, default_proc_fun=self._event)
        for directory in self.targets:
            if os.path.isdir(directory):
                self.manager.add_watch(directory, MASK, quiet=True)
            else:
                log.info("not watching %s: no such directory", directory)

    def fileno(self):
        return self.manager.get_fd()

    def on_readable(self):
        """Read and dispatch the pending events (the fd is readable: no wait)."""
        self.notifier.read_events()
        self.notifier.process_events()

    def _event(self, event):
        # One event at a time behind the root's fault barrier: a fault drops
        # that event, and the events after it are still dispatched.
        with FaultBarrier("configuration watcher", "event %s on %s", event.maskname,
                          event.pathname):
            directory, name = os.path.split(event.pathname)
            patterns = self.targets.get(directory, ())
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                if name == "vac.d" and event.dir and os.path.isdir(event.pathname):
                    self.manager.add_watch(event.pathname, MASK, quiet=True)
                    self.targets.setdefault(event.pathname, set()).add("*.conf")
                self.on_change(event.pathname)

    def close(self):
        self.notifier.stop()
