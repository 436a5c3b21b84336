"""The interface between the generator's scheduler and a model: one batched chunk step.

A `ChunkEngine` turns a batch of `ChunkJob`s (each a session's state, style, sampling
settings and chunk length) into one chunk of audio and the next state per session. A chunk is
``chunk_frames`` codec frames of 40 ms (50 = 2 s by default): the engine generates that many
new frames and the context advances by that many. The scheduler decides which sessions share
a batch (all of one chunk length); the engine only computes. An engine that runs on an
accelerator may split a batch in two (`start`, then `PendingBatch.finish`), so that the runner
prepares the next batch on the host while the device computes this one.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState

if TYPE_CHECKING:  # context_audio imports this module
    from services.generator.context_audio import ContextAudio


@dataclasses.dataclass
class ChunkJob:
    state: SessionState
    style_embedding: np.ndarray | None  # float32[768]; None = unconditioned
    sampling: SamplingSettings
    # Audio to encode into the context first, in order (initial audio, a live-input mix).
    context_audio: tuple[ContextAudio, ...] = ()
    chunk_frames: int = facts.CHUNK_FRAMES  # new codec frames this chunk (5..50)

    @property
    def chunk_samples(self) -> int:
        """Audio samples (per channel) of this job's chunk."""
        return self.chunk_frames * facts.SAMPLES_PER_FRAME


@dataclasses.dataclass
class ChunkOutput:
    audio: np.ndarray  # float32[chunk_frames * 1920, 2]
    state: SessionState


class PendingBatch(abc.ABC):
    """A started batch, maybe still computing on a device."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether `finish` would return without waiting for the device."""

    @abc.abstractmethod
    def finish(self) -> list[ChunkOutput]:
        """One chunk per job, in order (waits for the device if needed)."""


class FinishedBatch(PendingBatch):
    """A batch computed to its end when it started (what `ChunkEngine.start` gives by
    default)."""

    def __init__(self, outputs: list[ChunkOutput]):
        self._outputs = outputs

    def ready(self) -> bool:
        return True

    def finish(self) -> list[ChunkOutput]:
        return self._outputs


class ChunkEngine(abc.ABC):
    """A model that generates the next chunk for a batch of sessions."""

    name: str
    supports_audio_input = False  # whether jobs may carry context audio

    @abc.abstractmethod
    def generate(self, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
        """One chunk per job, in order. Must give each job what it would get alone. The
        jobs of one call share one chunk length (`check_one_chunk_length`)."""

    def start(self, jobs: Sequence[ChunkJob]) -> PendingBatch:
        """Begin a batch: `generate`'s outputs from the returned batch's `finish`. By default
        the batch runs to its end here; an engine on a device returns once the device has it."""
        return FinishedBatch(self.generate(jobs))

    def warmup(self, batch_size: int, chunk_frames: int = facts.CHUNK_FRAMES) -> None:
        """Run one throw-away batch of ``batch_size`` fresh sessions (compiles that shape)."""
        self.generate([fresh_job(chunk_frames)] * batch_size)


def fresh_job(chunk_frames: int = facts.CHUNK_FRAMES) -> ChunkJob:
    """A fresh session with default settings: what warm-ups and probes generate."""
    return ChunkJob(
        state=SessionState.fresh(),
        style_embedding=None,
        sampling=SamplingSettings(),
        chunk_frames=chunk_frames,
    )


def check_one_chunk_length(jobs: Sequence[ChunkJob]) -> int:
    """The chunk length (frames) the jobs share; ValueError when they differ, as a batch
    runs one compiled decode loop of a fixed length."""
    lengths = {job.chunk_frames for job in jobs}
    if len(lengths) != 1:
        raise ValueError(f"a batch holds one chunk length, got {sorted(lengths)} frames")
    return lengths.pop()
