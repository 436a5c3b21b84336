"""Sizes of the depthformer: upstream's `large` and `base`, and our `tiny` (docs/model.md).

`tiny` is the real architecture at the size of the upstream reference fixture, used by tests
and by the offline default (random weights from a fixed seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from services.common import model_facts as facts

ActivationDtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class DepthformerConfig:
    """Hyper-parameters of one depthformer size. Parameters are always stored as float32;
    `dtype` is the dtype of activations (and of the weights as they are used); logits are
    float32 in every case."""

    d_model: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    encoder_layers: int
    temporal_layers: int
    depth_layers: int
    vocab_rows: int = facts.VOCAB_ROWS
    temporal_relpos_buckets: int = 128
    temporal_relpos_max_distance: int = 128
    depth_relpos_buckets: int = facts.DECODER_RVQ_LEVELS
    depth_relpos_max_distance: int = facts.DECODER_RVQ_LEVELS
    dtype: ActivationDtype = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    @property
    def attention_dim(self) -> int:
        """Width of the joined query / key / value projections (heads x head_dim)."""
        return self.num_heads * self.head_dim

    def with_dtype(self, dtype: ActivationDtype) -> DepthformerConfig:
        return dataclasses.replace(self, dtype=dtype)

    @classmethod
    def from_size_macros(
        cls, dims: Mapping[str, int], dtype: ActivationDtype = "float32"
    ) -> DepthformerConfig:
        """The config of upstream's gin size macros (EMBED_DIM, NUM_HEADS, HEAD_DIM, MLP_DIM,
        NUM_ENCODER_LAYERS, NUM_TEMPORAL_LAYERS, NUM_DEPTH_LAYERS), e.g. of a checkpoint
        trained at another size."""
        return cls(
            d_model=dims["EMBED_DIM"],
            num_heads=dims["NUM_HEADS"],
            head_dim=dims["HEAD_DIM"],
            mlp_dim=dims["MLP_DIM"],
            encoder_layers=dims["NUM_ENCODER_LAYERS"],
            temporal_layers=dims["NUM_TEMPORAL_LAYERS"],
            depth_layers=dims["NUM_DEPTH_LAYERS"],
            dtype=dtype,
        )


def activation_dtype(name: str) -> ActivationDtype:
    """`name` as an activation dtype; ValueError for any other."""
    if name == "float32":
        return "float32"
    if name == "bfloat16":
        return "bfloat16"
    raise ValueError(f"dtype must be float32 or bfloat16, got {name!r}")


CONFIGS: dict[str, DepthformerConfig] = {
    # Upstream's released sizes run with bfloat16 activations.
    "large": DepthformerConfig(
        d_model=1024,
        num_heads=16,
        head_dim=64,
        mlp_dim=2816,
        encoder_layers=24,
        temporal_layers=20,
        depth_layers=4,
        dtype="bfloat16",
    ),
    "base": DepthformerConfig(
        d_model=768,
        num_heads=12,
        head_dim=64,
        mlp_dim=2048,
        encoder_layers=12,
        temporal_layers=20,
        depth_layers=4,
        dtype="bfloat16",
    ),
    # The size of the upstream reference fixture (tests/fixtures/upstream_v1/config_tiny.json).
    "tiny": DepthformerConfig(
        d_model=32,
        num_heads=2,
        head_dim=16,
        mlp_dim=64,
        encoder_layers=2,
        temporal_layers=2,
        depth_layers=2,
        dtype="float32",
    ),
}
