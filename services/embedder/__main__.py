"""python -m services.embedder: MusicCoCa style embeddings from text and audio."""

from __future__ import annotations

import argparse
import sys

from services.common.assets import AssetMissingError, AssetStore
from services.common.config import add_flag, add_service_flags, parse_bool
from services.common.models import STYLE_MODELS
from services.common.proto.mrt.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.security import (
    SecurityConfigError,
    add_server_tls_flags,
    server_credentials_from_flags,
)
from services.common.server import Service, service_main
from services.embedder.audio_input import AudioLimits
from services.embedder.models import create_style_model
from services.embedder.servicer import EmbedderLimits, EmbedderServicer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.embedder", description=__doc__)
    add_service_flags(parser, port=50052, metrics_port=9092)
    add_server_tls_flags(parser)
    add_flag(parser, "--model", default="tiny", choices=STYLE_MODELS, help="style model to serve")
    add_flag(parser, "--assets-dir", default=None, help="model assets directory")
    add_flag(
        parser,
        "--allow-download",
        default=False,
        type=parse_bool,
        help="fetch missing upstream assets from the Hugging Face Hub",
    )
    add_flag(
        parser, "--max-embed-batch-size", default=32, type=int, help="most requests per model call"
    )
    add_flag(
        parser,
        "--batch-window-ms",
        default=5.0,
        type=float,
        help="how long a request waits for others to share its model call",
    )
    add_flag(
        parser, "--cache-entries", default=4096, type=int, help="embeddings kept in the LRU cache"
    )
    add_flag(parser, "--max-text-chars", default=512, type=int, help="longest text prompt accepted")
    add_flag(
        parser,
        "--max-audio-bytes",
        default=AudioLimits().max_bytes,
        type=int,
        help="largest audio prompt file accepted",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    server_credentials = server_credentials_from_flags(args)  # fails before the model loads
    model = create_style_model(
        args.model, AssetStore(args.assets_dir, allow_download=args.allow_download)
    )
    limits = EmbedderLimits(
        max_text_chars=args.max_text_chars, audio=AudioLimits(max_bytes=args.max_audio_bytes)
    )
    servicer = EmbedderServicer(
        model,
        limits=limits,
        cache_entries=args.cache_entries,
        max_batch_size=args.max_embed_batch_size,
        batch_window_s=args.batch_window_ms / 1000,
    )
    service = Service.from_flags(
        "embedder",
        args,
        embedder_pb2.DESCRIPTOR.services_by_name["StyleEmbedder"].full_name,
        server_credentials=server_credentials,
    )
    embedder_pb2_grpc.add_StyleEmbedderServicer_to_server(servicer, service.server)
    await service.run()


def main(argv: list[str] | None = None) -> int:
    return service_main(
        "embedder", argv, parse_args, serve, (AssetMissingError, SecurityConfigError)
    )


if __name__ == "__main__":
    sys.exit(main())
