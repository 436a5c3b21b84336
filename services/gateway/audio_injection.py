"""Live audio input, listener side: the client's input and the model's output on one timeline,
and the mix that is written into the model's context before each chunk.

The algorithm (docs/model.md, "Audio injection"): before the chunk that starts at timeline
position P, take the 66 frames of the model's own output that end one frame after P (the raw
output, before the crossfade: a received chunk minus its first frame, plus the crossfade tail
of its snapshot), times the feedback; add the client's input of the same 66 frames, shifted
`input_offset_ms` back, whose last `input_gap_ms` are faded out; send that mix to the generator,
which encodes it and overwrites the last 58 context frames. Nothing is mixed while the input
window holds no input at all, so a session whose client stops playing goes on alone.

Positions are in 48 kHz samples on the listener's timeline (AudioChunk.start_seconds x 48 000).
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import soundfile
import soxr

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2

FRAME = facts.SAMPLES_PER_FRAME
# How much input the gateway keeps per session: the mix window, the largest offset and a lead.
INPUT_HISTORY_SECONDS = 16.0
INPUT_SAMPLE_RATE_RANGE_HZ = (8_000, 192_000)
INPUT_CHANNELS = (1, 2)
_BYTES_PER_SAMPLE = {music_pb2.PCM_S16LE: 2, music_pb2.PCM_F32LE: 4}
INITIAL_AUDIO_FORMATS = ("WAV", "WAVEX", "MP3", "OGG")  # libsndfile's format names
# Files whose length is unknown (or that cannot seek) are decoded from the start up to this long;
# the last 10 s of what was decoded are used.
INITIAL_AUDIO_MAX_SECONDS_READ = 600.0
_UNKNOWN_LENGTH_FRAMES = 2**62  # what libsndfile reports for a stream without a length


class AudioInputRejected(ValueError):
    """An audio_input message or initial_audio file that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class InjectionSettings:
    """A session's injection settings (GenerationConfig input_* fields), resolved."""

    feedback: float = facts.DEFAULT_INPUT_FEEDBACK
    gap_ms: float = facts.DEFAULT_INPUT_GAP_MS
    offset_ms: float = facts.DEFAULT_INPUT_OFFSET_MS
    style_weight: float = facts.DEFAULT_INPUT_STYLE_WEIGHT


def merge_injection_config(
    current: InjectionSettings, update: music_pb2.GenerationConfig
) -> InjectionSettings:
    """Apply the input_* fields set in ``update``; raises ValueError naming the first bad one."""
    changes = {}
    for field, attribute, (low, high) in (
        ("input_feedback", "feedback", facts.INPUT_FEEDBACK_RANGE),
        ("input_gap_ms", "gap_ms", facts.INPUT_GAP_MS_RANGE),
        ("input_offset_ms", "offset_ms", facts.INPUT_OFFSET_MS_RANGE),
        ("input_style_weight", "style_weight", facts.INPUT_STYLE_WEIGHT_RANGE),
    ):
        if update.HasField(field):
            value = getattr(update, field)
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{field} must be in [{low:g}, {high:g}], got {value}")
            changes[attribute] = value
    return dataclasses.replace(current, **changes)


def uses_injection_fields(update: music_pb2.GenerationConfig) -> bool:
    return any(
        update.HasField(field)
        for field in ("input_feedback", "input_gap_ms", "input_offset_ms", "input_style_weight")
    )


def gap_envelope(length: int, gap_samples: int) -> np.ndarray:
    """float32[length]: 1, then a linear fade to 0 over the first 100 samples of the trailing
    gap, then 0 for the rest of it (no gap: all ones)."""
    gap_samples = min(max(gap_samples, 0), length)
    ramp = np.linspace(1.0, 0.0, min(facts.INPUT_GAP_RAMP_SAMPLES, gap_samples))
    zeros = max(0, gap_samples - facts.INPUT_GAP_RAMP_SAMPLES)
    return np.concatenate([np.ones(length - gap_samples), ramp, np.zeros(zeros)]).astype(np.float32)


def raw_output(chunk_audio: np.ndarray, crossfade_tail: np.ndarray) -> np.ndarray:
    """The model's output for a chunk's 50 new frames before the crossfade, float32[96000, 2].

    A chunk's first frame is the previous frame crossfaded; the rest is the new frames' audio
    as decoded; the last new frame is the snapshot's crossfade tail."""
    return np.concatenate([chunk_audio[FRAME:], crossfade_tail]).astype(np.float32)


class TimelineAudio:
    """Stereo audio at positions of the listener's timeline, the newest ``capacity`` samples.

    Writing past the end moves the window forward; what falls out of it is forgotten. Reading
    gives zeros where nothing was written."""

    def __init__(self, capacity_samples: int):
        self.capacity = capacity_samples
        self._audio = np.zeros((capacity_samples, facts.CHANNELS), np.float32)
        self._written = np.zeros(capacity_samples, bool)
        self.end = 0  # one past the newest position held; holds [end - capacity, end)

    def write(self, position: int, samples: np.ndarray, still_needed_from: int = 0) -> int:
        """Store ``samples`` from ``position`` on. Returns how many written samples at or after
        ``still_needed_from`` were forgotten: pushed out of the window by this write, or too
        old to enter it."""
        stop = position + len(samples)
        forgotten = self._advance(stop, still_needed_from) if stop > self.end else 0
        start = max(position, self.end - self.capacity)
        if start < stop:
            index = np.arange(start, stop) % self.capacity
            self._audio[index] = samples[start - position :]
            self._written[index] = True
        return forgotten + max(0, min(start, stop) - max(position, still_needed_from))

    def read(self, start: int, stop: int) -> tuple[np.ndarray, bool]:
        """(float32[stop - start, 2], whether any of it was written)."""
        out = np.zeros((stop - start, facts.CHANNELS), np.float32)
        lo, hi = max(start, self.end - self.capacity), min(stop, self.end)
        if lo >= hi:
            return out, False
        index = np.arange(lo, hi) % self.capacity
        written = self._written[index]
        out[lo - start : hi - start] = np.where(written[:, None], self._audio[index], 0.0)
        return out, bool(written.any())

    def clear(self) -> None:
        self._written[:] = False

    def _advance(self, new_end: int, still_needed_from: int) -> int:
        """Move the window to end at ``new_end``; returns the written samples forgotten at or
        after ``still_needed_from``. The slots of the positions leaving are those entering."""
        leaving = np.arange(self.end - self.capacity, min(new_end - self.capacity, self.end))
        index = leaving % self.capacity
        forgotten = int((self._written[index] & (leaving >= still_needed_from)).sum())
        self._written[index] = False
        self.end = new_end
        return forgotten


@dataclasses.dataclass
class InputReceipt:
    received_s: float
    dropped_s: float


class AudioInjector:
    """One session's input and output history and its mixes."""

    def __init__(self, input_history_seconds: float = INPUT_HISTORY_SECONDS):
        self.settings = InjectionSettings()
        self.inputs = TimelineAudio(round(input_history_seconds * facts.SAMPLE_RATE_HZ))
        self.outputs = TimelineAudio(facts.INJECTION_MIX_SAMPLES + facts.CHUNK_SAMPLES)
        self.next_input_position = 0
        self.mixed_until = 0  # input before this position has been part of a mix already
        self._resampler: tuple[tuple[int, int], soxr.ResampleStream] | None = None

    # --- input ------------------------------------------------------------------------------------
    def add_input(self, message: music_pb2.AudioInput, max_message_bytes: int) -> InputReceipt:
        """Store one audio_input message; raises AudioInputRejected with the reason."""
        samples = self._decode(message, max_message_bytes)
        if message.HasField("start_seconds"):
            if not (math.isfinite(message.start_seconds) and message.start_seconds >= 0):
                raise AudioInputRejected(
                    f"audio_input.start_seconds must be >= 0, got {message.start_seconds}"
                )
            position = round(message.start_seconds * facts.SAMPLE_RATE_HZ)
        else:
            position = self.next_input_position
        dropped = self.inputs.write(position, samples, still_needed_from=self.mixed_until)
        self.next_input_position = position + len(samples)
        return InputReceipt(
            received_s=len(samples) / facts.SAMPLE_RATE_HZ, dropped_s=dropped / facts.SAMPLE_RATE_HZ
        )

    def _decode(self, message: music_pb2.AudioInput, max_message_bytes: int) -> np.ndarray:
        """float32[n, 2] at 48 kHz."""
        if len(message.data) > max_message_bytes:
            raise AudioInputRejected(
                f"audio_input message is {len(message.data)} bytes; "
                f"the limit is {max_message_bytes}: send smaller pieces"
            )
        if message.encoding not in _BYTES_PER_SAMPLE:
            raise AudioInputRejected("audio_input.encoding must be PCM_S16LE or PCM_F32LE")
        low, high = INPUT_SAMPLE_RATE_RANGE_HZ
        if not low <= message.sample_rate <= high:
            raise AudioInputRejected(
                f"audio_input.sample_rate must be in [{low}, {high}] Hz, got {message.sample_rate}"
            )
        if message.channels not in INPUT_CHANNELS:
            raise AudioInputRejected(f"audio_input.channels must be 1 or 2, got {message.channels}")
        frame_bytes = _BYTES_PER_SAMPLE[message.encoding] * message.channels
        if len(message.data) % frame_bytes:
            raise AudioInputRejected(
                f"audio_input.data is {len(message.data)} bytes, not a whole "
                f"number of {frame_bytes}-byte sample frames"
            )
        if message.encoding == music_pb2.PCM_S16LE:
            samples = np.frombuffer(message.data, "<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(message.data, "<f4").astype(np.float32)
            if not np.all(np.isfinite(samples)):
                raise AudioInputRejected("audio_input.data holds non-finite samples")
        samples = samples.reshape(-1, message.channels)
        if message.sample_rate != facts.SAMPLE_RATE_HZ:
            samples = self._resample(samples, message.sample_rate)
        if message.channels == 1:
            samples = np.repeat(samples, facts.CHANNELS, axis=1)
        return samples

    def _resample(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Streaming resampling, so consecutive messages join without edge effects."""
        key = (sample_rate, samples.shape[1])
        if self._resampler is None or self._resampler[0] != key:
            self._resampler = (
                key,
                soxr.ResampleStream(
                    sample_rate, facts.SAMPLE_RATE_HZ, samples.shape[1], dtype="float32"
                ),
            )
        return self._resampler[1].resample_chunk(samples).reshape(-1, samples.shape[1])

    # --- output -----------------------------------------------------------------------------------
    def add_output(
        self, chunk_start: int, chunk_audio: np.ndarray, crossfade_tail: np.ndarray
    ) -> None:
        """Record a chunk the generator returned, starting at timeline position ``chunk_start``."""
        self.outputs.write(chunk_start + FRAME, raw_output(chunk_audio, crossfade_tail))

    def restart_output(self) -> None:
        """The model starts afresh (STOP): its earlier output no longer precedes what follows."""
        self.outputs.clear()

    # --- the mix ----------------------------------------------------------------------------------
    def mix_for_chunk(self, chunk_start: int) -> np.ndarray | None:
        """float32[126720, 2] to inject before the chunk at ``chunk_start``; None without input."""
        window_end = chunk_start + FRAME
        window_start = window_end - facts.INJECTION_MIX_SAMPLES
        offset = round(self.settings.offset_ms * facts.SAMPLE_RATE_HZ / 1000.0)
        inputs, any_input = self.inputs.read(window_start - offset, window_end - offset)
        self.mixed_until = max(self.mixed_until, window_end - offset)
        if not any_input:
            return None
        gap = round(self.settings.gap_ms * facts.SAMPLE_RATE_HZ / 1000.0)
        inputs *= gap_envelope(len(inputs), gap)[:, None]
        outputs, _ = self.outputs.read(window_start, window_end)
        return inputs + np.float32(self.settings.feedback) * outputs

    def recent_input_wav(self) -> bytes | None:
        """The newest 10 s of input as a 48 kHz stereo WAV (for the live style prompt); None
        when that span holds no input."""
        end = self.inputs.end
        audio, any_input = self.inputs.read(
            end - round(facts.INPUT_STYLE_SECONDS * facts.SAMPLE_RATE_HZ), end
        )
        if not any_input:
            return None
        out = io.BytesIO()
        soundfile.write(
            out, np.clip(audio, -1.0, 1.0), facts.SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16"
        )
        return out.getvalue()


def mix_live_style(
    prompt_style: np.ndarray | None,
    prompt_weight_total: float,
    input_embedding: np.ndarray | None,
    input_weight: float,
) -> np.ndarray | None:
    """The prompts' mix with the live input's embedding joined at ``input_weight``:
    (sum(w_i * e_i) + w_in * e_in) / (sum(w_i) + w_in)."""
    if input_embedding is None or input_weight <= 0:
        return prompt_style
    if prompt_style is None or prompt_weight_total <= 0:
        return np.asarray(input_embedding, np.float32)
    mixed = (prompt_weight_total * prompt_style + input_weight * input_embedding) / (
        prompt_weight_total + input_weight
    )
    return np.asarray(mixed, np.float32)


def decode_initial_audio(data: bytes, max_bytes: int) -> np.ndarray:
    """The last 10 s (or less) of a wav / mp3 / ogg file, float32[n, 2] at 48 kHz."""
    if not data:
        raise AudioInputRejected("initial_audio is empty")
    if len(data) > max_bytes:
        raise AudioInputRejected(f"initial_audio is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            if audio.format not in INITIAL_AUDIO_FORMATS:
                raise AudioInputRejected(
                    f"initial_audio is {audio.format}; accepted formats are "
                    f"{', '.join(INITIAL_AUDIO_FORMATS)}"
                )
            low, high = INPUT_SAMPLE_RATE_RANGE_HZ
            if not low <= audio.samplerate <= high or not 1 <= audio.channels <= 8:
                raise AudioInputRejected(
                    f"initial_audio has {audio.channels} channels at "
                    f"{audio.samplerate} Hz; accepted: 1-8 channels, "
                    f"{low}-{high} Hz"
                )
            sample_rate = audio.samplerate
            wanted = math.ceil(facts.INITIAL_AUDIO_SECONDS * sample_rate)
            if 0 < audio.frames < _UNKNOWN_LENGTH_FRAMES and audio.seekable():
                audio.seek(max(0, audio.frames - wanted))  # decode only the last 10 s
                samples = audio.read(frames=wanted, dtype="float32", always_2d=True)
            else:
                samples = audio.read(
                    frames=math.ceil(INITIAL_AUDIO_MAX_SECONDS_READ * sample_rate),
                    dtype="float32",
                    always_2d=True,
                )
    except soundfile.SoundFileError as err:
        raise AudioInputRejected(
            f"initial_audio could not be decoded: {getattr(err, 'error_string', err)}"
        ) from None
    if len(samples) == 0:
        raise AudioInputRejected("initial_audio decodes to no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioInputRejected("initial_audio holds non-finite samples")
    samples = samples[-wanted:]
    if samples.shape[1] == 1:
        samples = np.repeat(samples, facts.CHANNELS, axis=1)
    elif samples.shape[1] > facts.CHANNELS:  # more than stereo: keep the first two
        samples = samples[:, : facts.CHANNELS]
    if sample_rate != facts.SAMPLE_RATE_HZ:
        samples = soxr.resample(samples, sample_rate, facts.SAMPLE_RATE_HZ)
    limit = round(facts.INITIAL_AUDIO_SECONDS * facts.SAMPLE_RATE_HZ)
    return np.ascontiguousarray(samples[-limit:], np.float32)
