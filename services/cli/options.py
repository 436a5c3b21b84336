"""Command-line options that also read an environment variable: ``--foo-bar`` <- ``MRT_FOO_BAR``.

One helper so every option names its variable the same way and says so in ``--help``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def env_var_name(flag: str) -> str:
    """``--gateway-port`` -> ``MRT_GATEWAY_PORT``."""
    return "MRT_" + flag.lstrip("-").replace("-", "_").upper()


def add_env_option(
    parser: argparse.ArgumentParser, flag: str, *, default: Any = None, help: str, **kwargs: Any
) -> argparse.Action:
    """Add ``flag`` whose default comes from its ``MRT_*`` variable when that is set.

    argparse runs ``type`` on string defaults, so a value from the environment is converted
    and checked exactly like one from the command line.
    """
    env = env_var_name(flag)
    shown_default = "" if default is None else f", default {default}"
    return parser.add_argument(
        flag,
        default=os.environ.get(env, default),
        help=f"{help} (env {env}{shown_default})",
        **kwargs,
    )


class UsageError(Exception):
    """The command was called wrongly (bad value, unreadable file); exits with status 2."""


class CommandFailed(Exception):
    """The command ran but could not do its job; exits with status 1."""


def user_input_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser that raises ValueError so argparse shows its message as a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a finite number > 0, got {text!r}")
    return value
