"""The mock style model: deterministic hash-seeded unit vectors for service tests."""

import numpy as np
import pytest

from services.embedder.mock_model import MockStyleModel
from services.embedder.style_model import StyleModel


def test_mock_is_a_style_model_named_mock():
    model = MockStyleModel()
    assert isinstance(model, StyleModel) and model.name == "mock"


def test_texts_give_deterministic_unit_vectors():
    first = MockStyleModel().embed_texts(["rock", "Jazz"])
    again = MockStyleModel().embed_texts(["ROCK", "jazz"])
    assert first.shape == (2, 768) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)  # case does not matter, as for MusicCoCa
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    assert abs(float(first[0] @ first[1])) < 0.3  # random directions are nearly orthogonal


def test_audio_is_keyed_by_its_samples():
    clip = np.linspace(-1, 1, 16_000, dtype=np.float32)
    changed = clip.copy()
    changed[0] += 0.01
    embeddings = MockStyleModel().embed_audio([clip, clip.copy(), changed])
    np.testing.assert_array_equal(embeddings[0], embeddings[1])
    assert not np.allclose(embeddings[0], embeddings[2])
    # A text and an audio clip never share an embedding by accident of their bytes.
    assert not np.allclose(
        MockStyleModel().embed_texts([""])[0],
        MockStyleModel().embed_audio([np.zeros(0, np.float32)])[0],
    )


def test_empty_batches_and_single_strings():
    model = MockStyleModel()
    assert model.embed_texts([]).shape == (0, 768)
    assert model.embed_audio([]).shape == (0, 768)
    with pytest.raises(TypeError):
        model.embed_texts("rock")
