"""python -m services.web: the Lyria RealTime-compatible WebSocket endpoint and the browser player.

One HTTP port serves the WebSocket endpoint, the player page at ``/``, Prometheus metrics at
``/metrics`` and a liveness check at ``/healthz``. Each WebSocket session is one ``Stream``
call on the gateway; the service keeps no state of its own, so it scales out beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

import grpc
from aiohttp import web

from services.common.config import add_flag, setup_logging
from services.common.security import (
    SecurityConfigError,
    add_internal_tls_flags,
    add_server_tls_flags,
    internal_channel_credentials_from_flags,
)
from services.common.server import channel_options
from services.web.app import build_app

log = logging.getLogger("services.web")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.web", description=__doc__)
    add_flag(parser, "--host", default="0.0.0.0", help="address to listen on")
    add_flag(
        parser,
        "--port",
        default=8080,
        type=int,
        help="HTTP port: WebSocket endpoint, player page, /metrics, /healthz",
    )
    add_flag(
        parser,
        "--log-level",
        default="INFO",
        help="logging level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    add_flag(parser, "--gateway-address", default="127.0.0.1:50051", help="gateway host:port")
    add_flag(
        parser,
        "--backend-timeout-s",
        default=10.0,
        type=float,
        help="deadline for the gateway calls that open a session",
    )
    add_flag(
        parser,
        "--max-message-bytes",
        default=16 * 1024 * 1024,
        type=int,
        help="largest WebSocket message accepted, and gRPC message sent or received",
    )
    add_flag(
        parser,
        "--shutdown-grace-s",
        default=5.0,
        type=float,
        help="seconds open sessions get to close on shutdown",
    )
    add_server_tls_flags(parser)
    add_internal_tls_flags(parser, peers="the gateway")
    return parser


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the --tls-* flags (read at start); None for plaintext."""
    if args.tls_cert_file is None and args.tls_key_file is None:
        if args.tls_client_ca_file is not None:
            raise SecurityConfigError(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"
            )
        return None
    if args.tls_cert_file is None or args.tls_key_file is None:
        raise SecurityConfigError("--tls-cert-file and --tls-key-file must be given together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(args.tls_cert_file, args.tls_key_file)
        if args.tls_client_ca_file is not None:
            context.load_verify_locations(cafile=args.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise SecurityConfigError(
            f"cannot load the TLS files {args.tls_cert_file}, {args.tls_key_file}: {err}"
        ) from None
    return context


def _gateway_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    credentials = internal_channel_credentials_from_flags(args)
    options = channel_options(args.max_message_bytes, args.internal_tls_server_name or None)
    if credentials is None:
        return grpc.aio.insecure_channel(args.gateway_address, options=options)
    return grpc.aio.secure_channel(args.gateway_address, credentials, options=options)


async def serve(args: argparse.Namespace) -> None:
    ssl_context = server_ssl_context(args)
    channel = _gateway_channel(args)
    app = build_app(
        channel, rpc_timeout_s=args.backend_timeout_s, max_message_bytes=args.max_message_bytes
    )
    runner = web.AppRunner(app, shutdown_timeout=args.shutdown_grace_s, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context)
    try:
        await site.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        scheme = "https" if ssl_context else "http"
        log.info(
            "web listening on %s://%s:%d/ (player page, Lyria WebSocket, /metrics), gateway %s",
            scheme,
            args.host,
            args.port,
            args.gateway_address,
        )
        await stopping.wait()
        log.info("web shutting down")
    finally:
        await runner.cleanup()
        await channel.close()
    log.info("web stopped")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, "web")
    try:
        asyncio.run(serve(args))
    except (SecurityConfigError, OSError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
