"""Command-line flags with environment-variable equivalents.

Every flag ``--some-flag`` of a service can also be set as ``MRT_SOME_FLAG``; an explicit flag
wins over the environment, which wins over the default. Help texts name the variable.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from services.common import model_facts as facts

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    return "MRT_" + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def parse_chunk_frames_list(text: str) -> tuple[int, ...]:
    """ "10,25" -> (10, 25): chunk lengths in frames of 40 ms, each in the range sessions may
    ask for; "" -> ()."""
    low, high = facts.CHUNK_FRAMES_RANGE
    try:
        lengths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from err
    if any(not low <= frames <= high for frames in lengths):
        raise argparse.ArgumentTypeError(f"chunk lengths must be in [{low}, {high}] frames")
    return lengths


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str,
    **kwargs: Any,
) -> None:
    """Add ``flag`` whose default comes from ``MRT_<FLAG>`` when that variable is set."""
    env = env_name(flag)
    if env in os.environ:
        try:
            default = type(os.environ[env])
        except (ValueError, argparse.ArgumentTypeError) as err:
            parser.error(f"environment variable {env}={os.environ[env]!r} is invalid: {err}")
    parser.add_argument(
        flag, default=default, type=type, help=f"{help} (env {env}; default {default!r})", **kwargs
    )


def add_service_flags(parser: argparse.ArgumentParser, *, port: int, metrics_port: int) -> None:
    """The flags every service has: where it listens, where its metrics are, how it logs."""
    add_flag(parser, "--host", default="0.0.0.0", help="address to listen on")
    add_flag(parser, "--port", default=port, type=int, help="gRPC port")
    add_flag(
        parser,
        "--metrics-port",
        default=metrics_port,
        type=int,
        help="Prometheus /metrics HTTP port (0 disables)",
    )
    add_flag(
        parser,
        "--log-level",
        default="INFO",
        help="logging level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    add_flag(
        parser,
        "--max-message-bytes",
        default=16 * 1024 * 1024,
        type=int,
        help="largest gRPC message accepted or sent",
    )
    add_flag(
        parser,
        "--shutdown-grace-s",
        default=5.0,
        type=float,
        help="seconds in-flight RPCs get to finish on shutdown",
    )


def setup_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
