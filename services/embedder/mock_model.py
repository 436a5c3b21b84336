"""``mock``: a style model with no network at all, for tests of the services around it.

Each text (lower-cased, as MusicCoCa's preprocessing does) or audio clip (its exact samples)
is hashed, and the hash seeds a random unit vector. The result is deterministic, instant and
meaningless: similar audio does not give similar vectors. Use ``tiny`` for anything that should
behave like a style model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from services.common.model_facts import STYLE_EMBEDDING_DIM
from services.embedder.style_model import StyleModel


class MockStyleModel(StyleModel):
    """Hash-seeded unit vectors: the same input always gives the same embedding."""

    name = "mock"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of texts, not one string")
        return _stack([_unit_vector(b"text:" + text.lower().encode()) for text in texts])

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return _stack(
            [_unit_vector(b"audio:" + np.asarray(clip, np.float32).tobytes()) for clip in clips]
        )


def _unit_vector(key: bytes) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(STYLE_EMBEDDING_DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, STYLE_EMBEDDING_DIM), np.float32)
