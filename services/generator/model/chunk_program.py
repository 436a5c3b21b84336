"""A batch's chunk, tokens to audio, as one compiled program.

Sampling (`sampling.TokenSampler`), the codec decode (`spectrostream.SpectroStreamDecoder`) and
the crossfade (`crossfade.crossfade_chunks`) run in one jitted program per padded batch shape:
one dispatch per batch, and the sampled codes go to the codec without a trip through the host.
The previous crossfade tails are donated to the program, which writes the next tails into
their buffers. The program is compiled per batch bucket and guidance-row bucket; `compile_batches`
compiles a batch size's programs ahead of serving.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from services.common import model_facts as facts
from services.generator.model.crossfade import crossfade_chunks
from services.generator.model.spectrostream import SpectroStreamDecoder, any_batch_shape

if TYPE_CHECKING:  # the depthformer side is imported only where a model is built
    from services.generator.model.sampling import SamplerBatch, TokenSampler


def _tokens_to_audio(
    sample_chunk: Callable[..., jax.Array],
    codes_to_audio: Callable[..., jax.Array],
    sampler_params,
    decoder_params,
    previous_frames: jax.Array,
    previous_tails: jax.Array,
    *sampler_arguments: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The compiled program: (codes int32[B, 50, 16], chunks float32[B, 96000, 2], next tails
    float32[B, 1920, 2]) for a padded batch of B sessions."""
    codes = sample_chunk(sampler_params, *sampler_arguments)
    decoded = codes_to_audio(decoder_params, jnp.concatenate([previous_frames, codes], axis=1))
    chunks, next_tails = crossfade_chunks(decoded, previous_tails, xp=jnp)
    return codes, chunks, next_tails


class ChunkProgram:
    """Generates a batch's new codes, audio and crossfade tails in one compiled program."""

    def __init__(self, sampler: TokenSampler, decoder: SpectroStreamDecoder):
        self.sampler = sampler
        self._decoder = decoder
        self._compiled_buckets: set[int] = set()
        self._program = jax.jit(
            functools.partial(_tokens_to_audio, sampler.sample_chunk, decoder.codes_to_audio),
            donate_argnames="previous_tails",
        )

    def run(
        self,
        encoder_tokens: np.ndarray,
        temperature: np.ndarray,
        top_k: np.ndarray,
        guidance: np.ndarray,
        seeds: np.ndarray,
        previous_frames: np.ndarray,
        previous_tails: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes int32[B, 50, 16], chunks float32[B, 96000, 2], next tails float32[B, 1920,
        2]) for B sessions. The sampling inputs are `TokenSampler.batch`'s; previous_frames
        int32[B, 1, 16] are the frames decoded first (`crossfade.previous_frames`) and
        previous_tails float32[B, 1920, 2] what the sessions' last chunks left."""
        batch = self.sampler.batch(encoder_tokens, temperature, top_k, guidance, seeds)
        return self._run(batch, previous_frames, previous_tails)

    def _run(
        self, batch: SamplerBatch, previous_frames: np.ndarray, previous_tails: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        padding = ((0, batch.padded_sessions - batch.sessions), (0, 0), (0, 0))
        frames = np.pad(np.asarray(previous_frames, np.int32), padding)
        tails = jax.device_put(np.pad(np.asarray(previous_tails, np.float32), padding))
        with any_batch_shape():
            outputs = self._program(
                self.sampler.params, self._decoder.params, frames, tails, *batch.arguments
            )
        # One read-back of the padded outputs (slicing on the device would dispatch, and
        # compile, a small program per batch size).
        codes, chunks, next_tails = (
            np.asarray(output)[: batch.sessions] for output in jax.device_get(outputs)
        )
        return codes, chunks, next_tails

    def compile_batches(self, batch_size: int) -> None:
        """Compile every program a batch of `batch_size` sessions can run, one per
        guidance-row bucket, with throw-away batches; a bucket compiled before is skipped."""
        batch_rows = self.sampler.bucket_for(batch_size)
        if batch_rows in self._compiled_buckets:
            return
        for batch in self.sampler.warmup_batches(batch_rows):
            frames = np.zeros((batch.sessions, 1, self._decoder.levels), np.int32)
            tails = np.zeros((batch.sessions, facts.CROSSFADE_SAMPLES, facts.CHANNELS), np.float32)
            self._run(batch, frames, tails)
        self._compiled_buckets.add(batch_rows)
