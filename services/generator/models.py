"""The models a generator can serve, by name, and how each is built."""

from __future__ import annotations

from pathlib import Path

from services.common.assets import AssetStore
from services.common.models import MODEL_NAMES
from services.generator.engine import ChunkEngine


def create_engine(model: str, store: AssetStore, *, checkpoint: Path | None = None,
                  dtype: str = "float32", random_weights: bool = False) -> ChunkEngine:
    """Build the engine for ``model``; raises AssetMissingError when its files are absent.
    ``random_weights``: see `MagentaRTEngine.create` (no effect on `mock` and `tiny`)."""
    if model == "mock":
        from services.generator.mock_engine import MockEngine
        return MockEngine()
    if model in ("tiny", "base", "large"):
        from services.generator.magenta_rt import MagentaRTEngine
        return MagentaRTEngine.create(model, store, checkpoint=checkpoint, dtype=dtype,
                                      random_weights=random_weights)
    raise ValueError(f"unknown model '{model}'; choose one of {', '.join(MODEL_NAMES)}")
