"""The interface between the embedder's servicer and a MusicCoCa-like style model."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class StyleModel(abc.ABC):
    """Maps texts and audio clips to 768-d style embeddings, a batch at a time."""

    name: str

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32[N, 768] for N texts (already normalized by the caller is not assumed)."""

    @abc.abstractmethod
    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """float32[N, 768] for N mono 16 kHz float32 waveforms (each at most 10 s)."""
