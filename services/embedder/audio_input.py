"""Turns the bytes of an audio prompt (a wav / mp3 / ogg file) into what MusicCoCa reads.

Audio prompts come from clients, so decoding is defensive: the size, sample rate and channel
count are checked before decoding, only the first seconds that are used are decoded (a long file
costs no more than a short one), and every way an input can be unusable ends in an
``AudioInputError`` (a ``ValueError``) whose message says what was wrong.

The result is what the style model takes: float32 mono at 16 kHz, exactly the first 10 s
(zero-padded when the prompt is shorter).
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct

import numpy as np
import soundfile
import soxr

from services.common.model_facts import AUDIO_PROMPT_SECONDS, STYLE_AUDIO_SAMPLE_RATE_HZ

PROMPT_SAMPLES = round(AUDIO_PROMPT_SECONDS * STYLE_AUDIO_SAMPLE_RATE_HZ)  # 160 000
# Containers whose header gives a length at or above this do not know their length.
_UNKNOWN_LENGTH_FRAMES = 2**62
# An MP3 without a length header has its length estimated from its size, a little off when the
# file carries trailing tags; only a shortfall larger than this fraction counts as truncation.
TRUNCATION_TOLERANCE = 0.05


class AudioInputError(ValueError):
    """An audio prompt that cannot be used. Subclasses say which check refused it."""


class AudioTooLargeError(AudioInputError):
    """The file is bigger than ``AudioLimits.max_bytes``."""


class AudioEmptyError(AudioInputError):
    """The file has no bytes, or decodes to no samples."""


class AudioFormatError(AudioInputError):
    """The bytes are not an audio file of an accepted format."""


class AudioTruncatedError(AudioInputError):
    """The file ends before the audio its header announces."""


class AudioSampleRateError(AudioInputError):
    """The sample rate is outside the accepted range."""


class AudioChannelCountError(AudioInputError):
    """The channel count is outside the accepted range."""


class AudioNonFiniteError(AudioInputError):
    """The samples contain NaN or infinity."""


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """What an audio prompt may be. The defaults suit the public API (the first 10 s are used)."""

    max_bytes: int = 10 * 1024 * 1024
    max_seconds_decoded: float = AUDIO_PROMPT_SECONDS
    min_sample_rate_hz: int = 8_000
    max_sample_rate_hz: int = 192_000
    max_channels: int = 8
    formats: tuple[str, ...] = ("WAV", "WAVEX", "MP3", "OGG")  # libsndfile's format names

    def __post_init__(self):
        if not 0 < self.max_seconds_decoded <= AUDIO_PROMPT_SECONDS:
            raise ValueError(f"max_seconds_decoded must be in (0, {AUDIO_PROMPT_SECONDS}]")


def decode_audio_prompt(data: bytes, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """float32[160000]: the first 10 s of the prompt, mono, 16 kHz, zero-padded if shorter."""
    if len(data) > limits.max_bytes:
        raise AudioTooLargeError(
            f"audio prompt is {len(data)} bytes; the limit is {limits.max_bytes}"
        )
    if not data:
        raise AudioEmptyError("audio prompt is empty (0 bytes)")
    samples, sample_rate_hz = _decode_start(data, limits)
    mono = samples.mean(axis=1, dtype=np.float32)
    if sample_rate_hz != STYLE_AUDIO_SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, sample_rate_hz, STYLE_AUDIO_SAMPLE_RATE_HZ)
    prompt = np.zeros(PROMPT_SAMPLES, dtype=np.float32)
    usable = min(len(mono), PROMPT_SAMPLES)
    prompt[:usable] = mono[:usable]
    if not np.isfinite(prompt).all():
        raise AudioNonFiniteError("audio prompt contains non-finite samples (NaN or infinity)")
    return prompt


def _decode_start(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Check the header, then decode only the first ``max_seconds_decoded``: float32[frames, ch]."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            _check_header(audio, limits)
            wanted_frames = math.ceil(limits.max_seconds_decoded * audio.samplerate)
            samples = audio.read(frames=wanted_frames, dtype="float32", always_2d=True)
            declared_frames = _announced_frames(audio, data)
            sample_rate_hz = audio.samplerate
    except soundfile.SoundFileError as error:
        reason = getattr(error, "error_string", str(error))
        raise AudioFormatError(f"audio prompt could not be decoded: {reason}") from error
    if len(samples) == 0:
        raise AudioEmptyError("audio prompt decodes to no samples (empty or cut short)")
    if declared_frames is not None:
        expected_frames = min(declared_frames, wanted_frames)
        if len(samples) < (1.0 - TRUNCATION_TOLERANCE) * expected_frames:
            raise AudioTruncatedError(
                f"audio prompt is truncated: its header announces {declared_frames} frames, "
                f"only {len(samples)} of the first {expected_frames} could be decoded"
            )
    return samples, sample_rate_hz


def _check_header(audio: soundfile.SoundFile, limits: AudioLimits) -> None:
    if audio.format not in limits.formats:
        raise AudioFormatError(
            f"audio prompt is {audio.format}; accepted formats are {', '.join(limits.formats)}"
        )
    if not limits.min_sample_rate_hz <= audio.samplerate <= limits.max_sample_rate_hz:
        raise AudioSampleRateError(
            f"audio prompt has a sample rate of {audio.samplerate} Hz; accepted: "
            f"{limits.min_sample_rate_hz}..{limits.max_sample_rate_hz} Hz"
        )
    if not 1 <= audio.channels <= limits.max_channels:
        raise AudioChannelCountError(
            f"audio prompt has {audio.channels} channels; accepted: 1..{limits.max_channels}"
        )


def _announced_frames(audio: soundfile.SoundFile, data: bytes) -> int | None:
    """The length the file's header announces, in frames; None where it announces none.

    libsndfile reports a WAV's length as what is actually present, so a WAV's own header is read.
    """
    if audio.format in ("WAV", "WAVEX"):
        return _wav_announced_frames(data)
    return audio.frames if audio.frames < _UNKNOWN_LENGTH_FRAMES else None


def _wav_announced_frames(data: bytes) -> int | None:
    """Walk the RIFF chunks to the ``data`` chunk: its size over the ``fmt `` block alignment."""
    offset, block_align = 12, 0
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        if chunk_id == b"fmt " and offset + 22 <= len(data):
            (block_align,) = struct.unpack_from("<H", data, offset + 20)
        elif chunk_id == b"data":
            # Writers that stream set the size to 0 or 0xFFFFFFFF: unknown length.
            known = block_align and 0 < size < 0xFFFFFFFF
            return size // block_align if known else None
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return None
