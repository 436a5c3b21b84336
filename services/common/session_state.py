"""A session's whole state between chunks: what the generator continues from and the gateway
keeps (as a snapshot) to resume the session anywhere. About 31 KB; docs/model.md says why it
is all that is needed."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common import model_facts as facts


@dataclasses.dataclass
class SessionState:
    """The whole state of a session between chunks (about 31 KB), see docs/model.md."""

    context_tokens: np.ndarray  # int32[250, 16]; -1 = not generated yet
    crossfade_tail: np.ndarray  # float32[1920, 2]
    chunk_index: int = 0

    @classmethod
    def fresh(cls) -> SessionState:
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
