"""Float audio from the generator -> the bytes a client asked for (interleaved, little-endian)."""

from __future__ import annotations

import numpy as np

from services.common.proto.mrt.v1 import music_pb2


def encode_audio(samples: np.ndarray, encoding: int) -> bytes:
    """``samples``: float32[frames, channels] in [-1, 1]."""
    if encoding == music_pb2.PCM_F32LE:
        return np.ascontiguousarray(samples, dtype="<f4").tobytes()
    if encoding == music_pb2.PCM_S16LE:
        clipped = np.clip(samples, -1.0, 1.0)
        return np.ascontiguousarray(np.round(clipped * 32767.0), dtype="<i2").tobytes()
    raise ValueError(f"unknown audio encoding {encoding}")
