"""The interface between the generator's scheduler and a model: one batched chunk step.

A `ChunkEngine` turns a batch of `ChunkJob`s (each a session's state, style and sampling
settings) into one 2-second chunk of audio and the next state per session. The scheduler
decides which sessions share a batch; the engine only computes.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

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
    return ChunkJob(state=SessionState.fresh(), style_embedding=None, sampling=SamplingSettings())
