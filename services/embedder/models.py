"""The style models an embedder can serve, by name, and how each is built."""

from __future__ import annotations

from services.common.assets import AssetStore
from services.common.models import STYLE_MODELS
from services.embedder.style_model import StyleModel


def create_style_model(model: str, store: AssetStore) -> StyleModel:
    """Build the style model; raises AssetMissingError when its files are absent."""
    if model == "mock":
        from services.embedder.mock_model import MockStyleModel

        return MockStyleModel()
    if model in ("tiny", "musiccoca"):
        from services.embedder.musiccoca import MusicCoCaModel

        return MusicCoCaModel.create(model, store)
    raise ValueError(f"unknown style model '{model}'; choose one of {', '.join(STYLE_MODELS)}")
