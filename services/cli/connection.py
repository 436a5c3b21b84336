"""How client commands reach the gateway: address, TLS, API key, and readable gRPC errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from services.cli.options import UsageError, add_env_option

DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:50051"


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that calls the gateway takes."""
    add_env_option(parser, "--address", default=DEFAULT_GATEWAY_ADDRESS,
                   help="gateway address HOST:PORT")
    add_env_option(parser, "--api-key", help="sent as 'authorization: Bearer <key>'")
    add_env_option(parser, "--tls-ca", type=Path,
                   help="PEM file of the CA that signed the gateway's certificate; enables TLS")


def open_channel(address: str, tls_ca: Path | None = None) -> grpc.Channel:
    """An insecure channel, or a TLS one that trusts ``tls_ca``."""
    if tls_ca is None:
        return grpc.insecure_channel(address)
    try:
        root_certificates = Path(tls_ca).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read --tls-ca file {tls_ca}: {err.strerror or err}") from err
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.secure_channel(address, credentials)


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Per-call metadata: the bearer token when an API key is given."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def describe_rpc_error(err: grpc.RpcError) -> str:
    """"UNAVAILABLE: failed to connect ..." for an error raised by a call."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details or 'no details'}"
