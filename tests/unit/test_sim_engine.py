"""The `sim` cost-model engine: its timing, its session state, and its bound N*."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.engine import ChunkJob
from services.generator.sim_engine import SimCost, SimEngine, SimulatedBatchError


def job(state: SessionState, seed: int = 1, style: np.ndarray | None = None) -> ChunkJob:
    return ChunkJob(state=state, style_embedding=style, sampling=SamplingSettings(seed=seed))


def test_a_batch_sleeps_a_plus_b_per_session():
    slept: list[float] = []
    engine = SimEngine(SimCost(batch_seconds=0.6, session_seconds=0.02), sleep=slept.append)
    engine.generate([job(SessionState.fresh(), seed) for seed in range(9)])
    engine.generate([job(SessionState.fresh())])
    assert slept == [pytest.approx(0.78), pytest.approx(0.62)]


@pytest.mark.parametrize("a, b, bound", [(0.25, 0.0125, 140), (0.6, 0.02, 70), (0.05, 0.05, 39)])
def test_the_held_sessions_bound_of_the_benchmark_cost_models(a, b, bound):
    assert SimCost(a, b).held_sessions_bound() == bound


def test_the_state_advances_like_a_model_and_resume_equals_continuing():
    engine = SimEngine(sleep=lambda s: None)
    style = np.linspace(-1, 1, facts.STYLE_EMBEDDING_DIM).astype(np.float32)
    first = engine.generate([job(SessionState.fresh(), 3, style)])[0]
    first.state.validate()
    assert first.state.chunk_index == 1
    assert first.audio.shape == (facts.CHUNK_SAMPLES, facts.CHANNELS)
    new = first.state.context_tokens[-facts.CHUNK_FRAMES :]
    assert np.all((new >= 0) & (new < facts.CODEBOOK_SIZE))
    assert np.all(first.state.context_tokens[: -facts.CHUNK_FRAMES] == -1)
    continued = engine.generate([job(first.state, 3, style)])[0]
    # A copy of the state (a snapshot) resumed elsewhere gives the same next chunk.
    snapshot = SessionState(
        first.state.context_tokens.copy(),
        first.state.crossfade_tail.copy(),
        first.state.chunk_index,
    )
    resumed = SimEngine(sleep=lambda s: None).generate([job(snapshot, 3, style)])[0]
    np.testing.assert_array_equal(continued.state.context_tokens, resumed.state.context_tokens)
    # The codes depend on the context (a reset context gives other codes), seed and style.
    reset = SessionState(SessionState.fresh().context_tokens, first.state.crossfade_tail, 1)
    after_reset = engine.generate([job(reset, 3, style)])[0]
    other_seed = engine.generate([job(first.state, 4, style)])[0]
    other_style = engine.generate([job(first.state, 3, None)])[0]
    last = continued.state.context_tokens[-facts.CHUNK_FRAMES :]
    for other in (after_reset, other_seed, other_style):
        assert not np.array_equal(last, other.state.context_tokens[-facts.CHUNK_FRAMES :])


def test_a_sim_engine_told_to_fail_raises_on_every_batch_served_but_starts():
    slept: list[float] = []
    engine = SimEngine(fail_batches=True, sleep=slept.append)
    engine.warmup(4)  # the generator's start-up
    assert slept == [pytest.approx(0.3)]
    for _ in range(2):
        with pytest.raises(SimulatedBatchError):
            engine.generate([job(SessionState.fresh())])


def test_short_chunks_cost_their_share_and_advance_the_context_by_their_frames():
    slept: list[float] = []
    engine = SimEngine(SimCost(batch_seconds=0.6, session_seconds=0.02), sleep=slept.append)
    jobs = [
        ChunkJob(SessionState.fresh(), None, SamplingSettings(seed=seed), chunk_frames=10)
        for seed in range(4)
    ]
    outputs = engine.generate(jobs)
    assert slept == [pytest.approx((0.6 + 0.02 * 4) * 10 / 50)]
    for output in outputs:
        assert output.audio.shape == (10 * facts.SAMPLES_PER_FRAME, facts.CHANNELS)
        assert np.all(output.state.context_tokens[:-10] == -1)
        assert np.all(output.state.context_tokens[-10:] >= 0)
