"""Command line: ``python -m normdrop info``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normdrop",
                                     description="normdrop command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends, OpenMP and threads, CUDA")
    args = parser.parse_args(argv)
    if args.command == "info":
        from ._info import show_config
        show_config()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
