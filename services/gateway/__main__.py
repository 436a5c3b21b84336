"""python -m services.gateway: the public streaming service."""

from __future__ import annotations

import argparse
import logging
import sys

from services.common.config import add_flag, add_service_flags
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from services.common.security import (
    SecurityConfigError,
    add_internal_tls_flags,
    add_server_tls_flags,
    internal_channel_credentials_from_flags,
    server_credentials_from_flags,
)
from services.common.server import Service, service_main
from services.gateway.auth import add_api_key_flags, api_key_interceptors_from_flags
from services.gateway.embedder_client import EmbedderClient
from services.gateway.generator_pool import GeneratorPool
from services.gateway.listener import SessionSettings
from services.gateway.prompts import PromptLimits
from services.gateway.servicer import MusicGenerationServicer
from services.gateway.session_store import describe_store, open_session_store

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    add_service_flags(parser, port=50051, metrics_port=9091)
    add_flag(parser, "--embedder-address", default="127.0.0.1:50052", help="embedder host:port")
    add_flag(
        parser,
        "--generator-addresses",
        default="127.0.0.1:50053",
        help="comma-separated generator host:port list; an entry dns:///name:port is "
        "re-resolved to every address behind it (e.g. a headless Service)",
    )
    add_flag(
        parser,
        "--default-model",
        default="",
        help="model for sessions that name none (empty: what the generators serve)",
    )
    add_flag(
        parser,
        "--buffer-ahead-seconds",
        default=2.0,
        type=float,
        help="how far ahead of the listener's playback 2 s chunks are sent; sessions of "
        "shorter chunks get it scaled by chunk_frames / 50",
    )
    add_flag(
        parser,
        "--load-poll-interval-s",
        default=1.0,
        type=float,
        help="how often generator load is polled and DNS re-resolved",
    )
    add_flag(
        parser,
        "--backend-timeout-s",
        default=10.0,
        type=float,
        help="deadline for embedder calls and generator session opens",
    )
    add_flag(
        parser,
        "--slow-client-timeout-s",
        default=10.0,
        type=float,
        help="a client that reads nothing for this long is disconnected",
    )
    add_flag(
        parser,
        "--chunk-timeout-s",
        default=1.0,
        type=float,
        help="a chunk this late against its deadline moves the session to another "
        "generator; keep it below --buffer-ahead-seconds so the listener's buffer "
        "covers the move",
    )
    add_flag(
        parser,
        "--idle-release-s",
        default=60.0,
        type=float,
        help="a session paused (or never played) this long gives its generator slot back; "
        "PLAY places it again from its last state",
    )
    add_flag(
        parser,
        "--reconnect-window-s",
        default=30.0,
        type=float,
        help="how long a session whose generator was lost looks for another before it ends",
    )
    add_flag(
        parser,
        "--max-prompts",
        default=PromptLimits().max_prompts,
        type=int,
        help="most prompts in one update",
    )
    add_flag(
        parser,
        "--max-text-chars",
        default=PromptLimits().max_text_chars,
        type=int,
        help="longest text prompt accepted",
    )
    add_flag(
        parser,
        "--max-audio-bytes",
        default=PromptLimits().max_audio_bytes,
        type=int,
        help="largest audio prompt accepted",
    )
    add_flag(
        parser,
        "--max-audio-input-message-bytes",
        default=1024 * 1024,
        type=int,
        help="largest audio_input message accepted (larger ones are refused with a warning)",
    )
    add_flag(
        parser,
        "--session-store",
        default="memory://",
        help="where sessions' resumable state is kept: memory:// (this gateway only) or "
        "redis://host:port/db (shared by gateways: a session resumes on any of them)",
    )
    add_flag(
        parser,
        "--session-ttl-s",
        default=300.0,
        type=float,
        help="a session's resumable state expires this long after its last write",
    )
    add_flag(
        parser,
        "--session-store-max-sessions",
        default=10000,
        type=int,
        help="memory:// only: most sessions whose state is kept (the least recently written "
        "are forgotten first, and can no longer resume)",
    )
    add_flag(
        parser,
        "--session-store-timeout-s",
        default=0.5,
        type=float,
        help="a session store call taking longer fails (the session plays on without resume)",
    )
    add_flag(
        parser,
        "--drain-grace-s",
        default=30.0,
        type=float,
        help="on SIGTERM, how long streams keep playing after their clients were told to "
        "reconnect elsewhere (RECONNECT); keep it below the pod's termination grace",
    )
    add_api_key_flags(parser)
    add_server_tls_flags(parser)
    add_internal_tls_flags(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.buffer_ahead_seconds < 0:
        parser.error("--buffer-ahead-seconds must be >= 0")
    for flag in (
        "chunk_timeout_s",
        "idle_release_s",
        "reconnect_window_s",
        "session_ttl_s",
        "session_store_timeout_s",
    ):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0")
    if args.drain_grace_s < 0:
        parser.error("--drain-grace-s must be >= 0")
    if args.session_store_max_sessions < 1:
        parser.error("--session-store-max-sessions must be >= 1")
    try:
        open_session_store(args.session_store, ttl_s=1.0, timeout_s=1.0)
    except ValueError as err:
        parser.error(str(err))
    return args


async def serve(args: argparse.Namespace) -> None:
    if args.chunk_timeout_s >= args.buffer_ahead_seconds:
        log.warning(
            "--chunk-timeout-s %g is not below --buffer-ahead-seconds %g: listeners will "
            "hear silence while a session moves off a hung generator",
            args.chunk_timeout_s,
            args.buffer_ahead_seconds,
        )
    public_service = music_pb2.DESCRIPTOR.services_by_name["MusicGeneration"].full_name
    interceptors = api_key_interceptors_from_flags(args, public_service)
    server_credentials = server_credentials_from_flags(args)
    internal_credentials = internal_channel_credentials_from_flags(args)
    pool = GeneratorPool(
        [a.strip() for a in args.generator_addresses.split(",") if a.strip()],
        poll_interval_s=args.load_poll_interval_s,
        rpc_timeout_s=args.backend_timeout_s,
        max_message_bytes=args.max_message_bytes,
        credentials=internal_credentials,
        tls_server_name=args.internal_tls_server_name or None,
    )
    embedder = EmbedderClient(
        args.embedder_address,
        timeout_s=args.backend_timeout_s,
        max_message_bytes=args.max_message_bytes,
        credentials=internal_credentials,
        tls_server_name=args.internal_tls_server_name or None,
    )
    settings = SessionSettings(
        buffer_ahead_seconds=args.buffer_ahead_seconds,
        open_timeout_s=args.backend_timeout_s,
        slow_client_timeout_s=args.slow_client_timeout_s,
        chunk_timeout_s=args.chunk_timeout_s,
        idle_release_s=args.idle_release_s,
        reconnect_window_s=args.reconnect_window_s,
        reconnect_interval_s=args.load_poll_interval_s,
        prompt_limits=PromptLimits(
            max_prompts=args.max_prompts,
            max_text_chars=args.max_text_chars,
            max_audio_bytes=args.max_audio_bytes,
        ),
        max_audio_input_message_bytes=args.max_audio_input_message_bytes,
    )
    store = open_session_store(
        args.session_store,
        ttl_s=args.session_ttl_s,
        timeout_s=args.session_store_timeout_s,
        memory_max_sessions=args.session_store_max_sessions,
    )
    log.info(
        "session store: %s (records expire after %g s)",
        describe_store(args.session_store),
        args.session_ttl_s,
    )
    servicer = MusicGenerationServicer(
        pool=pool,
        embedder=embedder,
        settings=settings,
        default_model=args.default_model,
        store=store,
        api_keys_enabled=args.api_keys_file is not None,
    )
    service = Service.from_flags(
        "gateway",
        args,
        public_service,
        server_credentials=server_credentials,
        extra_interceptors=interceptors,
    )
    music_pb2_grpc.add_MusicGenerationServicer_to_server(servicer, service.server)
    await pool.start()
    try:
        await service.run(
            ready=lambda: bool(pool.models()) and not servicer.draining,
            on_drain=lambda: servicer.drain(args.drain_grace_s),
        )
    finally:
        await store.close()
        await pool.close()
        await embedder.close()


def main(argv: list[str] | None = None) -> int:
    return service_main("gateway", argv, parse_args, serve, (SecurityConfigError,))


if __name__ == "__main__":
    sys.exit(main())
