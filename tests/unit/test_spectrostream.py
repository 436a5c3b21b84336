"""SpectroStream decoding through the upstream SavedModel formats (on the tiny codec assets)."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetMissingError, AssetStore
from services.generator.model import spectrostream, tiny_assets
from services.generator.model.spectrostream import SpectroStreamDecoder

FRAMES = facts.CHUNK_FRAMES + 1


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> AssetStore:
    # One build per test session: every module points at the same directory.
    return tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))


@pytest.fixture(scope="module")
def decoder(tiny_store) -> SpectroStreamDecoder:
    return SpectroStreamDecoder.from_store(tiny_store, batch_buckets=(1, 2, 4))


def _codes(batch: int, frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, facts.CODEBOOK_SIZE, (batch, frames, 16)).astype(np.int32)


def test_codebooks_load_from_the_quantizer_savedmodel(tiny_store):
    codebooks = spectrostream.load_codec_codebooks(
        tiny_store.path(spectrostream.QUANTIZER_ASSET), levels=16
    )
    assert codebooks.shape == (16, 1024, 256) and codebooks.dtype == np.float32
    np.testing.assert_array_equal(codebooks, tiny_assets.tiny_codec_codebooks()[:16])


def test_decode_shape_dtype_and_range(decoder):
    audio = decoder.decode(_codes(3))
    assert audio.shape == (3, FRAMES * facts.SAMPLES_PER_FRAME, 2)
    assert audio.dtype == np.float32
    assert np.all(np.abs(audio) <= 1.0)
    assert audio.std() > 0.01  # it makes sound


def test_decode_is_the_decoder_network_on_summed_codebook_vectors(decoder, tiny_store):
    """The converted JAX program equals TensorFlow running the SavedModel on the RVQ sum."""
    tf = spectrostream.import_tensorflow_cpu_only()
    codes = _codes(2, frames=7, seed=3)
    codebooks = tiny_assets.tiny_codec_codebooks()[:16]
    embeddings = codebooks[np.arange(16), codes].sum(axis=2)  # [2, 7, 256]
    reference = tf.saved_model.load(str(tiny_store.path(spectrostream.DECODER_ASSET)))
    expected = reference(tf.constant(embeddings)).numpy()
    np.testing.assert_allclose(decoder.decode(codes), expected, atol=2e-5)


def test_each_row_decodes_as_it_would_alone(decoder):
    codes = _codes(3, seed=4)  # padded to the bucket of 4
    batched = decoder.decode(codes)
    for row in range(3):
        np.testing.assert_allclose(batched[row], decoder.decode(codes[row : row + 1])[0], atol=1e-6)


def test_batches_beyond_the_largest_bucket_are_refused(decoder):
    assert decoder.decode(_codes(3, frames=2)).shape == (3, 2 * facts.SAMPLES_PER_FRAME, 2)
    with pytest.raises(ValueError, match="does not fit the buckets"):
        decoder.decode(_codes(5, frames=2))


def test_bad_codes_are_refused(decoder):
    codes = _codes(1)
    codes[0, 3, 2] = -1
    with pytest.raises(ValueError):
        decoder.decode(codes)
    with pytest.raises(ValueError):
        decoder.decode(_codes(1)[..., :8])


def test_missing_codec_assets_raise_a_helpful_error(tmp_path):
    with pytest.raises(AssetMissingError, match="ssv2_48k_stereo"):
        SpectroStreamDecoder.from_store(AssetStore(tmp_path))
