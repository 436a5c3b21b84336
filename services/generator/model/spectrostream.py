"""SpectroStream decoding: RVQ codes -> 48 kHz stereo audio, batched and compiled with JAX.

Upstream ships the codec as three TensorFlow SavedModels. Decoding needs two of
them: the quantizer, whose 64 codebooks turn codes into 256-d frame embeddings (the sum of one
codebook vector per level), and the decoder network, which turns embeddings into audio. We read
the codebooks once, convert the decoder graph to a JAX function with tf2jax (as upstream does)
and compile "codes -> audio" as one program, so serving never runs TensorFlow.

SavedModel formats (upstream's, and what `tiny_assets` writes):
- quantizer: a root object with a list `_quantizers` of 64 objects, each holding a variable
  `embeddings` of shape [256, 1024] (the codebook, transposed); and a function
  `inference_encoding_with_tf_function(embeddings[B, S, 256], num_quantizers)` returning codes
  int32[num_quantizers, B, S] and the quantized embeddings.
- decoder: `__call__(embeddings: float32[B, S, 256]) -> float32[B, S * 1920, 2]`.
- encoder: `__call__(samples: float32[B, T, 2]) -> float32[B, ceil(T / 1920), 256]`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.generator.batch_buckets import bucket_for

ENCODER_ASSET = "savedmodels/ssv2_48k_stereo/encoder"
DECODER_ASSET = "savedmodels/ssv2_48k_stereo/decoder"
QUANTIZER_ASSET = "savedmodels/ssv2_48k_stereo/quantizer"

CODEC_EMBEDDING_DIM = 256
CODEC_RVQ_DEPTH = 64  # levels the quantizer holds; Magenta RT uses the first 16


def import_tensorflow_cpu_only() -> types.ModuleType:
    """Import TensorFlow with accelerators hidden from it.

    TensorFlow only reads SavedModels here; left alone it would claim the whole GPU that JAX
    needs for the model.
    """
    import tensorflow as tf  # imported lazily: only asset loading and building need it

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialized by an earlier call: nothing to change
        pass
    return tf


def load_codec_codebooks(quantizer_dir: Path, levels: int = facts.DECODER_RVQ_LEVELS) -> np.ndarray:
    """The first `levels` codebooks of a quantizer SavedModel, float32[levels, 1024, 256]."""
    if not 0 < levels <= CODEC_RVQ_DEPTH:
        raise ValueError(f"levels must be in [1, {CODEC_RVQ_DEPTH}], got {levels}")
    tf = import_tensorflow_cpu_only()
    quantizer = tf.saved_model.load(str(quantizer_dir))
    per_level = quantizer._quantizers  # the SavedModel's own (underscored) attribute name
    codebooks = np.stack([per_level[level].embeddings.numpy().T for level in range(levels)]).astype(
        np.float32
    )
    expected = (levels, facts.CODEBOOK_SIZE, CODEC_EMBEDDING_DIM)
    if codebooks.shape != expected:
        raise ValueError(
            f"codec codebooks in {quantizer_dir} have shape {codebooks.shape}, expected {expected}"
        )
    return codebooks


def convert_decoder(
    decoder_dir: Path, example_frames: int = facts.CHUNK_FRAMES + 1
) -> tuple[Callable, dict]:
    """Convert the decoder SavedModel's `__call__` to a pure JAX function and its parameters.

    The JAX function is `fn(params, embeddings) -> (audio, params)`; the graph is traced at
    [1, example_frames, 256] but works for any batch and frame count (called with tf2jax's
    strict shape check off, see `SpectroStreamDecoder`).
    """
    tf = import_tensorflow_cpu_only()
    import tf2jax

    decoder = tf.saved_model.load(str(decoder_dir))
    example = tf.zeros((1, example_frames, CODEC_EMBEDDING_DIM), tf.float32)
    return tf2jax.convert(decoder.__call__, example)


class SpectroStreamDecoder:
    """Decodes batches of codec codes to audio with one compiled program per batch bucket.

    Batches are padded up to the next bucket size so a serving process compiles a handful of
    programs at warm-up instead of one per distinct batch size. The Magenta RT engine calls
    `codes_to_audio` inside its own chunk program instead (`chunk_program.py`).
    """

    def __init__(
        self,
        codebooks: np.ndarray,
        decoder_fn: Callable,
        decoder_params: dict,
        batch_buckets: Sequence[int],
    ):
        if codebooks.ndim != 3 or codebooks.shape[1:] != (facts.CODEBOOK_SIZE, CODEC_EMBEDDING_DIM):
            raise ValueError(f"codebooks must be [levels, 1024, 256], got {codebooks.shape}")
        self.levels = codebooks.shape[0]
        self.batch_buckets = tuple(sorted(set(batch_buckets)))
        self.params = jax.device_put((decoder_params, np.asarray(codebooks, np.float32)))
        self._decoder_fn = decoder_fn
        self._codes_to_audio = jax.jit(self.codes_to_audio)

    def codes_to_audio(self, params: tuple[dict, jax.Array], codes: jax.Array) -> jax.Array:
        """float32[B, frames * 1920, 2] for int32[B, frames, levels] codes, traceable: a
        compiled program can call it with `params` (run its first call per shape under
        `any_batch_shape`)."""
        decoder_params, codebooks = params
        # Dequantize: one codebook vector per level, summed -> [B, frames, 256].
        level_vectors = codebooks[jnp.arange(codebooks.shape[0]), codes]
        audio, _ = self._decoder_fn(decoder_params, level_vectors.sum(axis=-2))
        return audio

    @classmethod
    def load(
        cls,
        quantizer_dir: Path,
        decoder_dir: Path,
        levels: int = facts.DECODER_RVQ_LEVELS,
        **kwargs,
    ) -> SpectroStreamDecoder:
        """Load codebooks and decoder network from the two SavedModel directories."""
        decoder_fn, decoder_params = convert_decoder(decoder_dir)
        return cls(
            load_codec_codebooks(quantizer_dir, levels), decoder_fn, decoder_params, **kwargs
        )

    @classmethod
    def from_store(cls, store: AssetStore, **kwargs) -> SpectroStreamDecoder:
        """Load from an asset store laid out like the upstream repository."""
        return cls.load(store.path(QUANTIZER_ASSET), store.path(DECODER_ASSET), **kwargs)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32[B, frames * 1920, 2] audio for int32[B, frames, levels] codes in [0, 1024)."""
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[2] != self.levels:
            raise ValueError(f"codes must be [batch, frames, {self.levels}], got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= facts.CODEBOOK_SIZE):
            raise ValueError("codes must be in [0, 1024)")
        batch_size = codes.shape[0]
        padded = np.zeros((bucket_for(batch_size, self.batch_buckets),) + codes.shape[1:], np.int32)
        padded[:batch_size] = codes
        audio = self._run(padded)
        return np.asarray(audio[:batch_size], np.float32)

    def _run(self, codes: np.ndarray) -> jax.Array:
        with any_batch_shape():
            return self._codes_to_audio(self.params, codes)


def any_batch_shape() -> contextlib.AbstractContextManager:
    """The context for tracing the converted decoder at a shape of its own: its graph was
    traced at one shape, other batch and frame counts are valid for it, so tf2jax's check
    against the traced shape is switched off."""
    import tf2jax

    return tf2jax.override_config("strict_shape_check", False)
