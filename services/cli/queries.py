"""``mrt embed`` and ``mrt models``: the gateway's single-answer calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from services.cli.connection import add_connection_options, call_metadata, open_channel
from services.cli.options import UsageError, add_env_option
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser(
        "embed",
        help="print the 768-d style embedding of a text or an audio file",
        description="Call EmbedStyle and print the embedding as a JSON list (or save it as .npy).",
    )
    _add_call_options(embed)
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to embed")
    source.add_argument("--audio", type=Path, help="wav / mp3 / ogg file to embed")
    embed.add_argument("--out", type=Path, help="save as a float32 .npy file instead of printing")
    embed.set_defaults(run=run_embed)

    models = subparsers.add_parser(
        "models",
        help="list the models the cluster knows",
        description="Call ListModels and print a table.",
    )
    _add_call_options(models)
    models.set_defaults(run=run_models)


def _add_call_options(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    add_env_option(parser, "--timeout-s", type=float, default=60.0, help="deadline of the call")


def run_embed(args: argparse.Namespace) -> int:
    if args.audio is not None:
        try:
            request = music_pb2.EmbedStyleRequest(audio=args.audio.read_bytes())
        except OSError as err:
            raise UsageError(f"cannot read {args.audio}: {err.strerror or err}") from err
    else:
        request = music_pb2.EmbedStyleRequest(text=args.text)
    with open_channel(args) as channel:
        reply = music_pb2_grpc.MusicGenerationStub(channel).EmbedStyle(
            request, timeout=args.timeout_s, metadata=call_metadata(args.api_key)
        )
    embedding = np.asarray(reply.embedding, dtype=np.float32)
    if args.out is not None:
        np.save(args.out, embedding)
        print(f"wrote {embedding.size} floats to {args.out}", file=sys.stderr)
    else:
        print(json.dumps(embedding.tolist()))
    return 0


def run_models(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        reply = music_pb2_grpc.MusicGenerationStub(channel).ListModels(
            music_pb2.ListModelsRequest(),
            timeout=args.timeout_s,
            metadata=call_metadata(args.api_key),
        )
    print(format_models_table(reply))
    return 0


def format_models_table(reply: music_pb2.ListModelsResponse) -> str:
    """A plain-text table of the models; the default model is marked with '*'."""
    header = ("MODEL", "LOADED", "AVAILABLE", "SAMPLE RATE", "CHANNELS", "CHUNK", "DESCRIPTION")
    rows = [header] + [
        (
            model.name + (" *" if model.name == reply.default_model else ""),
            "yes" if model.loaded else "no",
            "yes" if model.available else "no",
            f"{model.sample_rate} Hz",
            str(model.channels),
            f"{model.chunk_seconds:g} s",
            model.description,
        )
        for model in reply.models
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
        for row in rows
    ]
    if reply.default_model:
        lines.append(f"* default model: {reply.default_model}")
    return "\n".join(line.rstrip() for line in lines)
