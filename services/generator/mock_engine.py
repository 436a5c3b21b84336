"""`mock`: a test / development engine with no model behind it. Not music.

It answers instantly with deterministic audio (a sine per channel, whose pitch follows a hash
of the style embedding, the seed and the session's musical context, so each chunk's audio
depends on the state it was made from, as a model's does; its phase follows the session's
own time, chunk index times its chunk length) and maintains the session state exactly as the
real engine does: one new frame of codes per chunk frame appended to the context (here a hash
of seed, chunk index and style), the next crossfade tail from the same decode-and-crossfade
step, and the chunk index.
So services, snapshots and failover can be tested quickly and without model assets, and a
resume that ignored its snapshot (or a reset that kept the context) is heard in the audio.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from services.common import model_facts as facts
from services.common.session_state import SessionState
from services.generator.engine import ChunkEngine, ChunkJob, ChunkOutput, check_one_chunk_length
from services.generator.model.crossfade import crossfade_chunks

LOWEST_MIDI_NOTE = 48  # C3
PITCH_CHOICES = 24  # two octaves
AMPLITUDE = 0.2
RIGHT_CHANNEL_SEMITONES = 7  # a fifth above the left, so the channels differ


class MockEngine(ChunkEngine):
    """Deterministic sine tones with real state handling; for tests and development only."""

    name = "mock"

    def generate(self, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
        if not jobs:
            return []
        frames = check_one_chunk_length(jobs)
        decoded = np.stack([self._decoded_audio(job) for job in jobs])
        chunks, tails = crossfade_chunks(
            decoded, np.stack([j.state.crossfade_tail for j in jobs]), frames
        )
        return [
            ChunkOutput(
                audio=chunks[row],
                state=SessionState(
                    context_tokens=np.concatenate(  # oldest chunk out, new chunk in, like the model
                        [job.state.context_tokens[frames:], self.chunk_codes(job)]
                    ),
                    crossfade_tail=tails[row],
                    chunk_index=job.state.chunk_index + 1,
                ),
            )
            for row, job in enumerate(jobs)
        ]

    @staticmethod
    def chunk_codes(job: ChunkJob) -> np.ndarray:
        """int32[chunk_frames, 16] codes for the job's next chunk: a function of seed, chunk
        and style."""
        rng = np.random.default_rng(_digest(job, job.state.chunk_index))
        return rng.integers(
            0, facts.CODEBOOK_SIZE, (job.chunk_frames, facts.DECODER_RVQ_LEVELS), dtype=np.int32
        )

    @staticmethod
    def frequencies_hz(job: ChunkJob) -> np.ndarray:
        """float64[2]: the left and right pitch for the job's style, seed and context."""
        context = hashlib.blake2b(
            np.ascontiguousarray(job.state.context_tokens).tobytes(), digest_size=8
        ).digest()
        note = LOWEST_MIDI_NOTE + (_digest(job) + int.from_bytes(context, "little")) % PITCH_CHOICES
        notes = np.array([note, note + RIGHT_CHANNEL_SEMITONES])
        return 440.0 * 2.0 ** ((notes - 69) / 12.0)

    def _decoded_audio(self, job: ChunkJob) -> np.ndarray:
        """What the codec would return: the chunk's frames plus one, starting one frame before
        the chunk. A session's chunks all have its one length, so its chunk k starts at
        sample k * chunk_samples of its own stream."""
        first_sample = job.state.chunk_index * job.chunk_samples - facts.CROSSFADE_SAMPLES
        samples = first_sample + np.arange(job.chunk_samples + facts.CROSSFADE_SAMPLES)
        seconds = samples[:, None] / facts.SAMPLE_RATE_HZ
        return (AMPLITUDE * np.sin(2 * np.pi * self.frequencies_hz(job) * seconds)).astype(
            np.float32
        )


def _digest(job: ChunkJob, *extra: int) -> int:
    """A stable 64-bit hash of the job's style embedding, seed and `extra` integers."""
    hasher = hashlib.blake2b(digest_size=8)
    if job.style_embedding is not None:
        hasher.update(np.asarray(job.style_embedding, np.float32).tobytes())
    hasher.update(np.array([job.sampling.seed, *extra], np.int64).tobytes())
    return int.from_bytes(hasher.digest(), "little")
