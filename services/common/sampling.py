"""A session's sampling settings: one name for them between the services.

On the wire they are `GenerationConfig` (the public API, where unset fields keep their value)
and `Sampling` (gateway to generator, always complete).
"""

from __future__ import annotations

import dataclasses

from services.common import model_facts as facts


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    temperature: float = facts.DEFAULT_TEMPERATURE  # 0 = greedy
    top_k: int = facts.DEFAULT_TOP_K  # 0 = no cut
    guidance: float = facts.DEFAULT_GUIDANCE  # classifier-free guidance weight
    seed: int = 0
