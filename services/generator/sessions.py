"""Bookkeeping for the sessions placed on one generator: their state, settings and demand."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

import numpy as np

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.context_audio import ContextAudio
from services.generator.engine import ChunkOutput


@dataclasses.dataclass
class ChunkResult:
    """What the scheduler hands back to a session's stream for one generated chunk."""

    output: ChunkOutput | None
    style_version: int = 0
    sampling_version: int = 0
    queue_wait_s: float = 0.0
    generation_s: float = 0.0
    batch_size: int = 0
    error: str | None = None


@dataclasses.dataclass
class GeneratorSession:
    """One listener's session on this generator. Mutated under the scheduler's lock."""

    session_id: str
    state: SessionState
    sampling: SamplingSettings
    deliver: Callable[[ChunkResult], None]  # thread-safe: called from the scheduler thread
    style_embedding: np.ndarray | None = None
    style_version: int = 0
    sampling_version: int = 0
    reset_requested: bool = False
    # Pending demands in chunk order: (deadline, when it arrived), both unix seconds.
    demands: collections.deque[tuple[float, float]] = dataclasses.field(
        default_factory=collections.deque
    )
    in_flight: bool = False  # a batch is making its next chunk
    closed: bool = False
    # Encoded into the context before the next chunk, in order; a newer mix replaces an older one.
    context_audio: tuple[ContextAudio, ...] = ()
    opened_at_unix_s: float = dataclasses.field(default_factory=time.time)
    chunk_frames: int = facts.CHUNK_FRAMES  # codec frames per chunk, fixed for the session

    @property
    def chunk_seconds(self) -> float:
        """Audio seconds of each of the session's chunks: its chunk period in real time."""
        return self.chunk_frames / facts.FRAME_RATE_HZ

    def add_context_audio(self, audio: ContextAudio) -> None:
        """Queue audio for the next chunk; a live-input mix replaces a mix not yet used."""
        kept = tuple(
            queued for queued in self.context_audio if not (queued.is_mix and audio.is_mix)
        )
        self.context_audio = kept + (audio,)

    def take_context_audio(self) -> tuple[ContextAudio, ...]:
        """The audio to encode into the context before the next chunk, once."""
        audio, self.context_audio = self.context_audio, ()
        return audio

    def take_reset(self) -> None:
        """Apply a requested RESET_CONTEXT before the next chunk: forget the musical context."""
        if self.reset_requested:
            self.state = dataclasses.replace(
                SessionState.fresh(),
                chunk_index=self.state.chunk_index,
                crossfade_tail=self.state.crossfade_tail,
            )
            self.reset_requested = False
