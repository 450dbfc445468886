"""The `vac` command: operate a running vacd through its control socket.

Exit codes: 0 done; 1 vacd refused the command or it failed; 2 usage error;
3 vacd is not running or does not answer; 4 permission denied.
`vac check` exits with the Nagios codes instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable

from vac import __version__, apel_sync, cli_render, cli_space, nagios, occupancy
from vac.control.client import ControlClient, ControlError

DEFAULT_SOCKET = "/run/vac/control.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_DENIED = 0, 1, 2, 3, 4
EPILOG = """exit codes: 0 done, 1 vacd refused the command or it failed, 2 usage error,
3 vacd is not running or does not answer, 4 permission denied;
vac check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios).
The socket is --socket, else $VAC_SOCKET, else /run/vac/control.sock."""


@dataclasses.dataclass(frozen=True)
class Sub:
    """A subcommand that sends one control command and prints its result."""
    help: str
    arguments: tuple = ()                       # (flags, argparse keyword arguments) pairs
    request: Callable = lambda args: {}         # parsed arguments -> the command's args
    render: Callable | None = None              # (result, now) -> text; None: a changing command


MAX_SECONDS = 7 * 86400


def seconds(text):
    """A command-line duration: a finite number of seconds from 0 to a week."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and {MAX_SECONDS} seconds")
    return value


def positive_seconds(text):
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


SLOT = (("slot",), {"type": int, "metavar": "SLOT", "help": "slot number, as in vac slots"})
MACHINETYPE = (("machinetype",), {"metavar": "MACHINETYPE"})
SUBCOMMANDS = {
    "status": Sub("factory summary", render=cli_render.status),
    "slots": Sub("every slot in a table", render=cli_render.slots),
    "slot": Sub("one slot in detail", (SLOT,), lambda a: {"slot": a.slot}, cli_render.slot),
    "machinetypes": Sub("machinetypes in a table", render=cli_render.machinetypes),
    "drain": Sub("start no new machines", ((("--deadline",), {
        "type": seconds, "metavar": "SECONDS",
        "help": "end running machines after SECONDS (100 shutdown_message)"}),),
        lambda a: {} if a.deadline is None else {"deadline": a.deadline}),
    "undrain": Sub("start machines again after a drain"),
    "stop-machine": Sub("end the machine in a slot gracefully", (SLOT, (("--reason",), {
        "metavar": "TEXT", "help": "the shutdown_message text (code 100)"})),
        lambda a: {"slot": a.slot} | ({} if a.reason is None else {"reason": a.reason})),
    "reset-slot": Sub("clear a FATAL slot so its worker starts again", (SLOT,),
                      lambda a: {"slot": a.slot}),
    "pause": Sub("start no new machines of a machinetype", (MACHINETYPE,),
                 lambda a: {"machinetype": a.machinetype}),
    "resume": Sub("start a paused machinetype again", (MACHINETYPE,),
                  lambda a: {"machinetype": a.machinetype}),
    "reload": Sub("re-read the configuration (as SIGHUP does)"),
    "shutdown": Sub("stop vacd; running containers are left running"),
    "help": Sub("the daemon's commands", render=cli_render.commands),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="vac", description="Operate a vac factory through vacd's control socket.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vac {__version__}")
    parser.add_argument("--socket", metavar="PATH",
                        default=os.environ.get("VAC_SOCKET") or DEFAULT_SOCKET,
                        help="vacd's control socket (default $VAC_SOCKET or %(default)s)")
    parser.add_argument("--timeout", metavar="S", type=positive_seconds, default=10.0,
                        help="seconds to wait for vacd's answer (default %(default)s)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for tooling")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=spec.help, description=spec.help, parents=[json_flag])
        for flags, options in spec.arguments:
            command.add_argument(*flags, **options)
    cli_space.add_parsers(sub, json_flag)
    sub.add_parser("watch", parents=[json_flag],
                   help="print the daemon's events as they happen, until Ctrl-C")
    check = sub.add_parser("check", help="Nagios/NRPE plugin: OK/WARNING/CRITICAL/UNKNOWN",
                           description=nagios.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--idle-warning", metavar="SECONDS", type=seconds,
                       default=nagios.IDLE_WARNING_SECONDS,
                       help="warn when no machine has run this long (default %(default)s)")
    config = sub.add_parser("check-config", help="print the effective configuration or its errors")
    config.add_argument("--config", action="append", metavar="FILE")
    occupancy.add_parser(sub)
    apel_sync.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check-config":
        from vac.daemon import check_config, parse_args
        return check_config(parse_args(["--check-config"] + [
            item for path in (args.config or []) for item in ("--config", path)]))
    if args.command == "occupancy":
        return occupancy.main_occupancy(args)
    if args.command == "apel-sync":
        return apel_sync.main_apel_sync(args)
    try:
        if args.command == "check":
            return run_check(args)
        if args.command == "watch":
            return run_watch(args)
        if args.command in ("space", "machines"):
            return run_space(args)
        return run_command(args, SUBCOMMANDS[args.command])
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        return 130


def run_command(args, spec):
    """Send one command, print its result; the exit code says how it went."""
    try:
        result = _ask(args, lambda client: client.request(args.command, **spec.request(args)))
    except (ControlError, OSError) as error:
        return _failed(error, args)
    if args.json:
        text = cli_render.to_json(result)
    elif spec.render is None:
        text = cli_render.reply(args.command, result)
    else:
        text = spec.render(result, time.time())
    _print(text)
    return EXIT_OK


def run_check(args):
    """`vac check`: print one Nagios line; exit with its code."""
    try:
        answer = _ask(args, lambda client: (client.request("status"), client.request("slots")))
    except (ControlError, OSError) as error:
        code, text = nagios.unknown(_reason(error, args))
    else:
        code, text = nagios.evaluate(*answer, now=time.time(),
                                     idle_warning_seconds=args.idle_warning)
    _print(text)
    return code


def run_watch(args):
    """Print events until Ctrl-C or until vacd closes the connection (then exit 3)."""
    try:
        client = ControlClient(args.socket, args.timeout)
    except (ControlError, OSError) as error:
        return _failed(error, args)
    with client:
        events = client.watch()
        try:
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    break
                except (ControlError, OSError) as error:
                    return _failed(error, args)
                try:
                    _print(cli_render.to_json(event, lines=True) if args.json
                           else cli_render.event(event), flush=True)
                except BrokenPipeError:
                    return _stdout_gone()
        except KeyboardInterrupt:
            return EXIT_OK
    print("vac: vacd closed the connection: the watch has ended", file=sys.stderr)
    return EXIT_NOT_RUNNING


def run_space(args):
    """`vac space` and `vac machines`: what the space last said, or says once polled again."""
    command = "space" if args.command == "space" else "space_machines" if args.space else "machines"
    fresh = args.fresh if args.command == "space" else args.space and not args.cached
    try:
        result, not_fresh = _ask(args, lambda client: cli_space.fetch(
            client, command, fresh=fresh, machines=args.command == "machines"))
    except (ControlError, OSError) as error:
        return _failed(error, args)
    render = cli_space.render_space if args.command == "space" else cli_space.render_machines
    _print(cli_render.to_json(result) if args.json else render(result, time.time()))
    if not_fresh is not None:
        _print(f"vac: {not_fresh}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _ask(args, action):
    """action(client) on a fresh connection; ControlError or OSError when that fails."""
    with ControlClient(args.socket, args.timeout) as client:
        return action(client)


def _failed(error, args):
    _print(f"vac: {_reason(error, args)}", file=sys.stderr)
    return _exit_code(error)


def _print(text, file=None, flush=False):
    """print() for everything vac shows: text that came from outside arrives escaped."""
    print(cli_render.terminal_safe(text), file=file or sys.stdout, flush=flush)


def _exit_code(error):
    if isinstance(error, ControlError):
        if error.code == "denied":
            return EXIT_DENIED
        return EXIT_NOT_RUNNING if error.code in ("not_running", "closed") else EXIT_FAILED
    return EXIT_NOT_RUNNING  # the socket cannot be reached or vacd does not answer


def _reason(error, args):
    if isinstance(error, ControlError):
        return str(error)
    if isinstance(error, TimeoutError):
        return f"vacd did not answer on {args.socket} within {args.timeout:g} s"
    return f"cannot talk to vacd on {args.socket}: {error.strerror or error}"


def _stdout_gone():
    # The reader went away (vac ... | head): nothing more to say, and no traceback at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
