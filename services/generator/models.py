"""The models a generator can serve, by name, and how each is built."""

from __future__ import annotations

from pathlib import Path

from services.common.assets import AssetStore
from services.common.models import MODEL_NAMES
from services.generator.engine import ChunkEngine
from services.generator.sim_engine import SimCost


def create_engine(
    model: str,
    store: AssetStore,
    *,
    max_batch_size: int,
    checkpoint: Path | None = None,
    dtype: str = "float32",
    random_weights: bool = False,
    sim_cost: SimCost | None = None,
    sim_fail_batches: bool = False,
) -> ChunkEngine:
    """Build the engine for ``model``, compiled for batches of up to ``max_batch_size``;
    raises AssetMissingError when its files are absent. ``random_weights``: see
    `MagentaRTEngine.create` (no effect on `mock`, `sim` and `tiny`). ``sim_cost`` and
    ``sim_fail_batches`` configure `sim` only."""
    if model == "mock":
        from services.generator.mock_engine import MockEngine

        return MockEngine()
    if model == "sim":
        from services.generator.sim_engine import SimEngine

        return SimEngine(sim_cost or SimCost(), fail_batches=sim_fail_batches)
    if model in ("tiny", "base", "large"):
        from services.generator.magenta_rt import MagentaRTEngine

        return MagentaRTEngine.create(
            model,
            store,
            max_batch_size=max_batch_size,
            checkpoint=checkpoint,
            dtype=dtype,
            random_weights=random_weights,
        )
    raise ValueError(f"unknown model '{model}'; choose one of {', '.join(MODEL_NAMES)}")
