"""A token sampler for engine tests: the real sampler's batching around a stand-in for the
depthformer (fast to compile, codes that depend only on each session's input and seed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from services.common import model_facts as facts
from services.generator.model.configs import CONFIGS
from services.generator.model.depthformer import init_params
from services.generator.model.sampling import TokenSampler


@functools.cache
def _tiny_params():
    return init_params(CONFIGS["tiny"], seed=0)


def _stand_in_chunk(params, rows, guide_rows, *_settings_and_seeds, frames=facts.CHUNK_FRAMES):
    """Stands in for the depthformer's sampling program: codes that depend only on each
    session's encoder tokens and seed (as real per-row sampling does), a short chunk being
    the start of the long one (as in real sampling)."""
    sessions, seeds = len(guide_rows), _settings_and_seeds[-1]
    weights = jnp.arange(1, rows.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
    checksums = jnp.sum(rows[:sessions].astype(jnp.uint32) * weights, axis=1)

    def codes(seed, checksum):
        key = jax.random.fold_in(jax.random.key(seed), checksum)
        return jax.random.randint(key, (facts.CHUNK_FRAMES, facts.DECODER_RVQ_LEVELS), 0, 1024)

    return jax.vmap(codes)(seeds, checksums)[:, :frames].astype(jnp.int32)


class RecordingSampler(TokenSampler):
    """The real sampler's batching with `_stand_in_chunk` for its program; records every
    batch it is given."""

    def __init__(self):
        super().__init__(CONFIGS["tiny"], _tiny_params(), batch_buckets=(1, 2, 4))
        self.sample_chunk = _stand_in_chunk
        self.calls = []

    def batch(self, encoder_tokens, temperature, top_k, guidance, seeds):
        self.calls.append(
            dict(
                encoder_tokens=encoder_tokens,
                temperature=temperature,
                top_k=top_k,
                guidance=guidance,
                seeds=seeds,
            )
        )
        return super().batch(encoder_tokens, temperature, top_k, guidance, seeds)

    def stand_in_codes(self, frames=facts.CHUNK_FRAMES, **call):
        """The codes `_stand_in_chunk` gives the sessions of a recorded call."""
        batch = super().batch(**call)
        codes = _stand_in_chunk(None, *batch.arguments, frames=frames)
        return np.asarray(codes)[: batch.sessions]
