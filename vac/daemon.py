"""The `vacd` command: read the configuration, build the tree, run the root."""

import argparse
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

from vac import __version__, logs
from vac.accounting import apel
from vac.config.load import load_configuration, try_load_configuration
from vac.control.commands import COMMANDS, Context
from vac.control.server import ControlServer
from vac.config.model import apply_overrides
from vac.config.problems import ConfigError
from vac.supervisor.build import TreeSettings, build_tree
from vac.supervisor.config_watch import ConfigWatcher
from vac.supervisor.factory import Factory
from vac.supervisor.metrics_snapshot import MetricsFeed
from vac.supervisor.recall import recall
from vac.supervisor.root import Root
from vac.supervisor.scheduler_inputs import needed_repositories

log = logging.getLogger("vac.daemon")

RELOAD_SETTLE_SECONDS = 0.5
SYSLOG_ERR, SYSLOG_WARNING = 3, 4


def _path_argument(text):
    """A path on the command line, relative to the working directory; an empty one is a mistake."""
    if not text or "\0" in text:
        # abspath("") is the working directory: never what an operator meant.
        raise argparse.ArgumentTypeError(f"{text!r} is not a path")
    return os.path.abspath(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="vacd", description="vac container factory daemon")
    parser.add_argument("--config", action="append", metavar="FILE",
                        help="configuration file (repeatable; default: /etc/vac.d/*.conf, "
                             "/etc/vac.conf, /var/run/vac.conf)")
    parser.add_argument("--state-dir", metavar="DIR", type=_path_argument,
                        help="state directory (default /var/lib/vac)")
    parser.add_argument("--socket", metavar="PATH", type=_path_argument,
                        help="control socket (default /run/vac/control.sock)")
    parser.add_argument("--check-config", action="store_true",
                        help="print the effective configuration or its errors; exit 0 or 1")
    parser.add_argument("--quiet", action="store_true",
                        help="with --check-config: print only errors and warnings (as the systemd unit does)")
    parser.add_argument("--log-file", metavar="FILE", help="log here instead of stderr")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"vacd {__version__}")
    return parser.parse_args(argv)


def load(args):
    """The configuration with command-line overrides applied (raises ConfigError)."""
    config = load_configuration(args.config)
    return apply_overrides(config, state_dir=args.state_dir, control_socket=args.socket)


def say(text, err, priority):
    """A message on stderr, with its syslog priority where stderr is the journal (as log lines have)."""
    print(logs.prefixed(text, priority) if logs.stream_is_journal(err) else text, file=err)


def check_config(args, out=sys.stdout, err=sys.stderr):
    """Print the effective configuration (secrets masked; not with --quiet) or every problem."""
    from vac.config.render import render_effective
    try:
        config = load(args)
    except ConfigError as error:
        for problem in error.problems:
            say(str(problem), err, SYSLOG_ERR)
        return 1
    if not args.quiet:
        out.write(render_effective(config))
    for problem in proxy_problems(config, time.time()):
        say(f"warning: {problem}", err, SYSLOG_WARNING)
    return 0


def proxy_problems(config, now):
    """For each local machinetype with user_data_proxy: why no proxy could be made for a machine started now.

    A warning, not an error: the site may install the certificate after the
    configuration; until then each machine of the type ends as 700 Failed to start.
    """
    from vac.machine import x509_proxy
    problems = []
    for name, machinetype in config.machinetypes.items():
        if not machinetype.user_data_proxy:
            continue
        files_dir = Path(config.settings.machinetypes_dir) / (machinetype.files_name or name) / "files"
        problem = x509_proxy.credential_problem(files_dir, now, now + machinetype.max_wallclock_seconds)
        if problem is not None:
            problems.append(f"[machinetype {name}] {problem}: its machines will end as 700 Failed to start")
    return problems


def factory_name(settings):
    """This factory's name: the factory_name setting, else this host's FQDN."""
    return settings.factory_name or socket.getfqdn()


def tree_settings(config):
    """The supervision tree's shape from the configuration."""
    settings = config.settings
    repositories = needed_repositories(config.machinetypes)
    timeout = float(settings.heartbeat_timeout_seconds)
    return TreeSettings(slots=settings.slots, cvmfs_repositories=tuple(repositories),
                        state_dir=settings.state_dir, factory_name=factory_name(settings),
                        docker_url=settings.docker_url,
                        docker_timeout_seconds=float(settings.docker_timeout_seconds),
                        reaper_interval_seconds=float(settings.reaper_interval_seconds),
                        orphan_grace_seconds=float(settings.orphan_grace_seconds),
                        cvmfs_keepalive_seconds=float(settings.cvmfs_keepalive_seconds),
                        metrics_listen=settings.metrics_listen,
                        metrics_textfile=settings.metrics_textfile,
                        space=settings.vac_space, factories=tuple(settings.factories),
                        vacquery_listen=settings.vacquery_listen,
                        udp_timeout_seconds=float(settings.udp_timeout_seconds),
                        gocdb_sitename=settings.gocdb_sitename,
                        apel_sync_site=apel.sync_site(settings.gocdb_sitename, settings.hs06_per_processor),
                        singularity={"command": settings.singularity_command,
                                     "cgroups": settings.singularity_cgroups,
                                     "accounts": list(settings.singularity_accounts),
                                     "sweep_seconds": float(settings.singularity_sweep_seconds)},
                        mjf=mjf_child_settings(config),
                        machine_models=machine_models(config),
                        heartbeat_timeout=timeout, heartbeat_interval=heartbeat_interval(timeout))


def heartbeat_interval(timeout):
    """A child's heartbeat interval: a third of the timeout, so a child is restarted as hung after
    three missed heartbeats, and an idle slot wakes as seldom as that allows (every 10 s by default).

    Idle cost is wake-ups: each costs far more CPU than the heartbeat itself,
    and a node of 256 slots wakes 256 times per interval.
    """
    return timeout / 3


def machine_models(config):
    """The models whose engines the slots need: the local machinetypes', and Docker while pipes may bring it."""
    models = {machinetype.machine_model for machinetype in config.machinetypes.values()}
    if config.vacuum_pipes or not models:
        models.add("docker")
    return tuple(sorted(models))


def mjf_child_settings(config):
    """The mjf child's settings if the configuration may need it, else None (no child).

    Machinetypes from pipes may ask for mjf_http whenever a pipe is fetched,
    while the tree is built once: a configured pipe is reason enough.
    """
    settings = config.settings
    wanted = (settings.mjf_http_listen is not None or bool(config.vacuum_pipes)
              or any(machinetype.mjf_http for machinetype in config.machinetypes.values()))
    return {"listen": settings.mjf_http_listen} if wanted else None


class StateDirectoryBusy(Exception):
    """Another vacd holds the state directory's lock."""


def lock_state_dir(state_dir):
    """Hold an exclusive lock on the state directory for the daemon's lifetime (StateDirectoryBusy if held)."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    path = os.path.join(state_dir, "vacd.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StateDirectoryBusy(f"vacd: another vacd (pid {holder or '?'}) runs on {state_dir}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def make_reload(args, factory):
    """SIGHUP: re-read and check the files; a bad configuration leaves the running one."""

    def on_reload(root):
        config, problems = try_load_configuration(args.config)
        if config is None:
            for problem in problems:
                log.error("reload refused, running configuration kept: %s", problem)
            factory.config_problems = [str(problem) for problem in problems]
            return
        config = apply_overrides(config, state_dir=args.state_dir, control_socket=args.socket)
        factory.config_problems = []
        factory.apply_config(config)

    return on_reload


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        logs.configure(args.log_level, args.log_file)
    except OSError as error:
        print(f"vacd: cannot log to {args.log_file}: {error.strerror or error}", file=sys.stderr)
        return 1
    if args.check_config:
        return check_config(args)
    try:
        config = load(args)
    except ConfigError as error:
        for problem in error.problems:
            say(f"vacd: {problem}", sys.stderr, SYSLOG_ERR)
        say(f"vacd: {len(error.problems)} configuration problem(s); not starting", sys.stderr, SYSLOG_ERR)
        return 1
    settings = config.settings
    try:
        lock_state_dir(settings.state_dir)
    except StateDirectoryBusy as error:
        say(str(error), sys.stderr, SYSLOG_ERR)
        return 1
    log.info("vacd %s starting: space %s, %d slots, state in %s",
             __version__, settings.vac_space, settings.slots, settings.state_dir)
    for problem in proxy_problems(config, time.time()):
        log.warning("%s", problem)
    shape = tree_settings(config)
    factory = Factory(config, factory_name=factory_name(settings), mjf_child=shape.mjf is not None)
    # Before the loop, once: the loop itself never waits on the disk.
    recall(factory, settings.state_dir, time.time())
    root = Root(build_tree(shape), app=factory,
                on_reload=make_reload(args, factory))
    root.add_service(MetricsFeed(root, factory))
    # Editors write a file in several steps: fold a burst of events into one reload.
    watcher = ConfigWatcher(args.config, lambda path: root.request_reload(RELOAD_SETTLE_SECONDS))
    root.add_reader(watcher.fileno(), watcher.on_readable)
    control = ControlServer(root, settings.control_socket, COMMANDS, Context(root, factory),
                            admin_group=settings.admin_group,
                            readonly_group=settings.readonly_group)
    try:
        control.open()
    except (OSError, RuntimeError) as error:
        say(f"vacd: control socket {settings.control_socket}: {error}", sys.stderr, SYSLOG_ERR)
        return 1
    try:
        return root.run()
    finally:
        control.close()


if __name__ == "__main__":
    sys.exit(main())
