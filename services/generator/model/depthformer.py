"""The depthformer: Magenta RT's T5 v1.1-style encoder-decoder with a split decoder.

Architecture facts this module reproduces from the upstream model (t5x / flaxformer T5 parts
plus the depthformer decoder), checked against logits of the upstream model in the tests
(`docs/model.md` has the whole picture):

- RMS layer norm (epsilon 1e-6, computed in float32), gated-GELU MLP (tanh-approximate GELU
  branch times a linear branch), no biases anywhere. Attention logits are not divided by
  sqrt(head_dim): T5 folds that scale into the query weights.
- One token embedding table shared by encoder and decoder; logits come from a separate
  `logits_dense` kernel and are float32.
- Fixed sinusoidal position embeddings are added to the token embeddings of the encoder only.
  The decoder has no absolute position embeddings: its two stacks know positions only through
  their relative position biases. The decoder input is the target shifted right by one with
  token 0 first.
- Dtypes: with bfloat16 activations the encoder's residual stream is bfloat16, but the
  decoder's is float32 (upstream's decoder keeps float32 as its own dtype, so it casts the
  bfloat16-rounded token embeddings up to float32); norms, attention and MLPs compute in the
  activation dtype in both, attention logits and softmax included; logits are float32.
- Encoder: bidirectional self-attention, no relative bias, a final norm.
- Temporal stack (once per frame): the input of frame f is the mean of the 16 decoder-input
  embeddings at positions 16f-15 .. 16f, i.e. frame f-1's tokens; frame 0's input is the
  embedding of the start token 0. Causal self-attention over frames with a one-directional
  relative bias (128 buckets), cross-attention to the encoder output. No norm at its output.
- Depth stack (16 steps per frame, started afresh every frame): step 0's input is the temporal
  output of the frame, step k's the decoder-input embedding at position 16f + k (the token of
  level k-1). Causal self-attention with its own relative bias (16 buckets); no
  cross-attention. One final norm (`decoder_norm`) before the logits.
- Our encoder input never holds PAD (0), so upstream's padding masks are all ones; they are
  left out.

`decode_chunk` is the incremental (KV-cached) form of the same computation, one frame of the
temporal stack then 16 steps of the depth stack, in nested `lax.scan`s that a caller jits.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from services.common import model_facts as facts
from services.generator.model.configs import DepthformerConfig

Array = jax.Array
Params = Any  # the nested dict of parameter arrays
KeysValues = tuple[Array, Array]  # keys, values: [rows, heads, length, head_dim]

LEVELS = facts.DECODER_RVQ_LEVELS
_NORM_EPSILON = 1e-6
_MASKED_LOGIT = -1e10  # upstream's additive attention mask
# Parameter values come from a checkpoint or from `init_params`; the modules only declare
# names and shapes.
_SHAPE_ONLY = nn.initializers.zeros


@functools.cache
def sinusoid_position_table(num_positions: int, features: int) -> np.ndarray:
    """float32[num_positions, features]: sin in the first half, cos in the second, with rates
    from 1 down to 1/10 000 spaced geometrically (T5 FixedEmbed)."""
    half = features // 2
    rates = np.exp(np.arange(half) * (-np.log(10_000.0) / (half - 1)))
    angles = np.arange(num_positions)[:, None] * rates[None, :]
    table = np.zeros((num_positions, features), np.float32)
    table[:, :half] = np.sin(angles)
    table[:, half : 2 * half] = np.cos(angles)
    return table


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32[query, key]: T5's one-directional bucket of the distance query - key.

    Distances below num_buckets / 2 get a bucket each, longer ones share log-spaced buckets up
    to max_distance. Keys after the query land in bucket 0; causal masking hides them anyway.
    """
    distance = np.maximum(np.arange(length)[:, None] - np.arange(length)[None, :], 0)
    exact = num_buckets // 2
    log_ratio = np.log(distance.astype(np.float32) / exact + np.finfo(np.float32).eps) / np.float32(
        np.log(max_distance / exact)
    )
    far = exact + (log_ratio * (num_buckets - exact)).astype(np.int32)
    return np.where(distance < exact, distance, np.minimum(far, num_buckets - 1)).astype(np.int32)


class RMSNorm(nn.Module):
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _SHAPE_ONLY, (x.shape[-1],), jnp.float32)
        x = x.astype(jnp.float32)
        normed = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + _NORM_EPSILON)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


class GatedGeluMlp(nn.Module):
    hidden_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = functools.partial(
            nn.Dense, use_bias=False, dtype=self.dtype, kernel_init=_SHAPE_ONLY
        )
        gated = nn.gelu(dense(self.hidden_dim, name="gelu_in")(x), approximate=True)
        linear = dense(self.hidden_dim, name="linear_in")(x)
        return dense(x.shape[-1], name="out")(gated * linear)


class Attention(nn.Module):
    """Multi-head dot-product attention whose keys / values can come from a cache."""

    num_heads: int
    head_dim: int
    model_dim: int
    dtype: Any

    def setup(self):
        dense = functools.partial(
            nn.Dense, use_bias=False, dtype=self.dtype, kernel_init=_SHAPE_ONLY
        )
        width = self.num_heads * self.head_dim
        self.query = dense(width)
        self.key = dense(width)
        self.value = dense(width)
        self.out = dense(self.model_dim)

    def _split_heads(self, x: Array) -> Array:
        """[..., L, heads * head_dim] -> [..., heads, L, head_dim]: heads leading, so that a
        loop-invariant encoder K / V needs no transpose at every decode step."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).swapaxes(-2, -3)

    def keys_values(self, x: Array) -> KeysValues:
        return self._split_heads(self.key(x)), self._split_heads(self.value(x))

    def attend(
        self,
        x: Array,
        keys: Array,
        values: Array,
        bias: Array | None = None,
        query_block: int | None = None,
    ) -> Array:
        """x: [rows, queries, D]; keys / values: [rows, heads, keys, head_dim];
        bias: broadcastable to [rows, heads, queries, keys]. Without a bias, more
        than `query_block` queries are attended `query_block` at a time (same result)."""
        query = self._split_heads(self.query(x))
        if bias is None and query_block is not None and query.shape[-2] > query_block:
            mixed = _attend_in_query_blocks(query, keys, values, query_block, self.dtype)
        else:
            mixed = _attention_mix(query, keys, values, bias, self.dtype)
        mixed = mixed.swapaxes(-2, -3)
        return self.out(mixed.reshape(*mixed.shape[:-2], -1))


def _attention_mix(
    query: Array, keys: Array, values: Array, bias: Array | None, dtype: Any
) -> Array:
    """softmax(Q K^T + bias) V over [..., heads, positions, head_dim] operands.

    Logits and softmax in the activation dtype, the bias rounded to it, as upstream computes
    them (it does not ask for float32 attention logits)."""
    logits = jnp.einsum("...hqd,...hkd->...hqk", query, keys).astype(dtype)
    if bias is not None:
        logits = logits + bias.astype(dtype)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("...hqk,...hkd->...hqd", weights, values)


def _attend_in_query_blocks(
    query: Array, keys: Array, values: Array, block: int, dtype: Any
) -> Array:
    """`_attention_mix` without a bias, `block` queries at a time. On CPU the whole
    [heads, 1006, 1006] attention map of an encoder row falls out of cache between its
    matrix products; a block of it stays in, which makes the encoder about 1.5x faster."""
    queries = query.shape[-2]
    padding = -queries % block
    padded = jnp.pad(query, [(0, 0)] * (query.ndim - 2) + [(0, padding), (0, 0)])
    blocks = jnp.moveaxis(padded.reshape(*padded.shape[:-2], -1, block, padded.shape[-1]), -3, 0)
    mixed = lax.map(
        lambda block_queries: _attention_mix(block_queries, keys, values, None, dtype), blocks
    )
    mixed = jnp.moveaxis(mixed, 0, -3)
    return mixed.reshape(*query.shape[:-2], queries + padding, -1)[..., :queries, :]


class TransformerLayer(nn.Module):
    """Pre-norm layer: self-attention, optional cross-attention to the encoder, MLP.

    Called on a whole sequence (cache None), or on one step whose keys / values are written
    into `cache` at `position` before attending to it.
    """

    config: DepthformerConfig
    attends_to_encoder: bool

    def setup(self):
        c = self.config
        attention = functools.partial(Attention, c.num_heads, c.head_dim, c.d_model, c.dtype)
        self.self_attention_norm = RMSNorm(c.dtype)
        self.self_attention = attention()
        if self.attends_to_encoder:
            self.cross_attention_norm = RMSNorm(c.dtype)
            self.cross_attention = attention()
        self.mlp_norm = RMSNorm(c.dtype)
        self.mlp = GatedGeluMlp(c.mlp_dim, c.dtype)

    def cross_keys_values(self, encoded: Array) -> KeysValues:
        return self.cross_attention.keys_values(encoded)

    def __call__(
        self,
        x: Array,
        bias: Array | None,
        cross_kv: KeysValues | None = None,
        cache: KeysValues | None = None,
        position: Array | None = None,
        query_block: int | None = None,
    ) -> tuple[Array, KeysValues]:
        normed = self.self_attention_norm(x)
        keys, values = self.self_attention.keys_values(normed)
        if cache is not None:
            keys = lax.dynamic_update_slice_in_dim(cache[0], keys, position, axis=-2)
            values = lax.dynamic_update_slice_in_dim(cache[1], values, position, axis=-2)
        x = x + self.self_attention.attend(normed, keys, values, bias, query_block)
        if self.attends_to_encoder:
            x = x + self.cross_attention.attend(self.cross_attention_norm(x), *cross_kv)
        x = x + self.mlp(self.mlp_norm(x))
        return x, (keys, values)


class RelativePositionBias(nn.Module):
    num_heads: int
    num_buckets: int
    max_distance: int

    @nn.compact
    def __call__(self, length: int) -> Array:
        """float32[heads, length, length]: the causal mask plus the bias of each distance."""
        table = self.param(
            "embedding", _SHAPE_ONLY, (self.num_heads, self.num_buckets), jnp.float32
        )
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        causal = np.tril(np.ones((length, length), bool))
        return jnp.where(causal, table[:, buckets], _MASKED_LOGIT)


class Encoder(nn.Module):
    config: DepthformerConfig

    def setup(self):
        c = self.config
        self.layers = [
            TransformerLayer(c, attends_to_encoder=False) for _ in range(c.encoder_layers)
        ]
        self.final_norm = RMSNorm(c.dtype)

    def __call__(self, x: Array, query_block: int | None = None) -> Array:
        for layer in self.layers:
            x, _ = layer(x, bias=None, query_block=query_block)
        return self.final_norm(x)


class DecoderStack(nn.Module):
    """The temporal or the depth stack: causal layers sharing one relative position bias."""

    config: DepthformerConfig
    num_layers: int
    relpos_buckets: int
    relpos_max_distance: int
    attends_to_encoder: bool

    def setup(self):
        c = self.config
        self.relative_bias = RelativePositionBias(
            c.num_heads, self.relpos_buckets, self.relpos_max_distance
        )
        self.layers = [TransformerLayer(c, self.attends_to_encoder) for _ in range(self.num_layers)]

    def attention_bias(self, length: int) -> Array:
        return self.relative_bias(length)

    def cross_keys_values(self, encoded: Array) -> list[KeysValues]:
        return [layer.cross_keys_values(encoded) for layer in self.layers]

    def __call__(
        self,
        x: Array,
        bias: Array,
        cross_kv: list[KeysValues] | None = None,
        caches: list[KeysValues] | None = None,
        position: Array | None = None,
    ) -> tuple[Array, list[KeysValues]]:
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(
                x, bias, cross_kv[i] if cross_kv else None, caches[i] if caches else None, position
            )
            new_caches.append(kv)
        return x, new_caches


class OutputProjection(nn.Module):
    """The float32 `logits_dense` kernel; `codec_level_kernels` gives each level's slice."""

    d_model: int
    vocab_rows: int

    def setup(self):
        self.kernel = self.param(
            "kernel", _SHAPE_ONLY, (self.d_model, self.vocab_rows), jnp.float32
        )

    def __call__(self, x: Array) -> Array:
        return x.astype(jnp.float32) @ self.kernel

    def codec_level_kernels(self) -> Array:
        """float32[16, D, 1024]: the columns of level k's codec tokens, for k = 0..15."""
        codec = lax.slice_in_dim(
            self.kernel,
            facts.CODEC_TOKEN_OFFSET,
            facts.CODEC_TOKEN_OFFSET + LEVELS * facts.CODEBOOK_SIZE,
            axis=1,
        )
        return codec.reshape(self.d_model, LEVELS, facts.CODEBOOK_SIZE).transpose(1, 0, 2)


class Depthformer(nn.Module):
    config: DepthformerConfig

    def setup(self):
        c = self.config
        self.token_embedding = nn.Embed(c.vocab_rows, c.d_model, embedding_init=_SHAPE_ONLY)
        self.encoder = Encoder(c)
        self.temporal = DecoderStack(
            c,
            c.temporal_layers,
            c.temporal_relpos_buckets,
            c.temporal_relpos_max_distance,
            attends_to_encoder=True,
        )
        self.depth = DecoderStack(
            c,
            c.depth_layers,
            c.depth_relpos_buckets,
            c.depth_relpos_max_distance,
            attends_to_encoder=False,
        )
        self.decoder_norm = RMSNorm(c.dtype)
        self.logits_dense = OutputProjection(c.d_model, c.vocab_rows)

    # -- pieces shared by the teacher-forced pass and the incremental decode --

    def embed_encoder_tokens(self, tokens: Array) -> Array:
        """int32[rows, L] -> [rows, L, D]: token embedding (rounded to the activation dtype)
        plus the sinusoid of each position, in the activation dtype."""
        dtype = self.config.dtype
        table = jnp.asarray(sinusoid_position_table(tokens.shape[-1], self.config.d_model))
        return (self.token_embedding(tokens).astype(dtype) + table).astype(dtype)

    def embed_decoder_tokens(self, tokens: Array) -> Array:
        """Token embedding with no position added, rounded to the activation dtype and then
        held as float32: the decoder's residual stream is float32 in every case."""
        return self.token_embedding(tokens).astype(self.config.dtype).astype(jnp.float32)

    def encode(self, encoder_tokens: Array, query_block: int | None = None) -> Array:
        """int32[rows, L] -> [rows, L, D]; `query_block` as in `Attention.attend`."""
        return self.encoder(self.embed_encoder_tokens(encoder_tokens), query_block)

    def frame_input(self, tokens: Array) -> Array:
        """The temporal stack's input: the mean of 16 decoder-input embeddings, [..., 1, D]."""
        return jnp.mean(self.embed_decoder_tokens(tokens), axis=-2, keepdims=True)

    def temporal_cross_keys_values(self, encoded: Array) -> list[KeysValues]:
        return self.temporal.cross_keys_values(encoded)

    def attention_biases(self, frames: int) -> tuple[Array, Array]:
        """(temporal [heads, frames, frames], depth [heads, 16, 16]) causal relative biases."""
        return self.temporal.attention_bias(frames), self.depth.attention_bias(LEVELS)

    def temporal_step(
        self,
        x: Array,
        bias: Array,
        cross_kv: list[KeysValues],
        caches: list[KeysValues],
        frame: Array,
    ):
        return self.temporal(x, bias, cross_kv, caches, frame)

    def depth_step(self, x: Array, bias: Array, caches: list[KeysValues], level: Array):
        return self.depth(x, bias, caches=caches, position=level)

    def level_logits(self, depth_output: Array, level_kernel: Array) -> Array:
        """float32[rows, 1024]: the logits of one level's codec tokens only."""
        hidden = self.decoder_norm(depth_output)[:, 0]
        return hidden.astype(jnp.float32) @ level_kernel

    def codec_level_kernels(self) -> Array:
        return self.logits_dense.codec_level_kernels()

    # -- teacher-forced pass (what upstream computes in training) --

    def teacher_forced_hidden(self, encoder_tokens: Array, decoder_input_tokens: Array) -> Array:
        """[rows, T*16, D]: the normed decoder output at every position, all at once."""
        rows, length = decoder_input_tokens.shape
        frames = length // LEVELS
        d_model = self.config.d_model
        encoded = self.encode(encoder_tokens)
        embedded = self.embed_decoder_tokens(decoder_input_tokens)
        # Frame f's slot holds the embeddings at positions 16f-15 .. 16f (frame 0: position 0
        # repeated), so the temporal input is its mean and the depth inputs its last 15.
        padded = jnp.concatenate(
            [jnp.repeat(embedded[:, :1], LEVELS - 1, axis=1), embedded, embedded[:, -1:]], axis=1
        )
        slots = padded.reshape(rows, frames + 1, LEVELS, d_model)
        temporal_bias, depth_bias = self.attention_biases(frames)
        context, _ = self.temporal(
            jnp.mean(slots[:, :frames], axis=2),
            temporal_bias,
            self.temporal.cross_keys_values(encoded),
        )
        depth_inputs = jnp.concatenate([context[:, :, None], slots[:, 1:, : LEVELS - 1]], axis=2)
        hidden, _ = self.depth(depth_inputs.reshape(rows * frames, LEVELS, d_model), depth_bias)
        return self.decoder_norm(hidden.reshape(rows, length, d_model))

    def __call__(self, encoder_tokens: Array, decoder_input_tokens: Array) -> Array:
        """float32[rows, T*16, vocab_rows]: the full logits, teacher-forced."""
        return self.logits_dense(self.teacher_forced_hidden(encoder_tokens, decoder_input_tokens))


# A decode step's token choice: (level logits float32[rows, 1024], frame, level, state) ->
# (codes int32[rows] in [0, 1024), new state, anything to record for this step).
ChooseCodes = Callable[[Array, Array, Array, Any], tuple[Array, Any, Any]]


@dataclasses.dataclass(frozen=True)
class EncoderPasses:
    """How the encoder's work is split, a speed choice that never changes its result.

    `rows` rows run per pass: the [heads, 1006, 1006] attention maps of a whole batch at once
    would take memory in proportion to the batch and, on CPU, run slower (cache misses) than
    small passes. `query_block` as in `Attention.attend`.
    """

    rows: int
    query_block: int | None = None

    @classmethod
    def for_backend(cls, backend: str) -> EncoderPasses:
        """Small, cache-sized passes on CPU; accelerators want big matrix products."""
        return cls(rows=2, query_block=256) if backend == "cpu" else cls(rows=16)


def decode_chunk(
    model: Depthformer,
    params: Params,
    encoder_tokens: Array,
    choose_codes: ChooseCodes,
    state: Any = (),
    encoder_passes: EncoderPasses = EncoderPasses(rows=2),
    frames: int = facts.CHUNK_FRAMES,
) -> tuple[Array, Any, Any]:
    """Generate one chunk (``frames`` frames x 16 levels) incrementally with KV caches.

    Pure JAX (two nested `lax.scan`s); jit it with ``frames`` static. Only each step's level
    slice of the output projection is computed. Frame f depends only on the encoder input and
    frames before it, so a shorter chunk is conditioned on the whole context just as a long
    one is. Returns (codes int32[rows, frames, 16], final state, what `choose_codes`
    recorded, stacked as [frames, 16, ...]).
    """
    c = model.config
    call = functools.partial(model.apply, {"params": params})
    rows = encoder_tokens.shape[0]
    dtype = jnp.dtype(c.dtype)
    encoded = lax.map(
        lambda row: call(row[None], encoder_passes.query_block, method=Depthformer.encode)[0],
        encoder_tokens,
        batch_size=encoder_passes.rows,
    )
    cross_kv = call(encoded, method=Depthformer.temporal_cross_keys_values)
    temporal_bias, depth_bias = call(frames, method=Depthformer.attention_biases)
    level_kernels = call(method=Depthformer.codec_level_kernels)
    levels = jnp.arange(LEVELS)
    level_offsets = facts.CODEC_TOKEN_OFFSET + facts.CODEBOOK_SIZE * levels

    def empty_caches(num_layers: int, length: int) -> list[KeysValues]:
        shape = (rows, c.num_heads, length, c.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers)]

    def frame_step(carry, frame):
        temporal_caches, previous_codes, state = carry
        # Frame 0 starts from the start token (0, as PAD); later frames from the previous
        # frame's 16 tokens.
        tokens = jnp.where(frame == 0, facts.PAD_TOKEN, previous_codes + level_offsets)
        x = call(tokens, method=Depthformer.frame_input)
        bias = lax.dynamic_slice_in_dim(temporal_bias, frame, 1, axis=1)
        context, temporal_caches = call(
            x, bias, cross_kv, temporal_caches, frame, method=Depthformer.temporal_step
        )

        def level_step(carry, per_level):
            depth_caches, x, state = carry
            level, kernel, bias = per_level
            out, depth_caches = call(
                x, bias[:, None], depth_caches, level, method=Depthformer.depth_step
            )
            logits = call(out, kernel, method=Depthformer.level_logits)
            codes, state, record = choose_codes(logits, frame, level, state)
            codes = codes.astype(jnp.int32)
            next_x = call(
                codes[:, None] + level_offsets[level], method=Depthformer.embed_decoder_tokens
            )
            return (depth_caches, next_x, state), (codes, record)

        (_, _, state), (codes, records) = lax.scan(
            level_step,
            (empty_caches(c.depth_layers, LEVELS), context, state),
            (levels, level_kernels, depth_bias.transpose(1, 0, 2)),
        )
        return (temporal_caches, codes.T, state), (codes.T, records)

    initial = (empty_caches(c.temporal_layers, frames), jnp.zeros((rows, LEVELS), jnp.int32), state)
    (_, _, state), (codes, records) = lax.scan(frame_step, initial, jnp.arange(frames))
    return codes.transpose(1, 0, 2), state, records


def _init_inputs() -> tuple[Array, Array]:
    """The smallest inputs that touch every parameter (one frame)."""
    return jnp.ones((1, 1), jnp.int32), jnp.ones((1, LEVELS), jnp.int32)


def init_params(config: DepthformerConfig, seed: int) -> Params:
    """Random float32 weights from a fixed seed (the offline `tiny` default, tests).

    T5's initial scales: token embeddings N(0, 1); dense kernels N(0, 1 / fan_in), queries
    further divided by sqrt(head_dim) (T5's folded attention scale); relative biases
    N(0, 2 / (heads + buckets)); norm scales 1. NumPy's PCG64 draws them, so a seed gives the
    same weights on every machine (generators that take over each other's sessions must
    agree) and nothing has to be compiled.
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in sorted(param_shapes(config).items()):
        if name.endswith("/scale"):
            flat[name] = np.ones(shape, np.float32)
            continue
        if name == "token_embedding/embedding":
            std = 1.0
        elif name.endswith("relative_bias/embedding"):
            std = np.sqrt(2.0 / sum(shape))
        else:
            std = shape[0] ** -0.5 / (np.sqrt(config.head_dim) if "/query/" in name else 1.0)
        flat[name] = (rng.standard_normal(shape, np.float32) * std).astype(np.float32)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def param_shapes(config: DepthformerConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter tree as {"a/b/c": shape}, computed without allocating anything."""
    model = Depthformer(config)
    tree = jax.eval_shape(lambda key: model.init(key, *_init_inputs())["params"], jax.random.key(0))
    return {
        "/".join(str(k.key) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def parameter_count(config: DepthformerConfig) -> int:
    return int(sum(np.prod(shape) for shape in param_shapes(config).values()))
