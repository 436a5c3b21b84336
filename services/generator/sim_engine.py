"""`sim`: an engine with an accelerator's cost and no model, to measure the serving system.

A batched chunk takes ``batch_seconds + session_seconds * batch_size`` of wall time, spent
sleeping (no CPU), which is how a chunk costs on an accelerator: a fixed part (hundreds of
sequential decoder steps bound by kernel launches and weight reads) plus a small part per
session. So the scheduler, the gateway and the clients can be measured against a GPU's or
TPU's costs on any machine. The music is not music: the audio is a quiet fixed tone. The cost
is that of a 50-frame chunk; a batch of shorter chunks costs its share of it
(``frames / 50``), as the sequential decoder steps that dominate it are per frame (the
per-chunk encoder pass, which makes short chunks dearer per second of audio, is not modelled).

The session state is real: each chunk appends its frames of codes to the context that are a
cheap deterministic function of the previous context, the style, the seed and the chunk
index, and the crossfade tail and chunk index advance as with a real model. So snapshots,
resume and RESET_CONTEXT behave as they would with one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from services.common import model_facts as facts
from services.common.session_state import SessionState
from services.generator.engine import ChunkEngine, ChunkJob, ChunkOutput, check_one_chunk_length

DEFAULT_BATCH_SECONDS = 0.25
DEFAULT_SESSION_SECONDS = 0.0125
TONE_HZ = 220.0
TONE_AMPLITUDE = 0.05
# Multipliers of a cheap integer hash (odd 31-bit constants).
_HASH_MULTIPLIERS = np.array([0x2545F491, 0x6C8E9CF5, 0x1B873593, 0x5BD1E995], np.int64)


@dataclasses.dataclass(frozen=True)
class SimCost:
    """Wall time of one batched chunk: ``batch_seconds + session_seconds * batch_size``."""

    batch_seconds: float = DEFAULT_BATCH_SECONDS
    session_seconds: float = DEFAULT_SESSION_SECONDS

    def __post_init__(self) -> None:
        if not (self.batch_seconds >= 0 and self.session_seconds >= 0):
            raise ValueError("sim batch and session seconds must be >= 0")

    def seconds(self, batch_size: int, chunk_frames: int = facts.CHUNK_FRAMES) -> float:
        """Wall time of a batch of ``batch_size`` chunks of ``chunk_frames`` frames each."""
        full_chunk_s = self.batch_seconds + self.session_seconds * batch_size
        return full_chunk_s * chunk_frames / facts.CHUNK_FRAMES

    def held_sessions_bound(self, period_s: float = facts.CHUNK_SECONDS) -> int:
        """N*: no scheduler keeps more sessions in real time, all of them in one batch per
        chunk period."""
        if self.session_seconds <= 0:
            return 0
        # Rounded first, so that 1.75 / 0.0125 is 140 and not 139.99999.
        return math.floor(round((period_s - self.batch_seconds) / self.session_seconds, 9))


class SimulatedBatchError(RuntimeError):
    """Raised by a sim engine told to fail every batch (failover and liveness drills)."""


class SimEngine(ChunkEngine):
    """Sleeps for the cost model's time and advances each session's state cheaply."""

    name = "sim"

    def __init__(
        self,
        cost: SimCost = SimCost(),
        *,
        fail_batches: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cost = cost
        self.fail_batches = fail_batches
        self._sleep = sleep
        samples = np.arange(facts.CHUNK_SAMPLES) / facts.SAMPLE_RATE_HZ
        tone = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * samples)).astype(np.float32)
        self._audio = np.repeat(tone[:, None], facts.CHANNELS, axis=1)
        self._audio.flags.writeable = False  # one buffer shared by every chunk
        self._tail = self._audio[-facts.CROSSFADE_SAMPLES :]

    def generate(self, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
        if not jobs:
            return []
        frames = check_one_chunk_length(jobs)
        self._sleep(self.cost.seconds(len(jobs), frames))
        if self.fail_batches:
            raise SimulatedBatchError(f"sim engine set to fail every batch ({len(jobs)} jobs)")
        audio = self._audio[: frames * facts.SAMPLES_PER_FRAME]
        return [
            ChunkOutput(
                audio=audio,
                state=SessionState(
                    context_tokens=np.concatenate(
                        [job.state.context_tokens[frames:], next_codes(job)]
                    ),
                    crossfade_tail=self._tail.copy(),
                    chunk_index=job.state.chunk_index + 1,
                ),
            )
            for job in jobs
        ]

    def warmup(self, batch_size: int, chunk_frames: int = facts.CHUNK_FRAMES) -> None:
        """The start-up warm-up takes a batch's time and never fails: a failure drill
        (``fail_batches``) fails the batches the generator serves, after it has started."""
        self._sleep(self.cost.seconds(batch_size, chunk_frames))


def next_codes(job: ChunkJob) -> np.ndarray:
    """int32[chunk_frames, 16] codes in [0, 1024): a cheap hash of the context's last frame, the style,
    the seed and the chunk index, so two sessions agree exactly when their states and
    settings do."""
    style = (
        0
        if job.style_embedding is None
        else int(np.asarray(job.style_embedding, np.float32).view(np.int32).astype(np.int64).sum())
    )
    last_frame = job.state.context_tokens[-1].astype(np.int64)
    seed = (
        np.int64(job.sampling.seed % 2**31) * _HASH_MULTIPLIERS[0]
        + np.int64(job.state.chunk_index) * _HASH_MULTIPLIERS[1]
        + np.int64(style % 2**31) * _HASH_MULTIPLIERS[2]
    )
    frames = np.arange(job.chunk_frames, dtype=np.int64)[:, None] * _HASH_MULTIPLIERS[3]
    mixed = (
        seed
        + frames
        + (last_frame + 1)[None, :] * _HASH_MULTIPLIERS[1]
        + np.arange(facts.DECODER_RVQ_LEVELS, dtype=np.int64)[None, :]
    )
    mixed = (mixed ^ (mixed >> 13)) * _HASH_MULTIPLIERS[0]
    return ((mixed ^ (mixed >> 17)) % facts.CODEBOOK_SIZE).astype(np.int32)
