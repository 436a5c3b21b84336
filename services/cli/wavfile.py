"""Writes streamed chunks to a file as they arrive: PCM to a 16-bit WAV, Ogg Opus as it is.

Writing chunk by chunk keeps memory flat on long streams, and an interrupted stream still
leaves a valid file holding exactly the audio received.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2

_S16_BYTES = 2


def decode_pcm_s16le(data: bytes, channels: int) -> np.ndarray:
    """Interleaved little-endian int16 bytes -> int16[frames, channels]."""
    frame_bytes = _S16_BYTES * channels
    if len(data) % frame_bytes:
        raise ValueError(
            f"PCM_S16LE data of {len(data)} bytes is not a whole number of "
            f"{channels}-channel frames"
        )
    return np.frombuffer(data, dtype="<i2").reshape(-1, channels)


class WavWriter:
    """A 16-bit PCM WAV file open for appending interleaved PCM_S16LE chunks."""

    def __init__(
        self,
        path: Path | str,
        *,
        sample_rate_hz: int = facts.SAMPLE_RATE_HZ,
        channels: int = facts.CHANNELS,
    ):
        self.path = Path(path)
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.frames_written = 0
        self._file = soundfile.SoundFile(
            self.path,
            mode="w",
            samplerate=sample_rate_hz,
            channels=channels,
            subtype="PCM_16",
            format="WAV",
        )

    @property
    def seconds_written(self) -> float:
        return self.frames_written / self.sample_rate_hz

    def write_pcm_s16le(self, data: bytes) -> int:
        """Append one chunk; returns its length in frames (samples per channel)."""
        frames = decode_pcm_s16le(data, self.channels)
        self._file.write(frames)
        self.frames_written += len(frames)
        return len(frames)

    def write_chunk(self, chunk: music_pb2.AudioChunk) -> None:
        self.write_pcm_s16le(chunk.data)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class OpusFileWriter:
    """An .opus file of an OGG_OPUS session: the chunks' bytes appended in order (together they
    are one Ogg Opus stream, so the file is valid after every chunk)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.seconds_written = 0.0
        self._file = open(self.path, "wb")

    @property
    def frames_written(self) -> int:
        return round(self.seconds_written * facts.SAMPLE_RATE_HZ)

    def write_chunk(self, chunk: music_pb2.AudioChunk) -> None:
        self._file.write(chunk.data)
        self._file.flush()
        self.seconds_written += chunk.duration_seconds

    def close(self) -> None:
        self._file.close()
