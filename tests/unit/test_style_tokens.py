"""Style embedding -> 6 MusicCoCa RVQ codes, from a quantizer SavedModel in upstream format."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.generator.model import tiny_assets
from services.generator.model.spectrostream import import_tensorflow_cpu_only
from services.generator.model.style_tokens import (
    SAVED_VARIABLE_ORDER,
    STYLE_QUANTIZER_ASSET,
    StyleQuantizer,
    load_style_codebooks,
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> AssetStore:
    # One build per test session: every module points at the same directory.
    return tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))


@pytest.fixture(scope="module")
def quantizer(tiny_store) -> StyleQuantizer:
    return StyleQuantizer.load(tiny_store.path(STYLE_QUANTIZER_ASSET))


def _reference_tokens(embeddings: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """RVQ by the definition: the code at the smallest L2 distance, residual by residual."""
    residual = embeddings.astype(np.float64)
    codes = []
    for codebook in codebooks.astype(np.float64):
        nearest = np.linalg.norm(residual[:, None] - codebook[None], axis=-1).argmin(axis=1)
        codes.append(nearest)
        residual = residual - codebook[nearest]
    return np.stack(codes, axis=1)


def test_saved_variable_order_is_resolved_to_levels(tmp_path):
    """Upstream's list holds levels in string-sorted name order: 0, 1, 10, 11, 2, ..., 9."""
    tf = import_tensorflow_cpu_only()
    root = tf.__internal__.tracking.AutoTrackable()
    names = sorted(f"codebook_{level}" for level in range(12))  # how the list got its order
    root.variables = [
        tf.Variable(np.full((768, 1024), float(name.split("_")[1]), np.float32)) for name in names
    ]
    tf.saved_model.save(root, str(tmp_path / "quant"))
    codebooks = load_style_codebooks(tmp_path / "quant")
    assert codebooks.shape == (12, 1024, 768)
    np.testing.assert_array_equal(codebooks[:, 0, 0], np.arange(12))
    assert list(SAVED_VARIABLE_ORDER) == [names.index(f"codebook_{k}") for k in range(12)]


def test_tiny_quantizer_asset_holds_the_tiny_codebooks(tiny_store):
    codebooks = load_style_codebooks(tiny_store.path(STYLE_QUANTIZER_ASSET))
    np.testing.assert_array_equal(codebooks, tiny_assets.tiny_style_codebooks.__wrapped__())


def test_tokens_match_rvq_by_definition(quantizer):
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((16, 768)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)  # MusicCoCa-like unit norm
    tokens = quantizer.tokens(embeddings)
    assert tokens.shape == (16, facts.STYLE_RVQ_LEVELS) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < 1024
    expected = _reference_tokens(embeddings, tiny_assets.tiny_style_codebooks()[:6])
    np.testing.assert_array_equal(tokens, expected)


def test_a_sum_of_codebook_vectors_is_recovered():
    """With well-separated codebooks the first levels of a code sum are found again."""
    rng = np.random.default_rng(1)
    codebooks = rng.standard_normal((12, 1024, 768)).astype(np.float32)
    codebooks *= (0.1 ** np.arange(12, dtype=np.float32))[:, None, None]
    codes = rng.integers(0, 1024, (4, 12))
    embeddings = codebooks[np.arange(12), codes].sum(axis=1)
    np.testing.assert_array_equal(StyleQuantizer(codebooks).tokens(embeddings), codes[:, :6])


def test_different_styles_get_different_tokens(quantizer):
    rng = np.random.default_rng(2)
    tokens = quantizer.tokens(rng.standard_normal((8, 768)).astype(np.float32))
    assert len({tuple(row) for row in tokens}) == 8
    assert len(set(tokens[:, 0])) > 1  # not stuck on one code


def test_bad_shapes_are_refused(quantizer):
    with pytest.raises(ValueError):
        quantizer.tokens(np.zeros((2, 512), np.float32))
    with pytest.raises(ValueError):
        StyleQuantizer(np.zeros((4, 1024, 768), np.float32))
