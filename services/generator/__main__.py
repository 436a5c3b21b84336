"""python -m services.generator: the chunk generation service."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

from services.common.assets import AssetMissingError, AssetStore
from services.common.config import (
    add_flag,
    add_service_flags,
    parse_bool,
    parse_chunk_frames_list,
)
from services.common.models import MODEL_NAMES
from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc
from services.common.security import (
    SecurityConfigError,
    add_server_tls_flags,
    server_credentials_from_flags,
)
from services.common.server import Service, service_main
from services.generator.batch_buckets import LARGEST_BATCH_SIZE
from services.generator.models import create_engine
from services.generator.runner import DEFAULT_STALL_TIMEOUT_S, BatchRunner
from services.generator.scheduler import DEFAULT_TARGET_UTILIZATION, Scheduler
from services.generator.servicer import GeneratorServicer
from services.generator.sim_engine import DEFAULT_BATCH_SECONDS, DEFAULT_SESSION_SECONDS, SimCost


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.generator", description=__doc__)
    add_service_flags(parser, port=50053, metrics_port=9093)
    add_server_tls_flags(parser)
    add_flag(parser, "--model", default="tiny", choices=MODEL_NAMES, help="model to serve")
    add_flag(parser, "--assets-dir", default=None, help="model assets directory")
    add_flag(
        parser,
        "--allow-download",
        default=False,
        type=parse_bool,
        help="fetch missing upstream assets from the Hugging Face Hub",
    )
    add_flag(
        parser,
        "--checkpoint",
        default=None,
        type=Path,
        help="upstream t5x checkpoint (.tar or directory) to use instead of the assets dir's",
    )
    add_flag(
        parser,
        "--random-weights",
        default=False,
        type=parse_bool,
        help="base / large with random weights and the tiny codec (speed tests without "
        "the upstream files; the music is noise)",
    )
    add_flag(
        parser,
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="activation dtype of the model",
    )
    add_flag(
        parser,
        "--sim-batch-seconds",
        default=DEFAULT_BATCH_SECONDS,
        type=float,
        help="model sim: fixed seconds of every batched chunk (an accelerator's launch "
        "and weight-read cost)",
    )
    add_flag(
        parser,
        "--sim-session-seconds",
        default=DEFAULT_SESSION_SECONDS,
        type=float,
        help="model sim: seconds each session adds to a batched chunk",
    )
    add_flag(
        parser,
        "--sim-fail-batches",
        default=False,
        type=parse_bool,
        help="model sim: every batch raises (failover and liveness drills)",
    )
    add_flag(
        parser,
        "--max-batch-size",
        default=16,
        type=int,
        help=f"most sessions generated together in one batch (1 = one at a time, at "
        f"most {LARGEST_BATCH_SIZE})",
    )
    add_flag(
        parser,
        "--capacity-sessions",
        default=0,
        type=int,
        help="sessions accepted before RESOURCE_EXHAUSTED (0 = measured at start-up)",
    )
    add_flag(
        parser,
        "--target-utilization",
        default=DEFAULT_TARGET_UTILIZATION,
        type=float,
        help="fraction of real time the measured capacity may use",
    )
    add_flag(
        parser,
        "--warm-chunk-frames",
        default=(),
        type=parse_chunk_frames_list,
        help="comma-separated chunk lengths (frames, 5-50) to compile and time at start-up "
        "besides 50; any other length compiles when a session first asks for it, and the "
        "batches waiting meanwhile are late",
    )
    add_flag(
        parser,
        "--generator-id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="name reported in load reports and logs",
    )
    add_flag(
        parser,
        "--stall-timeout-s",
        default=DEFAULT_STALL_TIMEOUT_S,
        type=float,
        help="seconds without a finished batch, while work is due, after which health "
        "answers NOT_SERVING (so a liveness probe restarts the process)",
    )
    add_flag(
        parser,
        "--drain-grace-s",
        default=30.0,
        type=float,
        help="on SIGTERM, seconds to wait for sessions to move elsewhere",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.max_batch_size <= LARGEST_BATCH_SIZE:
        parser.error(
            f"--max-batch-size must be in [1, {LARGEST_BATCH_SIZE}], got {args.max_batch_size}"
        )
    if args.sim_batch_seconds < 0 or args.sim_session_seconds < 0:
        parser.error("--sim-batch-seconds and --sim-session-seconds must be >= 0")
    if args.stall_timeout_s <= 0:
        parser.error("--stall-timeout-s must be > 0")
    if args.random_weights and args.checkpoint is not None:
        parser.error("--random-weights and --checkpoint exclude each other")
    return args


async def serve(args: argparse.Namespace) -> None:
    server_credentials = server_credentials_from_flags(args)  # fails before the model loads
    store = AssetStore(args.assets_dir, allow_download=args.allow_download)
    engine = create_engine(
        args.model,
        store,
        max_batch_size=args.max_batch_size,
        checkpoint=args.checkpoint,
        dtype=args.dtype,
        random_weights=args.random_weights,
        sim_cost=SimCost(args.sim_batch_seconds, args.sim_session_seconds),
        sim_fail_batches=args.sim_fail_batches,
    )
    scheduler = Scheduler(
        args.max_batch_size,
        target_utilization=args.target_utilization,
        fixed_capacity=args.capacity_sessions,
    )
    runner = BatchRunner(
        engine,
        scheduler,
        stall_timeout_s=args.stall_timeout_s,
        warm_chunk_frames=args.warm_chunk_frames,
    )
    await asyncio.to_thread(runner.warm_up)
    runner.start()
    servicer = GeneratorServicer(
        scheduler, runner, model_name=args.model, generator_id=args.generator_id
    )
    service = Service.from_flags(
        "generator",
        args,
        generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name,
        server_credentials=server_credentials,
    )
    generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, service.server)
    try:
        await service.run(on_drain=lambda: servicer.drain(args.drain_grace_s), ready=runner.healthy)
    finally:
        runner.stop()


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "generator", argv, parse_args, serve, (AssetMissingError, SecurityConfigError)
    )


if __name__ == "__main__":
    sys.exit(main())
