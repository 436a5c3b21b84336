"""How client commands reach the gateway: address, TLS, API key, and readable gRPC errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from services.cli.options import UsageError, add_env_option

DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50051"


# Round robin over every address the target names: a stream opened to resume a session goes to
# another gateway than the one that was lost or asked its clients to move.
CHANNEL_OPTIONS = [("grpc.lb_policy_name", "round_robin")]


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that calls the gateway takes."""
    add_env_option(
        parser,
        "--address",
        default=DEFAULT_GATEWAY_ADDRESS,
        help="gateway address HOST:PORT, or several as ipv4:HOST:PORT,HOST:PORT "
        "(streams are spread over them, and a resumed stream goes to the next)",
    )
    add_env_option(parser, "--api-key", help="sent as 'authorization: Bearer <key>'")
    add_env_option(
        parser,
        "--tls-ca",
        type=Path,
        help="PEM file of the CA that signed the gateway's certificate; enables TLS",
    )
    add_env_option(
        parser,
        "--tls-cert",
        type=Path,
        help="PEM client certificate, for a gateway that requires one (mTLS); "
        "needs --tls-ca and --tls-key",
    )
    add_env_option(parser, "--tls-key", type=Path, help="PEM private key of --tls-cert")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.address``: plaintext, or TLS trusting ``--tls-ca`` and presenting
    ``--tls-cert`` when given. UsageError for a file that cannot be read or a lone option."""
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise UsageError("--tls-cert and --tls-key need --tls-ca")
        return grpc.insecure_channel(args.address, options=CHANNEL_OPTIONS)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key must be given together")
    client_identity = {}
    if args.tls_cert is not None:
        client_identity = {
            "certificate_chain": _read(args.tls_cert, "--tls-cert"),
            "private_key": _read(args.tls_key, "--tls-key"),
        }
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "--tls-ca"), **client_identity
    )
    return grpc.secure_channel(args.address, credentials, options=CHANNEL_OPTIONS)


def _read(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {option} file {path}: {err.strerror or err}") from err


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Per-call metadata: the bearer token when an API key is given."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def describe_rpc_error(err: grpc.RpcError) -> str:
    """ "UNAVAILABLE: failed to connect ..." for an error raised by a call."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details or 'no details'}"
