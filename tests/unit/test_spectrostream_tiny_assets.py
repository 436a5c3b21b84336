"""The tiny codec's SavedModels: upstream signatures and layouts, deterministic, music-like."""

import os

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.generator.model import spectrostream, tiny_assets
from services.generator.model.spectrostream import import_tensorflow_cpu_only


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> AssetStore:
    # One build per test session: every module points at the same directory.
    return tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))


@pytest.fixture(scope="module")
def tf():
    return import_tensorflow_cpu_only()


def test_quantizer_has_upstream_layout_and_encoding_function(tiny_store, tf):
    quantizer = tf.saved_model.load(str(tiny_store.path(spectrostream.QUANTIZER_ASSET)))
    assert len(quantizer._quantizers) == 64
    assert tuple(quantizer._quantizers[5].embeddings.shape) == (256, 1024)  # transposed codebook
    embeddings = np.random.default_rng(0).standard_normal((2, 3, 256)).astype(np.float32)
    codes, quantized = quantizer.inference_encoding_with_tf_function(embeddings, num_quantizers=16)
    codes, quantized = codes.numpy(), quantized.numpy()
    assert codes.shape == (16, 2, 3) and codes.dtype == np.int32
    books = tiny_assets.tiny_codec_codebooks()
    # Level 0 is the nearest code to the embedding; the quantized value is the codes' sum.
    distances = np.linalg.norm(embeddings[:, :, None] - books[0][None, None], axis=-1)
    np.testing.assert_array_equal(codes[0], distances.argmin(-1))
    summed = sum(books[level][codes[level]] for level in range(16))
    np.testing.assert_allclose(quantized, summed, atol=1e-5)


def test_encoder_has_upstream_call_signature(tiny_store, tf):
    encoder = tf.saved_model.load(str(tiny_store.path(spectrostream.ENCODER_ASSET)))
    one_second = encoder(tf.zeros((1, 48_000, 2))).numpy()
    assert one_second.shape == (1, 25, 256) and one_second.dtype == np.float32
    ragged = encoder(tf.ones((2, 5 * 1920 + 7, 2))).numpy()
    assert ragged.shape == (2, 6, 256)  # ceil(T / 1920) frames
    assert np.all(np.isfinite(ragged))


def test_decoder_has_upstream_call_signature(tiny_store, tf):
    decoder = tf.saved_model.load(str(tiny_store.path(spectrostream.DECODER_ASSET)))
    audio = decoder(tf.random.normal((2, 4, 256), seed=1)).numpy()
    assert audio.shape == (2, 4 * 1920, 2) and audio.dtype == np.float32
    assert np.all(np.abs(audio) < 1.0)


def test_codebooks_are_deterministic_with_fixed_norm_levels():
    books = tiny_assets.tiny_codec_codebooks()
    assert books.shape == (64, 1024, 256) and books.dtype == np.float32
    np.testing.assert_array_equal(books, tiny_assets.tiny_codec_codebooks.__wrapped__())
    norms = np.linalg.norm(books, axis=-1)
    np.testing.assert_allclose(
        norms[:, 0],
        tiny_assets.CODEC_CODE_NORM * tiny_assets.CODEC_NORM_DECAY ** np.arange(64),
        rtol=1e-5,
    )
    assert np.ptp(norms, axis=1).max() < 1e-5 * norms.max()


def test_decoded_audio_is_notes_of_the_scale(tiny_store):
    """Most of the energy sits on the synthesizer's partials (scale notes and harmonics)."""
    decoder = spectrostream.SpectroStreamDecoder.from_store(tiny_store, batch_buckets=(1,))
    codes = np.random.default_rng(5).integers(0, 1024, (1, 50, 16)).astype(np.int32)
    mono = decoder.decode(codes)[0].mean(axis=1)  # 2 s: a 0.5 Hz frequency grid
    power = np.abs(np.fft.rfft(mono)) ** 2
    partial_bins = (
        tiny_assets._note_half_hertz()[:, None] * np.arange(1, tiny_assets.HARMONICS + 1)
    ).ravel()
    near = np.zeros_like(power, dtype=bool)
    for offset in range(-8, 9):  # +-4 Hz: sidebands of the amplitude envelopes
        near[np.clip(partial_bins + offset, 0, len(power) - 1)] = True
    assert power[near].sum() / power.sum() > 0.9
    assert near.mean() < 0.02  # ... while those bins are a tiny part of the spectrum
    # Spectral flatness: about 0.56 for white noise, near 0 for a few steady tones.
    flatness = np.exp(np.mean(np.log(power[1:] + 1e-20))) / np.mean(power[1:])
    assert flatness < 1e-3


def test_oscillators_repeat_every_chunk_hop():
    table = tiny_assets._note_wavetable()
    assert table.shape == (2 * facts.SAMPLE_RATE_HZ, tiny_assets.NOTES)
    # One period: continuing past the end wraps to the start without a jump.
    steps = np.abs(np.diff(np.concatenate([table, table[:1]]), axis=0))
    np.testing.assert_allclose(steps[-1], np.abs(table[1] - table[0]), atol=1e-3)


def test_build_is_idempotent(tiny_store):
    decoder_dir = tiny_store.path(spectrostream.DECODER_ASSET)
    before = os.stat(decoder_dir / "saved_model.pb").st_mtime_ns
    tiny_assets.ensure_tiny_codec(tiny_store.root)
    assert os.stat(decoder_dir / "saved_model.pb").st_mtime_ns == before


def test_a_lost_build_race_keeps_the_winner(tmp_path):
    target = tmp_path / "asset"

    def fill_while_another_process_wins(tmp_dir):
        (tmp_dir / "mine").write_text("loser")
        target.mkdir()
        (target / "theirs").write_text("winner")

    tiny_assets.build_directory_once(target, fill_while_another_process_wins)
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert list(tmp_path.iterdir()) == [target]  # the temporary copy is gone


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def fill_and_fail(tmp_dir):
        (tmp_dir / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        tiny_assets.build_directory_once(tmp_path / "asset", fill_and_fail)
    assert list(tmp_path.iterdir()) == []


def test_encoding_then_decoding_gives_back_the_notes_played(tiny_store):
    """The tiny encoder inverts the synthesizer: a chord of scale notes, panned, comes back."""
    from services.generator.model.codec_encoder import SpectroStreamEncoder

    encoder = SpectroStreamEncoder.from_store(tiny_store)
    decoder = spectrostream.SpectroStreamDecoder.from_store(tiny_store, batch_buckets=(1,))
    notes_hz = tiny_assets._note_half_hertz()[[5, 9, 12]] / 2.0  # three notes of the scale
    t = np.arange(2 * facts.CHUNK_SAMPLES) / facts.SAMPLE_RATE_HZ
    left = sum(0.15 * np.sin(2 * np.pi * hz * t) for hz in notes_hz[:2])
    right = sum(0.15 * np.sin(2 * np.pi * hz * t) for hz in notes_hz[1:])
    played = np.stack([left, right], axis=1)[None].astype(np.float32)

    decoded = decoder.decode(encoder.encode(played))[
        0, facts.CHUNK_SAMPLES // 2 : -facts.CHUNK_SAMPLES // 2
    ]
    for channel, expected in ((0, notes_hz[:2]), (1, notes_hz[1:])):
        power = np.abs(np.fft.rfft(decoded[:, channel])) ** 2  # 2 s: 0.5 Hz bins
        strongest = np.sort(np.argsort(power)[-2:] / 2.0)
        np.testing.assert_allclose(strongest, expected, atol=1.0)
