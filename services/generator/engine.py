"""The interface between the generator's scheduler and a model: one batched chunk step.

A `ChunkEngine` turns a batch of `ChunkJob`s (each a session's state, style and sampling
settings) into one 2-second chunk of audio and the next state per session. The scheduler
decides which sessions share a batch; the engine only computes.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from services.common import model_facts as facts

if TYPE_CHECKING:  # context_audio imports this module
    from services.generator.context_audio import ContextAudio


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = facts.DEFAULT_TEMPERATURE
    top_k: int = facts.DEFAULT_TOP_K
    guidance: float = facts.DEFAULT_GUIDANCE
    seed: int = 0


@dataclasses.dataclass
class SessionState:
    """The whole state of a session between chunks (about 31 KB), see docs/model.md."""

    context_tokens: np.ndarray  # int32[250, 16]; -1 = not generated yet
    crossfade_tail: np.ndarray  # float32[1920, 2]
    chunk_index: int = 0

    @classmethod
    def fresh(cls) -> "SessionState":
        return cls(
            context_tokens=np.full((facts.CONTEXT_FRAMES, facts.DECODER_RVQ_LEVELS), -1, np.int32),
            crossfade_tail=np.zeros((facts.CROSSFADE_SAMPLES, facts.CHANNELS), np.float32),
            chunk_index=0,
        )

    def validate(self) -> None:
        """Raise ValueError when the arrays are not what a snapshot must hold."""
        if self.context_tokens.shape != (facts.CONTEXT_FRAMES, facts.DECODER_RVQ_LEVELS):
            raise ValueError(f"context_tokens must be [250, 16], got {self.context_tokens.shape}")
        if self.context_tokens.dtype != np.int32:
            raise ValueError("context_tokens must be int32")
        if np.any((self.context_tokens < -1) | (self.context_tokens >= facts.CODEBOOK_SIZE)):
            raise ValueError("context_tokens must be codes in [0, 1024) or -1")
        if self.crossfade_tail.shape != (facts.CROSSFADE_SAMPLES, facts.CHANNELS):
            raise ValueError(f"crossfade_tail must be [1920, 2], got {self.crossfade_tail.shape}")
        if not np.all(np.isfinite(self.crossfade_tail)):
            raise ValueError("crossfade_tail must be finite")
        if self.chunk_index < 0:
            raise ValueError("chunk_index must be >= 0")


@dataclasses.dataclass
class ChunkJob:
    state: SessionState
    style_embedding: np.ndarray | None  # float32[768]; None = unconditioned
    sampling: SamplingParams
    # Audio to encode into the context first, in order (initial audio, a live-input mix).
    context_audio: "tuple[ContextAudio, ...]" = ()


@dataclasses.dataclass
class ChunkOutput:
    audio: np.ndarray  # float32[96000, 2]
    state: SessionState


class ChunkEngine(abc.ABC):
    """A model that generates the next chunk for a batch of sessions."""

    name: str
    supports_audio_input = False  # whether jobs may carry context audio

    @abc.abstractmethod
    def generate(self, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
        """One chunk per job, in order. Must give each job what it would get alone."""

    def warmup(self, batch_size: int) -> None:
        """Run one throw-away batch of ``batch_size`` fresh sessions (compiles that shape)."""
        self.generate([fresh_job()] * batch_size)


def fresh_job() -> ChunkJob:
    """A fresh session with default settings: what warm-ups and probes generate."""
    return ChunkJob(state=SessionState.fresh(), style_embedding=None, sampling=SamplingParams())
