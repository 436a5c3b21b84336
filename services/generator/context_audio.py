"""Audio written into sessions' contexts before a chunk: live-input mixes and initial audio.

The gateway sends the audio (docs/model.md, "Audio injection"); here it is encoded to codec
codes, in one batched encoder pass per audio length for all the sessions of a batch that have
some, and the codes replace the newest context frames.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import Histogram

from services.common import model_facts as facts
from services.common.metrics import LATENCY_BUCKETS_S
from services.generator.engine import ChunkJob

ENCODE_SECONDS = Histogram(
    "mrt_generator_injection_encode_seconds",
    "Wall time of one batched encoder pass over injected audio",
    buckets=LATENCY_BUCKETS_S,
)

INITIAL_AUDIO_MAX_SAMPLES = round(facts.INITIAL_AUDIO_SECONDS * facts.SAMPLE_RATE_HZ)


@dataclasses.dataclass(frozen=True)
class ContextAudio:
    """float32[T, 2] audio to encode; the first ``dropped_frames`` encoded frames are thrown
    away and the rest replace the newest context frames."""

    audio: np.ndarray
    dropped_frames: int
    is_mix: bool = False  # a live-input mix (a newer one replaces it), not initial audio

    @classmethod
    def injected_mix(cls, data: bytes) -> ContextAudio:
        """A live-input mix from the wire; raises ValueError unless it is exactly 66 frames."""
        expected = facts.INJECTION_MIX_SAMPLES * facts.CHANNELS * 4
        if len(data) != expected:
            raise ValueError(
                f"inject.mix must be {expected} bytes (66 frames of float32 stereo), "
                f"got {len(data)}"
            )
        return cls(_finite_stereo(data, "inject.mix"), facts.INJECTION_EDGE_FRAMES, is_mix=True)

    @classmethod
    def initial_audio(cls, data: bytes) -> ContextAudio:
        """A session's initial audio from the wire: float32 stereo, 1 sample to 10 s. It is
        encoded behind silence, as 10 s (one compiled shape for every clip), and only the
        clip's frames are written: its end lands on the newest context frame."""
        if not data or len(data) % (facts.CHANNELS * 4):
            raise ValueError("initial_audio must be whole float32 stereo samples")
        if len(data) > INITIAL_AUDIO_MAX_SAMPLES * facts.CHANNELS * 4:
            raise ValueError("initial_audio must be at most 10 s")
        clip = _finite_stereo(data, "initial_audio")
        padded = np.zeros((INITIAL_AUDIO_MAX_SAMPLES, facts.CHANNELS), np.float32)
        padded[len(padded) - len(clip) :] = clip
        clip_frames = -(-len(clip) // facts.SAMPLES_PER_FRAME)
        return cls(padded, facts.CONTEXT_FRAMES - clip_frames)


def _finite_stereo(data: bytes, name: str) -> np.ndarray:
    audio = np.frombuffer(data, "<f4").astype(np.float32).reshape(-1, facts.CHANNELS)
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{name} must be finite")
    return audio


def write_context_audio(jobs: Sequence[ChunkJob], encoder) -> list[ChunkJob]:
    """The jobs with their context audio encoded into their contexts, in the order it came
    (initial audio, then a mix); jobs without any are unchanged.

    ``encoder``: a `codec_encoder.SpectroStreamEncoder` (anything with its `encode`)."""
    jobs = list(jobs)
    step = 0
    while True:  # one round per position in the jobs' queues; one encoder pass per length
        by_length: dict[int, list[int]] = {}
        for row, job in enumerate(jobs):
            if step < len(job.context_audio):
                by_length.setdefault(len(job.context_audio[step].audio), []).append(row)
        if not by_length:
            break
        for rows in by_length.values():
            started = time.perf_counter()
            codes = encoder.encode(np.stack([jobs[row].context_audio[step].audio for row in rows]))
            ENCODE_SECONDS.observe(time.perf_counter() - started)
            for row, row_codes in zip(rows, codes):
                job = jobs[row]
                written = row_codes[job.context_audio[step].dropped_frames :][
                    -facts.CONTEXT_FRAMES :
                ]
                context = job.state.context_tokens.copy()
                context[len(context) - len(written) :] = written
                jobs[row] = dataclasses.replace(
                    job, state=dataclasses.replace(job.state, context_tokens=context)
                )
        step += 1
    return [
        dataclasses.replace(job, context_audio=()) if job.context_audio else job for job in jobs
    ]
