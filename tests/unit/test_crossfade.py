import jax
import jax.numpy as jnp
import numpy as np
import pytest

from services.common import model_facts as facts
from services.generator.model.crossfade import crossfade_chunks, crossfade_ramp, previous_frames

FADE = facts.CROSSFADE_SAMPLES
DECODED = facts.CHUNK_SAMPLES + FADE


def test_ramp_is_the_endpoint_free_quarter_sine():
    ramp = crossfade_ramp(FADE)
    assert ramp.shape == (FADE,) and ramp.dtype == np.float32
    assert ramp[0] == 0.0
    assert np.all(np.diff(ramp) > 0)
    np.testing.assert_allclose(
        ramp[FADE // 2], np.sin(np.pi / 4 * (FADE // 2) / (FADE / 2)), rtol=1e-6
    )
    assert ramp[-1] < 1.0  # endpoint excluded


def test_ramp_is_equal_power():
    ramp = crossfade_ramp(FADE)
    power = ramp**2 + ramp[::-1] ** 2
    # Exactly 1 up to the half-step offset of the endpoint-free grid (pi / 2 / n).
    np.testing.assert_allclose(power, 1.0, atol=np.pi / 2 / FADE)


def test_uncorrelated_signals_keep_their_power_through_the_fade():
    rng = np.random.default_rng(0)
    decoded = rng.standard_normal((64, DECODED, 2)).astype(np.float32)
    tails = rng.standard_normal((64, FADE, 2)).astype(np.float32)
    chunks, _ = crossfade_chunks(decoded, tails)
    fade_power = np.mean(chunks[:, :FADE] ** 2)
    np.testing.assert_allclose(fade_power, 1.0, atol=0.02)


def test_split_keeps_the_last_frame_as_tail_and_fades_the_first():
    rng = np.random.default_rng(1)
    decoded = rng.standard_normal((2, DECODED, 2)).astype(np.float32)
    tails = rng.standard_normal((2, FADE, 2)).astype(np.float32)
    chunks, next_tails = crossfade_chunks(decoded, tails)
    assert chunks.shape == (2, facts.CHUNK_SAMPLES, 2) and chunks.dtype == np.float32
    np.testing.assert_array_equal(next_tails, decoded[:, -FADE:])
    np.testing.assert_array_equal(chunks[:, FADE:], decoded[:, FADE : facts.CHUNK_SAMPLES])
    ramp = crossfade_ramp(FADE)[:, None]
    np.testing.assert_allclose(
        chunks[:, :FADE], decoded[:, :FADE] * ramp + tails * ramp[::-1], rtol=1e-6
    )


def test_first_chunk_fades_in_from_silence():
    decoded = np.ones((1, DECODED, 2), np.float32)
    chunks, _ = crossfade_chunks(decoded, np.zeros((1, FADE, 2), np.float32))
    assert chunks[0, 0, 0] == 0.0
    np.testing.assert_allclose(chunks[0, :FADE, 0], crossfade_ramp(FADE))


def _stream(signal: np.ndarray, chunks: int) -> np.ndarray:
    """Play `signal` through the chunking as the engine does. signal[0] is one frame before
    chunk 0, so chunk k decodes the 51 frames starting at k * 96000."""
    tail = np.zeros((1, FADE, 2), np.float32)
    played = []
    for k in range(chunks):
        start = k * facts.CHUNK_SAMPLES
        chunk, tail = crossfade_chunks(signal[None, start : start + DECODED], tail)
        played.append(chunk[0])
    return np.concatenate(played)


@pytest.mark.parametrize("kind", ["constant", "sine"])
def test_chunks_of_a_continuous_signal_join_without_a_jump(kind):
    n = 4 * facts.CHUNK_SAMPLES + DECODED
    t = np.arange(n)[:, None] / facts.SAMPLE_RATE_HZ
    if kind == "constant":
        signal = np.full((n, 2), 0.5, np.float32)
    else:
        signal = (0.5 * np.sin(2 * np.pi * np.array([220.0, 331.0]) * t)).astype(np.float32)
    played = _stream(signal, 4)
    steps = np.abs(np.diff(played, axis=0))
    joins = [k * facts.CHUNK_SAMPLES - 1 for k in range(1, 4)]
    inside = np.abs(np.diff(signal, axis=0)).max()
    # At each join the step is no bigger than the signal's own steps.
    assert steps[joins].max() <= inside + 1e-6
    # And the crossfade region of the same signal never exceeds the equal-power bump sqrt(2).
    assert np.abs(played).max() <= 0.5 * np.sqrt(2) + 1e-6


def test_the_frame_decoded_first_is_the_last_context_frame():
    rng = np.random.default_rng(2)
    context = rng.integers(0, 1024, (3, facts.CONTEXT_FRAMES, 16)).astype(np.int32)
    context[2, -1, 5] = -1  # a restored context whose last frame was never generated
    frames = previous_frames(context, np.array([0, 7, 7]))
    assert frames.shape == (3, 1, 16) and frames.dtype == np.int32
    np.testing.assert_array_equal(frames[0, 0], 0)  # first chunk: codes 0, like upstream
    np.testing.assert_array_equal(frames[1, 0], context[1, -1])
    np.testing.assert_array_equal(frames[2, 0], 0)


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError):
        crossfade_chunks(
            np.zeros((1, facts.CHUNK_SAMPLES, 2), np.float32), np.zeros((1, FADE, 2), np.float32)
        )
    with pytest.raises(ValueError):
        crossfade_chunks(np.zeros((2, DECODED, 2), np.float32), np.zeros((1, FADE, 2), np.float32))


def test_the_compiled_crossfade_is_the_numpy_one():
    rng = np.random.default_rng(3)
    decoded = rng.standard_normal((2, DECODED, 2)).astype(np.float32)
    tails = rng.standard_normal((2, FADE, 2)).astype(np.float32)
    compiled = jax.jit(lambda d, t: crossfade_chunks(d, t, xp=jnp))(decoded, tails)
    for on_device, on_host in zip(compiled, crossfade_chunks(decoded, tails)):
        np.testing.assert_allclose(on_device, on_host, rtol=1e-6, atol=1e-7)
