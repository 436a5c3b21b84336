"""The real `tiny` engine end to end: depthformer sampling, codec decode, crossfade, state."""

import dataclasses

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.engine import ChunkJob
from services.generator.models import create_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return create_engine(
        "tiny", AssetStore(tmp_path_factory.getbasetemp() / "assets"), max_batch_size=4
    )


def style(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(facts.STYLE_EMBEDDING_DIM).astype(np.float32)


def test_a_chunk_has_the_shapes_ranges_and_state_of_design_3_4(engine):
    out, again, other_seed, other_style = engine.generate(
        [
            ChunkJob(SessionState.fresh(), style(1), SamplingSettings(seed=7)),
            ChunkJob(SessionState.fresh(), style(1), SamplingSettings(seed=7)),
            ChunkJob(SessionState.fresh(), style(1), SamplingSettings(seed=8)),
            ChunkJob(SessionState.fresh(), style(2), SamplingSettings(seed=7)),
        ]
    )
    assert (
        out.audio.shape == (facts.CHUNK_SAMPLES, facts.CHANNELS) and out.audio.dtype == np.float32
    )
    assert np.all(np.isfinite(out.audio)) and np.abs(out.audio).max() <= 1.0
    assert np.abs(out.audio).max() > 0.01
    new = out.state.context_tokens[-facts.CHUNK_FRAMES :]
    assert np.all((new >= 0) & (new < facts.CODEBOOK_SIZE))  # 800 codes, each inside its level
    assert np.all(
        out.state.context_tokens[: -facts.CHUNK_FRAMES] == -1
    )  # nothing else generated yet
    assert out.state.chunk_index == 1
    assert out.state.crossfade_tail.shape == (facts.CROSSFADE_SAMPLES, facts.CHANNELS)
    np.testing.assert_array_equal(out.audio, again.audio)  # same seed, style and config
    np.testing.assert_array_equal(out.state.context_tokens, again.state.context_tokens)
    assert not np.array_equal(out.state.context_tokens, other_seed.state.context_tokens)
    assert not np.array_equal(out.state.context_tokens, other_style.state.context_tokens)


def test_a_session_gets_the_same_chunk_alone_or_in_a_batch_with_other_settings(engine):
    first = engine.generate([ChunkJob(SessionState.fresh(), style(3), SamplingSettings(seed=5))])[0]
    job = ChunkJob(first.state, style(3), SamplingSettings(temperature=0.9, top_k=10, seed=5))
    alone = engine.generate([job])[0]
    batched = engine.generate(
        [
            ChunkJob(
                SessionState.fresh(), None, SamplingSettings(temperature=2.0, top_k=0, seed=1)
            ),
            job,
            ChunkJob(first.state, style(4), SamplingSettings(guidance=0.0, seed=9)),
        ]
    )[1]
    np.testing.assert_array_equal(alone.state.context_tokens, batched.state.context_tokens)
    np.testing.assert_allclose(alone.audio, batched.audio, atol=1e-6)
    assert alone.state.chunk_index == 2


def test_a_short_chunk_is_its_frames_conditioned_on_the_whole_context(engine):
    first = engine.generate([ChunkJob(SessionState.fresh(), style(5), SamplingSettings(seed=2))])[0]
    long_job = ChunkJob(first.state, style(5), SamplingSettings(seed=6))
    short_job = dataclasses.replace(long_job, chunk_frames=10)
    long = engine.generate([long_job])[0]
    short, other = engine.generate(
        [short_job, dataclasses.replace(short_job, sampling=SamplingSettings(top_k=3, seed=1))]
    )
    assert short.audio.shape == (10 * facts.SAMPLES_PER_FRAME, facts.CHANNELS)
    assert short.state.chunk_index == 2
    # The context advanced by 10 frames: the 50 of the first chunk moved back by 10 ...
    np.testing.assert_array_equal(short.state.context_tokens[:-10], first.state.context_tokens[10:])
    # ... and the 10 new ones are what the 50-frame chunk begins with: each frame is sampled
    # from the same context, the frames before it and the same uniforms, whatever the length.
    np.testing.assert_array_equal(
        short.state.context_tokens[-10:], long.state.context_tokens[-50:-40]
    )
    # In a batch of its length with other settings, a session gets what it gets alone.
    alone = engine.generate([short_job])[0]
    np.testing.assert_array_equal(alone.state.context_tokens, short.state.context_tokens)
    np.testing.assert_allclose(alone.audio, short.audio, atol=1e-6)
    np.testing.assert_allclose(alone.state.crossfade_tail, short.state.crossfade_tail, atol=1e-6)
    assert not np.array_equal(other.state.context_tokens, short.state.context_tokens)


def test_batches_in_flight_together_get_what_each_gets_alone(engine):
    one = ChunkJob(SessionState.fresh(), style(3), SamplingSettings(seed=5))
    other = ChunkJob(SessionState.fresh(), style(6), SamplingSettings(seed=11))
    first, second = engine.start([one]), engine.start([other])  # the second before the first ends
    overlapped = first.finish() + second.finish()
    for job, output in zip((one, other), overlapped):
        alone = engine.generate([job])[0]
        np.testing.assert_array_equal(alone.state.context_tokens, output.state.context_tokens)
        np.testing.assert_array_equal(alone.state.crossfade_tail, output.state.crossfade_tail)
        np.testing.assert_allclose(alone.audio, output.audio, atol=1e-6)
    assert not np.array_equal(overlapped[0].audio, overlapped[1].audio)
