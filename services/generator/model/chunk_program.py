"""A batch's chunk, tokens to audio, as one compiled program.

Sampling (`sampling.TokenSampler`), the codec decode (`spectrostream.SpectroStreamDecoder`) and
the crossfade (`crossfade.crossfade_chunks`) run in one jitted program per padded batch shape:
one dispatch per batch, and the sampled codes go to the codec without a trip through the host.
`start` dispatches the program and returns at once (JAX dispatch is asynchronous), so the host
can prepare the next batch while the device runs this one; `DispatchedChunk.read_back` waits.
The previous crossfade tails are donated to the program, which writes the next tails into
their buffers. The program is compiled per batch bucket, guidance-row bucket and chunk length;
`compile_batches` compiles a batch size's programs ahead of serving.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from services.common import model_facts as facts
from services.generator.model.crossfade import crossfade_chunks
from services.generator.model.spectrostream import SpectroStreamDecoder, any_batch_shape
from services.generator.model.tokens import check_chunk_frames

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
    frames: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The compiled program: (codes int32[B, F, 16], chunks float32[B, F * 1920, 2], next
    tails float32[B, 1920, 2]) for a padded batch of B sessions and chunks of F = `frames`."""
    codes = sample_chunk(sampler_params, *sampler_arguments, frames=frames)
    decoded = codes_to_audio(decoder_params, jnp.concatenate([previous_frames, codes], axis=1))
    chunks, next_tails = crossfade_chunks(decoded, previous_tails, frames, xp=jnp)
    return codes, chunks, next_tails


@dataclasses.dataclass(frozen=True)
class DispatchedChunk:
    """A batch's program, dispatched: its padded outputs, maybe still being computed."""

    outputs: tuple[jax.Array, jax.Array, jax.Array]
    sessions: int  # the real rows, before padding

    def ready(self) -> bool:
        """Whether the device has finished (`read_back` would not wait)."""
        # Every concrete array has `is_ready`; jax.Array's type stub does not list it.
        return all(output.is_ready() for output in self.outputs)  # type: ignore[attr-defined]

    def read_back(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, chunks, next tails) of the real rows, waiting for the device if needed."""
        # One read-back of the padded outputs (slicing on the device would dispatch, and
        # compile, a small program per batch size).
        codes, chunks, next_tails = (
            np.asarray(output)[: self.sessions] for output in jax.device_get(self.outputs)
        )
        return codes, chunks, next_tails


class ChunkProgram:
    """Generates a batch's new codes, audio and crossfade tails in one compiled program."""

    def __init__(self, sampler: TokenSampler, decoder: SpectroStreamDecoder):
        self.sampler = sampler
        self._decoder = decoder
        self._compiled: set[tuple[int, int]] = set()  # (batch bucket, chunk frames)
        self._program = jax.jit(
            functools.partial(_tokens_to_audio, sampler.sample_chunk, decoder.codes_to_audio),
            static_argnames="frames",
            donate_argnames="previous_tails",
        )

    def start(
        self,
        encoder_tokens: np.ndarray,
        temperature: np.ndarray,
        top_k: np.ndarray,
        guidance: np.ndarray,
        seeds: np.ndarray,
        previous_frames: np.ndarray,
        previous_tails: np.ndarray,
        frames: int = facts.CHUNK_FRAMES,
    ) -> DispatchedChunk:
        """Dispatch the program for B sessions and chunks of F = `frames` (1 to 50; each
        length is compiled when first used); its read-back gives (codes int32[B, F, 16],
        chunks float32[B, F * 1920, 2], next tails float32[B, 1920, 2]). The sampling inputs
        are `TokenSampler.batch`'s; previous_frames int32[B, 1, 16] are the frames decoded
        first (`crossfade.previous_frames`) and previous_tails float32[B, 1920, 2] what the
        sessions' last chunks left."""
        check_chunk_frames(frames)
        batch = self.sampler.batch(encoder_tokens, temperature, top_k, guidance, seeds)
        return self._dispatch(batch, previous_frames, previous_tails, frames)

    def _dispatch(
        self,
        batch: SamplerBatch,
        previous_frames: np.ndarray,
        previous_tails: np.ndarray,
        frames: int,
    ) -> DispatchedChunk:
        padding = ((0, batch.padded_sessions - batch.sessions), (0, 0), (0, 0))
        first_frames = np.pad(np.asarray(previous_frames, np.int32), padding)
        tails = jax.device_put(np.pad(np.asarray(previous_tails, np.float32), padding))
        with any_batch_shape():
            outputs = self._program(
                self.sampler.params,
                self._decoder.params,
                first_frames,
                tails,
                *batch.arguments,
                frames=frames,
            )
        return DispatchedChunk(tuple(outputs), batch.sessions)

    def compile_batches(self, batch_size: int, frames: int = facts.CHUNK_FRAMES) -> None:
        """Compile every program a batch of `batch_size` sessions of chunks of `frames` can
        run, one per guidance-row bucket, with throw-away batches; one compiled before is
        skipped."""
        batch_rows = self.sampler.bucket_for(batch_size)
        if (batch_rows, frames) in self._compiled:
            return
        for batch in self.sampler.warmup_batches(batch_rows):
            first_frames = np.zeros((batch.sessions, 1, self._decoder.levels), np.int32)
            tails = np.zeros((batch.sessions, facts.CROSSFADE_SAMPLES, facts.CHANNELS), np.float32)
            self._dispatch(batch, first_frames, tails, frames).read_back()
        self._compiled.add((batch_rows, frames))
