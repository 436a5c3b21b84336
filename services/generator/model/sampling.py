"""Batched chunk sampling: the whole decode of a batch of sessions (16 steps per frame, 800
for a 50-frame chunk) as one compiled program, with per-row temperature, top-k, guidance and
seed. Each chunk length a batch runs at is a program of its own.

Classifier-free guidance runs two rows per session (the real encoder input and its copy with
the style MASKed); each step mixes their logits as (1 + w) * cond - w * uncond and both rows
take the token sampled from the mix. Every step computes only the current level's 1 024
logits, which is exact because sampling is restricted to that level's codes. Batches are
padded up to a bucket size so that a handful of compiled programs serve any number of
sessions; nothing a row computes depends on the other rows, so a session gets the same logits
whatever batch it is in, up to the float32 rounding of matrix products of other shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from services.common import model_facts as facts
from services.generator.batch_buckets import bucket_for
from services.generator.model import tokens as token_layout
from services.generator.model.configs import DepthformerConfig
from services.generator.model.depthformer import Depthformer, EncoderPasses, Params, decode_chunk

_BLOCK = 32  # inverse-CDF sampling goes through 32 blocks of 32 codes
_VALUE_SPLIT_ROUNDS = 16  # top_k_threshold's rounds that split at the value midpoint


def _order_keys(values: jax.Array) -> jax.Array:
    """int32 keys that sort like the float32 values (the bits, negatives reflected)."""
    bits = lax.bitcast_convert_type(values, jnp.int32)
    return jnp.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _key_values(keys: jax.Array) -> jax.Array:
    """The inverse of `_order_keys`."""
    return lax.bitcast_convert_type(jnp.where(keys >= 0, keys, keys ^ 0x7FFFFFFF), jnp.float32)


def top_k_threshold(logits: jax.Array, k: jax.Array) -> jax.Array:
    """float32[rows]: a threshold t per row such that `logits >= t` keeps exactly the k largest
    logits (and any ties of the k-th), with k per row in [1, width].

    Exact, by narrowing [min, max] with count-and-compare passes (much cheaper on CPU than
    sorting). The first rounds split the interval at the value midpoint, which isolates the
    k-th value of well-spread logits in a dozen rounds; a row stops as soon as a split counts
    exactly k. Later rounds split the integer keys in half, so no row takes more than
    `_VALUE_SPLIT_ROUNDS` + 32 rounds whatever its values.
    """
    keys = _order_keys(logits)

    def unfinished(bounds):
        low, high, _ = bounds
        return jnp.any(low < high)

    def narrow(bounds):  # invariant: at least k keys >= low; the answer lies in [low, high]
        low, high, round_index = bounds
        key_middle = (low | high) - ((low ^ high) >> 1)  # ceil((low + high) / 2), no overflow
        value_middle = _order_keys((_key_values(low) + _key_values(high)) * 0.5)
        middle = jnp.clip(
            jnp.where(round_index < _VALUE_SPLIT_ROUNDS, value_middle, key_middle), low + 1, high
        )
        count = jnp.sum((keys >= middle[:, None]).astype(jnp.int32), axis=-1)
        # count > k: the answer is in [middle, high]; count == k: middle is a threshold that
        # keeps exactly the top k, done; count < k: the answer is below middle.
        new_low = jnp.where(count >= k, middle, low)
        new_high = jnp.select([count > k, count == k], [high, middle], middle - 1)
        running = low < high
        return (
            jnp.where(running, new_low, low),
            jnp.where(running, new_high, high),
            round_index + 1,
        )

    low, _, _ = lax.while_loop(
        unfinished, narrow, (jnp.min(keys, axis=-1), jnp.max(keys, axis=-1), 0)
    )
    return _key_values(low)


def top_k_threshold_by_sorting(logits: jax.Array, k: jax.Array) -> jax.Array:
    """float32[rows]: the k-th largest logit of each row, so `logits >= t` keeps the same
    codes as `top_k_threshold`. One sort (`lax.top_k` over the whole row) and no
    data-dependent loop: on GPU and TPU a `while_loop` inside the 800-step decode costs a
    round trip to the host per iteration, a sort does not."""
    ordered, _ = lax.top_k(logits, logits.shape[-1])
    return jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)[:, 0]


TopKThreshold = Callable[[jax.Array, jax.Array], jax.Array]


def top_k_threshold_for_backend(backend: str) -> TopKThreshold:
    """The exact threshold search on CPU (count passes are cheaper there than sorting), a
    sort on accelerators."""
    return top_k_threshold if backend == "cpu" else top_k_threshold_by_sorting


def sample_codes(
    logits: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    uniform: jax.Array,
    threshold: TopKThreshold = top_k_threshold,
) -> jax.Array:
    """int32[rows]: one code per row from float32[rows, 1024] logits.

    temperature 0 = greedy; top_k 0 (or >= 1024) = no cut; `uniform` in [0, 1) drives the
    inverse-CDF draw (one random number per row and step is all the randomness needed).
    `threshold` finds each row's top-k cut (either function keeps the same codes).
    """
    rows, width = logits.shape
    greedy = _first_index(logits == jnp.max(logits, axis=-1, keepdims=True))
    k = jnp.where((top_k <= 0) | (top_k >= width), width, top_k)
    keep = logits >= threshold(logits, k)[:, None]
    scale = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    weights = jnp.where(keep, jnp.exp((logits - jnp.max(logits, -1, keepdims=True)) / scale), 0.0)
    # Two-level inverse CDF: pick a block of 32 codes, then a code in it.
    blocks = weights.reshape(rows, width // _BLOCK, _BLOCK)
    block_mass = jnp.sum(blocks, axis=-1)
    block_end = jnp.cumsum(block_mass, axis=-1)
    target = uniform * block_end[:, -1]
    block = _first_above(block_end, target, block_mass)
    in_block = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    residual = target - (
        jnp.take_along_axis(block_end, block[:, None], axis=1)[:, 0]
        - jnp.take_along_axis(block_mass, block[:, None], axis=1)[:, 0]
    )
    code = block * _BLOCK + _first_above(jnp.cumsum(in_block, axis=-1), residual, in_block)
    return jnp.where(temperature > 0, code, greedy).astype(jnp.int32)


def _first_above(running_total: jax.Array, target: jax.Array, mass: jax.Array) -> jax.Array:
    """Index of the first entry whose running total exceeds `target`; rounding can push the
    target past the end, so the result is capped at the last entry with mass."""
    index = jnp.sum((running_total <= target[:, None]).astype(jnp.int32), axis=-1)
    positions = jnp.arange(mass.shape[-1], dtype=jnp.int32)
    last_with_mass = jnp.max(jnp.where(mass > 0, positions, 0), axis=-1)
    return jnp.minimum(index, last_with_mass)


def _first_index(flags: jax.Array) -> jax.Array:
    """Index of each row's first True (argmax's variadic reduce is slow on CPU)."""
    positions = jnp.arange(flags.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(flags, positions, flags.shape[-1]), axis=-1)


def _sample_chunk(
    model: Depthformer,
    encoder_passes: EncoderPasses,
    threshold: TopKThreshold,
    params: Params,
    encoder_tokens: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    guidance: jax.Array,
    seeds: jax.Array,
    frames: int = facts.CHUNK_FRAMES,
) -> jax.Array:
    """The compiled program: int32[B, frames, 16] codes for B sessions; encoder_tokens holds
    the B conditional rows followed by their B unconditional partners.

    The uniforms are always drawn for a full 50-frame chunk and the first ``frames`` used, so
    frame f's draw does not depend on the chunk length."""
    sessions = temperature.shape[0]
    uniforms = jax.vmap(
        lambda seed: jax.random.uniform(
            jax.random.key(seed), (facts.CHUNK_FRAMES, facts.DECODER_RVQ_LEVELS)
        )
    )(seeds)
    weight = guidance[:, None]

    def choose(logits, frame, level, state):
        mixed = (1 + weight) * logits[:sessions] - weight * logits[sessions:]
        codes = sample_codes(mixed, temperature, top_k, uniforms[:, frame, level], threshold)
        return jnp.concatenate([codes, codes]), state, ()

    codes, _, _ = decode_chunk(
        model, params, encoder_tokens, choose, encoder_passes=encoder_passes, frames=frames
    )
    return codes[:sessions]


def prepare_params(config: DepthformerConfig, params: Params) -> Params:
    """Device copies of the parameters, stored in the activation dtype (as they are used)
    except the float32 output projection."""
    dtype = jnp.dtype(config.dtype)

    def stored(name: str, subtree: Params) -> Params:
        stored_dtype = jnp.float32 if name == "logits_dense" else dtype
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, stored_dtype), subtree)

    return {name: stored(name, subtree) for name, subtree in params.items()}


class TokenSampler:
    """Samples a chunk of codes for a batch of sessions with the depthformer."""

    def __init__(
        self,
        config: DepthformerConfig,
        params: Params,
        batch_buckets: Sequence[int],
        backend: str | None = None,
    ):
        """`batch_buckets`: the padded batch sizes (see `batch_buckets.batch_buckets`).
        `backend` chooses the speed-only variants (encoder passes, top-k cut); default: JAX's
        default backend."""
        if not batch_buckets or any(b < 1 for b in batch_buckets):
            raise ValueError(f"batch_buckets must be positive sizes, got {batch_buckets}")
        self.config = config
        self.batch_buckets = tuple(sorted(set(batch_buckets)))
        self._params = prepare_params(config, params)
        backend = backend or jax.default_backend()
        self._program = jax.jit(
            functools.partial(
                _sample_chunk,
                Depthformer(config),
                EncoderPasses.for_backend(backend),
                top_k_threshold_for_backend(backend),
            ),
            static_argnames="frames",  # one program per (batch bucket, chunk length) used
        )

    @property
    def max_batch_size(self) -> int:
        return self.batch_buckets[-1]

    def bucket_for(self, batch_size: int) -> int:
        """The padded batch size a batch of `batch_size` sessions runs at."""
        return bucket_for(batch_size, self.batch_buckets)

    def sample(
        self,
        encoder_tokens: np.ndarray,
        temperature: np.ndarray,
        top_k: np.ndarray,
        guidance: np.ndarray,
        seeds: np.ndarray,
        uncond_tokens: np.ndarray | None = None,
        frames: int = facts.CHUNK_FRAMES,
    ) -> np.ndarray:
        """int32[B, frames, 16] raw codes in [0, 1024) for B sessions: the next ``frames``
        frames (1 to 50) after their contexts. A chunk length is compiled when first used.

        encoder_tokens: int32[B, 1006], the conditional rows. temperature: float32[B],
        0 = greedy. top_k: int32[B], 0 = no cut. guidance: float32[B]. seeds: integers[B];
        row b's random stream is derived from the low 32 bits of seeds[b] alone.
        uncond_tokens: the rows guidance steers away from, [B, 1006]; by default each
        conditional row with its style MASKed.
        """
        encoder_tokens = np.asarray(encoder_tokens, np.int32)
        sessions = len(encoder_tokens)
        if encoder_tokens.shape != (sessions, facts.ENCODER_INPUT_TOKENS) or sessions == 0:
            raise ValueError(
                f"encoder_tokens must be [B >= 1, {facts.ENCODER_INPUT_TOKENS}], "
                f"got {encoder_tokens.shape}"
            )
        if uncond_tokens is None:
            uncond_tokens = token_layout.cfg_uncond_copy(encoder_tokens)
        uncond_tokens = np.asarray(uncond_tokens, np.int32)
        if uncond_tokens.shape != encoder_tokens.shape:
            raise ValueError(
                f"uncond_tokens must be {encoder_tokens.shape}, got {uncond_tokens.shape}"
            )
        per_row = [
            np.asarray(temperature, np.float32),
            np.asarray(top_k, np.int32),
            np.asarray(guidance, np.float32),
            (np.asarray(seeds).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32),
        ]
        if any(setting.shape != (sessions,) for setting in per_row):
            raise ValueError(f"temperature, top_k, guidance and seeds must each be [{sessions}]")
        if not 1 <= frames <= facts.CHUNK_FRAMES:
            raise ValueError(f"frames must be in [1, {facts.CHUNK_FRAMES}], got {frames}")
        padding = self.bucket_for(sessions) - sessions
        # Padded rows: MASK inputs, greedy; their codes are dropped.
        rows = np.pad(
            np.concatenate([encoder_tokens, uncond_tokens]).reshape(2, sessions, -1),
            ((0, 0), (0, padding), (0, 0)),
            constant_values=facts.MASK_TOKEN,
        )
        rows = rows.reshape(-1, facts.ENCODER_INPUT_TOKENS)
        per_row = [np.pad(setting, (0, padding)) for setting in per_row]
        codes = self._program(self._params, rows, *per_row, frames=frames)
        return np.asarray(codes)[:sessions]
