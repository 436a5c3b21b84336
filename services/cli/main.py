"""Entry point of the ``mrt`` console script: dispatches to one module per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from services.cli import assets_cmd, queries, stream, up
from services.cli.connection import describe_rpc_error
from services.cli.options import CommandFailed, UsageError

_EXIT_FAILED, _EXIT_USAGE, _EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrt",
        description="Magenta RealTime serving cluster: run it locally, stream music "
        "from it, query it. Every --option-name also reads "
        "MRT_OPTION_NAME where noted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, stream, queries, assets_cmd):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``mrt`` command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    prog = f"mrt {args.command}"
    try:
        return args.run(args)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return _EXIT_USAGE
    except CommandFailed as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return _EXIT_FAILED
    except grpc.RpcError as err:
        print(f"{prog}: error: {describe_rpc_error(err)}", file=sys.stderr)
        return _EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return _EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
