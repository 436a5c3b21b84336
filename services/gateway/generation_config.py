"""Generation settings: a session's resolved sampling knobs and how client updates apply."""

from __future__ import annotations

import dataclasses
import math

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2
from services.common.sampling import SamplingSettings


def merge_config(current: SamplingSettings, update: music_pb2.GenerationConfig) -> SamplingSettings:
    """Apply the fields set in ``update``; raises ValueError naming the first bad field."""
    merged = current
    if update.HasField("temperature"):
        low, high = facts.TEMPERATURE_RANGE
        if not (math.isfinite(update.temperature) and low <= update.temperature <= high):
            raise ValueError(f"temperature must be in [{low}, {high}], got {update.temperature}")
        merged = dataclasses.replace(merged, temperature=update.temperature)
    if update.HasField("top_k"):
        low, high = facts.TOP_K_RANGE
        if not low <= update.top_k <= high:
            raise ValueError(f"top_k must be in [{low}, {high}], got {update.top_k}")
        merged = dataclasses.replace(merged, top_k=update.top_k)
    if update.HasField("guidance"):
        low, high = facts.GUIDANCE_RANGE
        if not (math.isfinite(update.guidance) and low <= update.guidance <= high):
            raise ValueError(f"guidance must be in [{low}, {high}], got {update.guidance}")
        merged = dataclasses.replace(merged, guidance=update.guidance)
    if update.HasField("seed"):
        merged = dataclasses.replace(merged, seed=update.seed)
    return merged
