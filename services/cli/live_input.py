"""``mrt stream --input-audio``: a file streamed to the gateway as live audio input."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import numpy as np
import soundfile
import soxr

from services.cli.options import UsageError
from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2

PIECE_SECONDS = 0.1  # one audio_input message per 100 ms, as a live source sends
_PIECE_SAMPLES = round(PIECE_SECONDS * facts.SAMPLE_RATE_HZ)


def read_input_file(data: bytes) -> np.ndarray:
    """float32[n, 2] at 48 kHz from a wav / mp3 / ogg file (mono is doubled, more is cut)."""
    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except soundfile.SoundFileError as err:
        raise UsageError(f"--input-audio could not be decoded: {err}") from None
    if len(samples) == 0:
        raise UsageError("--input-audio holds no audio")
    samples = (
        np.repeat(samples, facts.CHANNELS, axis=1)
        if samples.shape[1] == 1
        else samples[:, : facts.CHANNELS]
    )
    if sample_rate != facts.SAMPLE_RATE_HZ:
        samples = soxr.resample(samples, sample_rate, facts.SAMPLE_RATE_HZ)
    return np.ascontiguousarray(samples, np.float32)


class InputStreamer:
    """Sends ``audio`` as 100 ms PCM_S16LE messages, each when the listener's timeline (which
    starts when ``start`` is called, at PLAY) reaches its position minus ``lead_s``."""

    def __init__(
        self,
        audio: np.ndarray,
        send: Callable[[music_pb2.StreamRequest], None],
        *,
        lead_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._audio = audio
        self._send = send
        self._lead_s = lead_s
        self._clock = clock
        self._started = 0.0  # the clock at `start`
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="input-audio", daemon=True)

    def start(self) -> None:
        """Start the timeline now: the first piece is sent before this returns, the rest by a
        thread as the timeline reaches them."""
        self._started = self._clock()
        self._send_piece(0)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        for first in range(_PIECE_SAMPLES, len(self._audio), _PIECE_SAMPLES):
            due = self._started + first / facts.SAMPLE_RATE_HZ - self._lead_s
            if self._stopped.wait(max(0.0, due - self._clock())):
                return
            self._send_piece(first)

    def _send_piece(self, first: int) -> None:
        samples = self._audio[first : first + _PIECE_SAMPLES]
        pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        message = music_pb2.AudioInput(
            data=pcm,
            encoding=music_pb2.PCM_S16LE,
            sample_rate=facts.SAMPLE_RATE_HZ,
            channels=facts.CHANNELS,
        )
        if first == 0:
            message.start_seconds = 0.0
        self._send(music_pb2.StreamRequest(audio_input=message))
