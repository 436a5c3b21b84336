"""``mrt assets download``: fetch a model's upstream files into the assets directory.

Needs network access to the Hugging Face Hub, so it is a separate, explicit step: the
services themselves never download.
"""

from __future__ import annotations

import argparse
import sys

from services.cli.options import CommandFailed, add_env_option
from services.common.assets import AssetStore
from services.common.models import MAGENTA_RT_MODELS


def register(subparsers: argparse._SubParsersAction) -> None:
    assets = subparsers.add_parser(
        "assets", help="manage model files", description="Manage the model files the services load."
    )
    actions = assets.add_subparsers(dest="assets_action", required=True, metavar="ACTION")
    download = actions.add_parser(
        "download",
        help="download a model's files from the Hugging Face Hub",
        description="Download the upstream files of a model (and of the MusicCoCa style "
        "model) into the assets directory. The tiny model is built locally.",
    )
    download.add_argument("--model", required=True, choices=MAGENTA_RT_MODELS)
    add_env_option(
        download, "--assets-dir", help="where to put the files (AssetStore default if unset)"
    )
    download.set_defaults(run=run_download)


def asset_paths_for(model: str) -> list[str]:
    """The upstream paths `model` needs (the generator's table, MusicCoCa's files included)."""
    try:
        from services.generator.magenta_rt import MODEL_ASSET_PATHS  # lazy: heavy imports
    except ImportError as err:
        raise CommandFailed(f"cannot read the generator's asset table: {err}") from err
    if model not in MODEL_ASSET_PATHS:
        raise CommandFailed(
            f"the generator knows no upstream files for model '{model}' "
            f"(it knows {sorted(MODEL_ASSET_PATHS)})"
        )
    return list(MODEL_ASSET_PATHS[model])


def build_tiny_assets(store: AssetStore) -> None:
    """The tiny model's files are made locally (codec, style quantizer, MusicCoCa)."""
    from services.embedder.tiny_musiccoca import ensure_tiny_musiccoca
    from services.generator.model.tiny_assets import ensure_tiny_assets

    ensure_tiny_assets(store)
    ensure_tiny_musiccoca(store.tiny_root())


def run_download(args: argparse.Namespace) -> int:
    if args.model == "tiny":
        store = AssetStore(args.assets_dir)
        build_tiny_assets(store)
        print(
            f"the tiny model needs no download; its files are built in {store.tiny_root()}",
            file=sys.stderr,
        )
        return 0
    store = AssetStore(args.assets_dir, allow_download=True)
    paths = asset_paths_for(args.model)
    print(
        f"downloading {len(paths)} paths for model '{args.model}' into {store.root}",
        file=sys.stderr,
    )
    try:
        local_paths = store.download(paths)
    except Exception as err:  # the Hub client raises many unrelated types (HTTP, OS, offline)
        raise CommandFailed(f"download failed: {type(err).__name__}: {err}") from err
    for path in local_paths:
        print(path)
    return 0
