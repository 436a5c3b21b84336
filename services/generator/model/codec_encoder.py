"""SpectroStream encoding: 48 kHz stereo audio -> RVQ codes, batched and compiled with JAX.

The inverse direction of `spectrostream.SpectroStreamDecoder`, used to write audio into a
session's context (live audio input and `initial_audio`, see docs/model.md "Audio injection").
Encoding needs the encoder network SavedModel, `__call__(samples: float32[B, T, 2]) ->
float32[B, ceil(T / 1920), 256]`, which we convert to JAX with tf2jax like the decoder, and the
quantizer's codebooks: each frame embedding becomes 16 codes, level by level the nearest
codebook vector (Euclidean) to what the previous levels left over, as upstream's quantizer does.
"Audio -> codes" is one compiled program, so serving never runs TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.generator.model.spectrostream import (
    CODEC_EMBEDDING_DIM,
    ENCODER_ASSET,
    QUANTIZER_ASSET,
    import_tensorflow_cpu_only,
    load_codec_codebooks,
)


def convert_encoder(
    encoder_dir: Path, example_samples: int = facts.SAMPLE_RATE_HZ
) -> tuple[Callable, dict]:
    """Convert the encoder SavedModel's `__call__` to a pure JAX function and its parameters.

    `fn(params, samples) -> (embeddings, params)`; traced at [1, example_samples, 2] (one
    second, as upstream traces it) and valid for other batch and sample counts with tf2jax's
    strict shape check off.
    """
    tf = import_tensorflow_cpu_only()
    import tf2jax

    encoder = tf.saved_model.load(str(encoder_dir))
    example = tf.zeros((1, example_samples, facts.CHANNELS), tf.float32)
    return tf2jax.convert(encoder.__call__, example)


def residual_quantize(embeddings: jax.Array, codebooks: jax.Array) -> jax.Array:
    """int32[..., levels] codes: per level the nearest codebook vector to the residual.

    embeddings: float[..., 256]; codebooks: float[levels, 1024, 256].
    """

    def level(residual, codebook):
        distances = jnp.sum(codebook * codebook, axis=-1) - 2.0 * jnp.einsum(
            "...d,vd->...v", residual, codebook
        )
        codes = jnp.argmin(distances, axis=-1).astype(jnp.int32)
        return residual - codebook[codes], codes

    _, codes = jax.lax.scan(level, embeddings, codebooks)  # [levels, ...]
    return jnp.moveaxis(codes, 0, -1)


def _padded_batch_size(batch_size: int) -> int:
    """Batches run at the next power of two: few compiled programs for any batch size."""
    return 1 << max(0, batch_size - 1).bit_length()


class SpectroStreamEncoder:
    """Encodes batches of audio to codec codes, one compiled program per (batch, length)."""

    def __init__(self, codebooks: np.ndarray, encoder_fn: Callable, encoder_params: dict):
        if codebooks.ndim != 3 or codebooks.shape[1:] != (facts.CODEBOOK_SIZE, CODEC_EMBEDDING_DIM):
            raise ValueError(f"codebooks must be [levels, 1024, 256], got {codebooks.shape}")
        self.levels = codebooks.shape[0]
        self._codebooks = jnp.asarray(codebooks, jnp.float32)
        self._params = encoder_params

        def audio_to_codes(params, codebooks, samples):
            embeddings, _ = encoder_fn(params, samples)
            return residual_quantize(embeddings, codebooks)

        self._audio_to_codes = jax.jit(audio_to_codes)
        self._compiled: set[tuple[int, int]] = set()  # (padded batch, samples) shapes run so far

    @classmethod
    def load(
        cls, quantizer_dir: Path, encoder_dir: Path, levels: int = facts.DECODER_RVQ_LEVELS
    ) -> SpectroStreamEncoder:
        """Load codebooks and encoder network from the two SavedModel directories."""
        encoder_fn, encoder_params = convert_encoder(encoder_dir)
        return cls(load_codec_codebooks(quantizer_dir, levels), encoder_fn, encoder_params)

    def matches_quantizer(self, quantizer_dir: Path, frames: int = 32, seed: int = 0) -> bool:
        """Whether our quantization gives the codes the quantizer SavedModel's own encoding
        function gives, on random embeddings (a load-time check of the real assets)."""
        tf = import_tensorflow_cpu_only()
        quantizer = tf.saved_model.load(str(quantizer_dir))
        embeddings = (
            np.random.default_rng(seed)
            .standard_normal((1, frames, CODEC_EMBEDDING_DIM))
            .astype(np.float32)
        )
        reference, _ = quantizer.inference_encoding_with_tf_function(
            tf.constant(embeddings), num_quantizers=self.levels
        )
        ours = residual_quantize(jnp.asarray(embeddings), self._codebooks)
        return bool(np.array_equal(np.transpose(reference.numpy(), (1, 2, 0)), np.asarray(ours)))

    @classmethod
    def from_store(cls, store: AssetStore, **kwargs) -> SpectroStreamEncoder:
        """Load from an asset store laid out like the upstream repository."""
        return cls.load(store.path(QUANTIZER_ASSET), store.path(ENCODER_ASSET), **kwargs)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """int32[B, ceil(T / 1920), levels] codes for float32[B, T, 2] audio in [-1, 1]."""
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 3 or samples.shape[2] != facts.CHANNELS or samples.shape[1] == 0:
            raise ValueError(f"samples must be [batch, samples > 0, 2], got {samples.shape}")
        batch_size = samples.shape[0]
        padded = np.zeros((_padded_batch_size(batch_size),) + samples.shape[1:], np.float32)
        padded[:batch_size] = samples
        import tf2jax

        # The converted graph was traced at one shape; other batch and sample counts are valid.
        with tf2jax.override_config("strict_shape_check", False):
            codes = self._audio_to_codes(self._params, self._codebooks, padded)
        self._compiled.add(padded.shape[:2])
        return np.asarray(codes[:batch_size], np.int32)

    def compile_batches(self, max_batch_size: int, samples: int) -> None:
        """Compile every padded batch size up to `max_batch_size` for `samples`-long audio
        (shapes already run are skipped), so no session waits for a compilation."""
        size = 1
        while True:
            if (size, samples) not in self._compiled:
                self.encode(np.zeros((size, samples, facts.CHANNELS), np.float32))
            if size >= max_batch_size:
                return
            size *= 2
