import dataclasses

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.engine import ChunkJob
from services.generator.mock_engine import AMPLITUDE, MockEngine


def _job(seed=0, style=None, state=None) -> ChunkJob:
    return ChunkJob(state or SessionState.fresh(), style, SamplingSettings(seed=seed))


def _play(engine, job, chunks):
    audio, state = [], job.state
    for _ in range(chunks):
        out = engine.generate([ChunkJob(state, job.style_embedding, job.sampling)])[0]
        audio.append(out.audio)
        state = out.state
    return np.concatenate(audio), state


def test_output_shapes_and_state_bookkeeping():
    engine = MockEngine()
    job = _job(seed=3)
    out = engine.generate([job])[0]
    assert engine.name == "mock"
    assert out.audio.shape == (facts.CHUNK_SAMPLES, 2) and out.audio.dtype == np.float32
    out.state.validate()
    assert out.state.chunk_index == 1
    codes = MockEngine.chunk_codes(job)
    np.testing.assert_array_equal(out.state.context_tokens[-facts.CHUNK_FRAMES :], codes)
    np.testing.assert_array_equal(out.state.context_tokens[: -facts.CHUNK_FRAMES], -1)
    # The next chunk drops the oldest 50 frames, exactly like the model's context.
    second = engine.generate([_job(seed=3, state=out.state)])[0]
    np.testing.assert_array_equal(second.state.context_tokens[-100:-50], codes)
    assert not np.array_equal(second.state.context_tokens[-50:], codes)


def test_deterministic_and_batch_independent():
    engine = MockEngine()
    style = np.linspace(-1, 1, 768, dtype=np.float32)
    jobs = [_job(seed=1), _job(seed=2, style=style), _job(seed=1, style=style)]
    batched = engine.generate(jobs)
    for job, out in zip(jobs, batched):
        alone = engine.generate([job])[0]
        np.testing.assert_array_equal(out.audio, alone.audio)
        np.testing.assert_array_equal(out.state.context_tokens, alone.state.context_tokens)
        np.testing.assert_array_equal(out.state.crossfade_tail, alone.state.crossfade_tail)


def test_pitch_follows_style_and_seed():
    style_a = np.zeros(768, np.float32)
    style_b = np.ones(768, np.float32)
    pitches = {
        tuple(MockEngine.frequencies_hz(_job(seed, style)))
        for seed in (0, 1, 2)
        for style in (None, style_a, style_b)
    }
    assert len(pitches) > 3
    # The loudest frequency of the audio is the chosen pitch (0.5 Hz bins over 2 s).
    job = _job(seed=7, style=style_b)
    audio = MockEngine().generate([job])[0].audio
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio[:, 0]))) / 2.0
    assert abs(peak_hz - MockEngine.frequencies_hz(job)[0]) <= 1.0


def test_audio_follows_the_context_and_the_chunk_index():
    engine = MockEngine()
    first = engine.generate([_job(seed=4)])[0]
    after = _job(seed=4, state=first.state)
    same_index_fresh_context = _job(
        seed=4,
        state=dataclasses.replace(
            SessionState.fresh(), chunk_index=1, crossfade_tail=first.state.crossfade_tail
        ),
    )
    assert not np.array_equal(
        MockEngine.frequencies_hz(after), MockEngine.frequencies_hz(same_index_fresh_context)
    )
    assert not np.array_equal(
        engine.generate([after])[0].audio, engine.generate([same_index_fresh_context])[0].audio
    )
    # The same state gives the same chunk, wherever it is generated (what failover relies on).
    np.testing.assert_array_equal(
        engine.generate([after])[0].audio,
        MockEngine().generate([_job(seed=4, state=first.state)])[0].audio,
    )


def test_chunks_join_without_a_jump():
    engine = MockEngine()
    audio, state = _play(engine, _job(seed=5), chunks=3)
    assert state.chunk_index == 3
    steps = np.abs(np.diff(audio, axis=0))
    typical = steps[facts.CROSSFADE_SAMPLES : facts.CHUNK_SAMPLES].max()
    for join in (facts.CHUNK_SAMPLES, 2 * facts.CHUNK_SAMPLES):
        assert steps[join - 1].max() <= typical * 1.01


def test_empty_batch():
    assert MockEngine().generate([]) == []


def test_short_chunks_advance_the_context_and_the_audio_by_their_own_length():
    engine = MockEngine()
    short = dataclasses.replace(_job(seed=6), chunk_frames=10)
    first = engine.generate([short])[0]
    assert first.audio.shape == (10 * facts.SAMPLES_PER_FRAME, 2)
    np.testing.assert_array_equal(first.state.context_tokens[-10:], MockEngine.chunk_codes(short))
    np.testing.assert_array_equal(first.state.context_tokens[:-10], -1)
    after = dataclasses.replace(short, state=first.state)
    second = engine.generate([after])[0]
    assert second.audio.shape == (10 * facts.SAMPLES_PER_FRAME, 2)
    np.testing.assert_array_equal(
        second.state.context_tokens[-20:-10], MockEngine.chunk_codes(short)
    )
    # Chunk 1 of a 10-frame session decodes its samples from 19 200 (less the one frame in
    # front), not from 96 000: past the crossfade its audio is the sine at those samples.
    fade, chunk_samples = facts.CROSSFADE_SAMPLES, 10 * facts.SAMPLES_PER_FRAME
    seconds = (chunk_samples - fade + np.arange(chunk_samples)) / facts.SAMPLE_RATE_HZ
    pitch_hz = MockEngine.frequencies_hz(after)
    expected = AMPLITUDE * np.sin(2 * np.pi * pitch_hz * seconds[:, None])
    np.testing.assert_allclose(second.audio[fade:], expected[fade:], atol=1e-5)


def test_a_batch_of_mixed_chunk_lengths_is_refused():
    with pytest.raises(ValueError, match="one chunk length"):
        MockEngine().generate([_job(), dataclasses.replace(_job(), chunk_frames=25)])
