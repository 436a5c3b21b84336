"""The accelerator cost models the load benchmark measures with the `sim` engine.

A batched chunk costs ``a + b * batch_size`` seconds. No scheduler keeps more than
N* = floor((2 s - a) / b) sessions in real time (all of them in one batch per chunk period),
so what the cluster holds is reported against N*.
"""

from __future__ import annotations

from services.generator.sim_engine import SimCost

COST_MODELS: dict[str, SimCost] = {
    # A GPU or TPU serving the large model: launches and weight reads dominate, each session
    # adds a little.
    "accelerator-like": SimCost(batch_seconds=0.25, session_seconds=0.0125),
    # A slower launch path: the fixed part is most of a period.
    "launch-bound": SimCost(batch_seconds=0.6, session_seconds=0.02),
    # Nearly all the cost is per session (like a CPU): batching gains little.
    "per-session-bound": SimCost(batch_seconds=0.05, session_seconds=0.05),
}


def parse_cost_models(names: str) -> dict[str, SimCost]:
    """The cost models named in a comma-separated list; ValueError for an unknown name."""
    chosen = {}
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in COST_MODELS:
            raise ValueError(f"unknown cost model {name!r}; choose from {', '.join(COST_MODELS)}")
        chosen[name] = COST_MODELS[name]
    if not chosen:
        raise ValueError("name at least one cost model")
    return chosen
