"""Decoding Opus streams with an independent decoder (ffmpeg's command-line tool), and comparing
audio the way a listener would: duration and spectrum, not samples (Opus is lossy)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

SAMPLE_RATE_HZ = 48_000


def ffmpeg_decode(data: bytes) -> np.ndarray:
    """float32[frames, 2] at 48 kHz: what ffmpeg decodes from an Ogg Opus byte stream."""
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "ffmpeg is needed to check Opus streams (scripts/ci_system_deps.sh installs it)"
    decoded = subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "ogg",
            "-i",
            "pipe:0",
            "-f",
            "f32le",
            "-ac",
            "2",
            "-ar",
            str(SAMPLE_RATE_HZ),
            "pipe:1",
        ],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return np.frombuffer(decoded, "<f4").reshape(-1, 2)


def spectral_similarity(a: np.ndarray, b: np.ndarray, window: int = 2048) -> float:
    """Cosine similarity of the two signals' magnitude spectrograms (mono, over their common
    length): 1 for the same sound, near 0 for unrelated ones."""
    length = min(len(a), len(b)) // window * window

    def spectrogram(x: np.ndarray) -> np.ndarray:
        frames = x[:length].mean(axis=1).reshape(-1, window) * np.hanning(window)
        return np.abs(np.fft.rfft(frames, axis=1)).ravel()

    sa, sb = spectrogram(a), spectrogram(b)
    return float(sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb)))
