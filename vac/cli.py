"""The `vac` command for operators."""

import argparse
import sys

from vac import __version__


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="vac", description="Operate a vac factory. The control-socket commands "
        "(status, slots, drain, ...) are not available in this version.")
    parser.add_argument("--version", action="version", version=f"vac {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="print the effective configuration or its errors")
    check.add_argument("--config", action="append", metavar="FILE")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check-config":
        from vac.daemon import check_config, parse_args
        return check_config(parse_args(["--check-config"] + [
            item for path in (args.config or []) for item in ("--config", path)]))
    return 2


if __name__ == "__main__":
    sys.exit(main())
