"""Float audio from the generator -> the bytes a client asked for.

PCM encodings are stateless (interleaved, little-endian samples). Ogg Opus is one continuous
stream per session: its encoder lives with the listener's session, so the chunks' `data`
concatenate into one valid `.opus` file whatever happens to the generators behind it, and its
timestamps count the samples sent, contiguous over pauses and failovers.
"""

from __future__ import annotations

from typing import Protocol

import av
import numpy as np

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2

DEFAULT_OPUS_BITRATE_BPS = 128_000
OPUS_BITRATE_RANGE_BPS = (6_000, 510_000)  # what libopus accepts for a stereo stream
# One Ogg page per Opus packet (20 ms): a chunk's data then holds all of its audio that the
# encoder has let go of, so a player can play it at once. The price is a page header per packet,
# about 12 kbit/s whatever the bitrate (9% at the default 128 kbit/s); longer pages would hold
# the end of each chunk back until the next one.
_OGG_PAGE_DURATION_US = 20_000


class AudioEncoder(Protocol):
    bitrate_bps: int  # bits per second of audio sent

    def encode(self, samples: np.ndarray) -> bytes:
        """``samples``: float32[frames, channels] in [-1, 1] -> the bytes of this chunk."""

    def close(self) -> None:
        """Free what the encoder holds; the session sends nothing more."""


class PcmEncoder:
    def __init__(self, encoding: int):
        if encoding not in (music_pb2.PCM_S16LE, music_pb2.PCM_F32LE):
            raise ValueError(f"not a PCM encoding: {encoding}")
        self.encoding = encoding
        bits = 32 if encoding == music_pb2.PCM_F32LE else 16
        self.bitrate_bps = facts.SAMPLE_RATE_HZ * facts.CHANNELS * bits

    def encode(self, samples: np.ndarray) -> bytes:
        if self.encoding == music_pb2.PCM_F32LE:
            return np.ascontiguousarray(samples, dtype="<f4").tobytes()
        clipped = np.clip(samples, -1.0, 1.0)
        return np.ascontiguousarray(np.round(clipped * 32767.0), dtype="<i2").tobytes()

    def close(self) -> None:
        pass


class _Pieces:
    """A write-only, unseekable sink for the Ogg muxer: what it wrote since the last `take`."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._pieces = b"".join(self._pieces), []
        return data


class OggOpusEncoder:
    """One Ogg Opus stream (libopus through PyAV), fed chunk by chunk.

    The first chunk's bytes start with the stream's headers. Opus looks ahead a few
    milliseconds, so each chunk's bytes end about 25 ms before its audio does; that audio
    comes with the next chunk.
    """

    def __init__(self, bitrate_bps: int = DEFAULT_OPUS_BITRATE_BPS):
        low, high = OPUS_BITRATE_RANGE_BPS
        if not low <= bitrate_bps <= high:
            raise ValueError(f"opus_bitrate must be {low}-{high} bit/s, got {bitrate_bps}")
        self.bitrate_bps = bitrate_bps
        self._sink = _Pieces()
        self._container = av.open(
            self._sink, "w", format="ogg", options={"page_duration": str(_OGG_PAGE_DURATION_US)}
        )
        # Constrained VBR: unconstrained, libopus overshoots the bitrate by half on dense
        # music; a listener's bandwidth should be what was asked for.
        self._stream = self._container.add_stream(
            "libopus", rate=facts.SAMPLE_RATE_HZ, layout="stereo", options={"vbr": "constrained"}
        )
        self._stream.bit_rate = bitrate_bps
        self._samples_sent = 0
        self._closed = False

    def encode(self, samples: np.ndarray) -> bytes:
        if self._closed:  # the codec is freed: touching it would crash the process
            raise RuntimeError("the Opus encoder is closed")
        interleaved = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            interleaved.reshape(1, -1), format="flt", layout="stereo"
        )
        frame.sample_rate = facts.SAMPLE_RATE_HZ
        frame.pts = self._samples_sent
        self._samples_sent += len(samples)
        self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def close(self) -> None:
        """Free the codec; what is still inside it (the last few ms) is dropped."""
        if not self._closed:
            self._closed = True
            self._container.close()


def make_encoder(encoding: int, opus_bitrate_bps: int = 0) -> AudioEncoder:
    """The encoder of a session; `opus_bitrate_bps` 0 means the default. Raises ValueError,
    with a message for the client, for an unknown encoding or a bitrate it cannot take."""
    if encoding == music_pb2.OGG_OPUS:
        return OggOpusEncoder(opus_bitrate_bps or DEFAULT_OPUS_BITRATE_BPS)
    if encoding not in music_pb2.AudioEncoding.values():
        raise ValueError(f"unknown audio encoding {encoding}")
    if opus_bitrate_bps:
        raise ValueError("opus_bitrate applies to the OGG_OPUS encoding only")
    return PcmEncoder(encoding)
