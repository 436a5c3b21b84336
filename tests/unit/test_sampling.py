"""The compiled chunk sampler: per-row settings, guidance, determinism, batch independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from services.common import model_facts as facts
from services.generator.model import tokens
from services.generator.model.configs import CONFIGS
from services.generator.model.depthformer import Depthformer, decode_chunk, init_params
from services.generator.model.sampling import (
    TokenSampler,
    sample_codes,
    top_k_threshold,
    top_k_threshold_by_sorting,
)

CONFIG = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, seed=0)


@pytest.fixture(scope="module")
def sampler(params):
    return TokenSampler(CONFIG, params, batch_buckets=(1, 4))


def _encoder_tokens(seed: int, sessions: int) -> np.ndarray:
    """Sessions with a half-filled context and a style each."""
    rng = np.random.default_rng(seed)
    context = rng.integers(0, facts.CODEBOOK_SIZE, (sessions, 250, 16)).astype(np.int32)
    context[:, :125] = -1
    style = rng.integers(0, facts.CODEBOOK_SIZE, (sessions, 6)).astype(np.int32)
    return tokens.build_encoder_tokens(context, style)


def _settings(temperature, top_k, guidance, seeds):
    return (
        np.asarray(temperature, np.float32),
        np.asarray(top_k, np.int32),
        np.asarray(guidance, np.float32),
        np.asarray(seeds, np.int64),
    )


@pytest.mark.parametrize("threshold_fn", [top_k_threshold, top_k_threshold_by_sorting])
def test_top_k_threshold_keeps_exactly_the_top_k_with_negatives_and_ties(threshold_fn):
    rng = np.random.default_rng(0)
    rows = 12
    logits = rng.normal(size=(rows, 1024)).astype(np.float32) * 3
    logits[1, :500] = logits[1, 0]  # many ties
    logits[2] = -np.abs(logits[2])  # all negative
    logits[3] = np.round(logits[3])  # few distinct values
    logits[4] = 0.0  # all equal
    logits[5, ::2] = 1e-30  # tiny magnitudes next to ordinary ones
    logits[6] *= 1e6  # a wide range
    logits[7] = np.nextafter(np.float32(1), np.float32(2)) * (1 + (np.arange(1024) % 3) * 1e-7)
    k = np.array([1, 40, 400, 1024, 7, 513, 40, 2, 1, 1024, 300, 40], np.int32)
    threshold = np.asarray(jax.jit(threshold_fn)(logits, k))
    kth_largest = -np.sort(-logits, axis=1)[np.arange(rows), k - 1]
    np.testing.assert_array_equal(logits >= threshold[:, None], logits >= kth_largest[:, None])


def test_top_k_threshold_matches_sorting_on_random_scales_and_k():
    rng = np.random.default_rng(7)
    threshold_of = jax.jit(top_k_threshold)
    for _ in range(30):
        logits = (
            rng.normal(size=(8, 1024)) * rng.uniform(1e-3, 1e3) + rng.uniform(-50, 50)
        ).astype(np.float32)
        k = rng.integers(1, 1025, 8).astype(np.int32)
        threshold = np.asarray(threshold_of(logits, k))
        kth_largest = -np.sort(-logits, axis=1)[np.arange(8), k - 1]
        np.testing.assert_array_equal(logits >= threshold[:, None], logits >= kth_largest[:, None])


def test_the_cpu_and_accelerator_top_k_cuts_draw_the_same_codes():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(64, 1024)) * 4).astype(np.float32)
    temperature = rng.uniform(0, 2, 64).astype(np.float32)
    top_k = rng.integers(0, 1025, 64).astype(np.int32)
    uniform = rng.uniform(size=64).astype(np.float32)
    by_search = jax.jit(sample_codes)(logits, temperature, top_k, uniform)
    by_sorting = jax.jit(lambda *a: sample_codes(*a, threshold=top_k_threshold_by_sorting))(
        logits, temperature, top_k, uniform
    )
    np.testing.assert_array_equal(by_search, by_sorting)


def test_a_sampler_built_for_an_accelerator_samples_the_same_chunk(sampler, params):
    """The accelerator variants (sorting top-k cut, big encoder passes), run here on CPU."""
    accelerator_like = TokenSampler(CONFIG, params, batch_buckets=(1, 4), backend="gpu")
    encoder_tokens = _encoder_tokens(5, 3)
    settings = _settings([1.0, 0.7, 0.0], [40, 0, 40], [3.0, 0.0, 5.0], [1, 2, 3])
    np.testing.assert_array_equal(
        sampler.sample(encoder_tokens, *settings),
        accelerator_like.sample(encoder_tokens, *settings),
    )


def test_inverse_cdf_draws_follow_the_top_k_softmax():
    """A grid of 8192 uniforms gives every code its probability, to within one grid step."""
    logits = np.random.default_rng(1).normal(size=1024).astype(np.float32)
    grid = (np.arange(8192, dtype=np.float32) + 0.5) / 8192
    rows = len(grid)
    draw = jax.jit(sample_codes)
    for temperature, top_k in [(1.0, 40), (0.5, 0), (2.0, 300)]:
        codes = np.asarray(
            draw(
                np.tile(logits, (rows, 1)),
                np.full(rows, temperature, np.float32),
                np.full(rows, top_k, np.int32),
                grid,
            )
        )
        allowed = np.argsort(-logits)[: top_k or 1024]
        assert set(codes) <= set(allowed)
        weights = np.exp((logits[allowed] - logits.max()) / temperature)
        expected = np.zeros(1024)
        expected[allowed] = weights / weights.sum()
        frequencies = np.bincount(codes, minlength=1024) / rows
        assert np.abs(frequencies - expected).max() <= 2 / rows


def test_zero_temperature_and_top_1_are_greedy():
    logits = np.random.default_rng(2).normal(size=(3, 1024)).astype(np.float32)
    codes = jax.jit(sample_codes)(
        logits,
        np.array([0.0, 1.0, 3.0], np.float32),
        np.array([40, 1, 1], np.int32),
        np.array([0.9, 0.9, 0.1], np.float32),
    )
    np.testing.assert_array_equal(codes, logits.argmax(-1))


def test_a_chunk_is_50_frames_of_16_codes_in_range(sampler):
    codes = sampler.sample(_encoder_tokens(0, 1), *_settings([1.1], [40], [5.0], [7]))
    assert codes.shape == (1, 50, 16) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < facts.CODEBOOK_SIZE
    assert len(np.unique(codes)) > 100  # actually sampled, not a constant


def test_same_seed_same_codes_other_seed_other_codes(sampler):
    encoder_tokens = _encoder_tokens(1, 1)
    first = sampler.sample(encoder_tokens, *_settings([1.1], [40], [5.0], [11]))
    again = sampler.sample(encoder_tokens, *_settings([1.1], [40], [5.0], [11]))
    other = sampler.sample(encoder_tokens, *_settings([1.1], [40], [5.0], [12]))
    np.testing.assert_array_equal(first, again)
    assert np.mean(first == other) < 0.5


def test_a_session_gets_the_same_logits_alone_or_in_a_batch(params):
    """No row sees another: a session's logits at every step are its logits alone, up to the
    float32 rounding of matrix products of another shape (so its codes are the same unless a
    draw lands within that rounding of a boundary)."""
    encoder_tokens = _encoder_tokens(2, 3)
    rows = np.concatenate([encoder_tokens, tokens.cfg_uncond_copy(encoder_tokens)])
    targets = jnp.asarray(np.random.default_rng(4).integers(0, 1024, (50, 16)), jnp.int32)

    def force_targets(logits, frame, level, state):
        return jnp.broadcast_to(targets[frame, level], logits.shape[:1]), state, logits

    run = jax.jit(lambda p, e: decode_chunk(Depthformer(CONFIG), p, e, force_targets)[2])
    together = np.asarray(run(params, rows))  # [50, 16, 6, 1024]
    for session in range(3):
        alone = np.asarray(run(params, rows[[session, session + 3]]))
        np.testing.assert_allclose(
            alone,
            together[:, :, [session, session + 3]],
            rtol=0,
            atol=1e-5 * np.abs(together).max(),
        )


def test_a_batch_samples_each_session_with_its_own_settings(sampler):
    encoder_tokens = _encoder_tokens(2, 3)
    settings = _settings([1.1, 0.0, 2.0], [40, 0, 5], [5.0, 0.0, 1.5], [1, 2, 2**40 + 3])
    together = sampler.sample(encoder_tokens, *settings)
    assert sampler.bucket_for(3) == 4
    first_frame_alone = [
        sampler.sample(encoder_tokens[row : row + 1], *(s[row : row + 1] for s in settings))[0, 0]
        for row in range(3)
    ]
    np.testing.assert_array_equal(together[:, 0], first_frame_alone)


def test_greedy_codes_maximise_the_guided_teacher_forced_logits(sampler, params):
    """Temperature 0: every step's code is the argmax of (1 + w) cond - w uncond, where the
    logits come from the model's teacher-forced pass over the sampled codes (w = 0 is the
    unguided model)."""
    encoder_tokens = _encoder_tokens(3, 2)
    guidance = np.array([0.0, 3.0], np.float32)
    codes = sampler.sample(encoder_tokens, *_settings([0.0, 0.0], [0, 0], guidance, [0, 0]))
    model = Depthformer(CONFIG)
    rows = np.concatenate([encoder_tokens, tokens.cfg_uncond_copy(encoder_tokens)])
    targets = np.tile(tokens.tokens_from_codes(codes), (2, 1))
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logits = np.asarray(
        jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))(params, rows, decoder_inputs)
    )  # [4, 800, vocab]
    levels = (np.arange(800) % 16)[:, None] * 1024 + 2 + np.arange(1024)
    level_logits = np.take_along_axis(logits, np.broadcast_to(levels, (4, 800, 1024)), axis=2)
    w = guidance[:, None, None]
    mixed = (1 + w) * level_logits[:2] - w * level_logits[2:]
    chosen = np.take_along_axis(mixed, codes.reshape(2, 800, 1), axis=2)[..., 0]
    assert np.all(chosen >= mixed.max(-1) - 1e-4 * np.abs(mixed).max())


def test_guidance_zero_ignores_the_unconditional_rows(sampler):
    encoder_tokens = _encoder_tokens(4, 1)
    unrelated = _encoder_tokens(5, 1)
    for guidance, same in [(0.0, True), (5.0, False)]:
        settings = _settings([1.1], [40], [guidance], [3])
        default = sampler.sample(encoder_tokens, *settings)
        steered = sampler.sample(encoder_tokens, *settings, uncond_tokens=unrelated)
        assert np.array_equal(default, steered) == same


def test_batches_beyond_the_largest_bucket_are_refused(sampler):
    with pytest.raises(ValueError, match="bucket"):
        sampler.sample(_encoder_tokens(6, 5), *_settings([1.0] * 5, [40] * 5, [1.0] * 5, range(5)))


def test_a_short_chunk_is_the_start_of_the_long_one_and_lengths_are_bounded(sampler):
    """Frame f is drawn from the frames before it and the same uniforms, whatever the chunk
    length: 5 frames from a state and seed are the first 5 of the 50 from them."""
    encoder_tokens = _encoder_tokens(7, 2)
    settings = _settings([1.1, 0.8], [40, 5], [5.0, 1.0], [21, 22])
    long = sampler.sample(encoder_tokens, *settings)
    short = sampler.sample(encoder_tokens, *settings, frames=5)
    assert short.shape == (2, 5, 16)
    np.testing.assert_array_equal(short, long[:, :5])
    for frames in (0, 51):
        with pytest.raises(ValueError, match="frames must be in"):
            sampler.sample(encoder_tokens, *settings, frames=frames)
