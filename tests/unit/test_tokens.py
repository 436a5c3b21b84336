"""The chunk algorithm's token layout."""

from pathlib import Path

import numpy as np
import pytest

from services.common import model_facts as facts
from services.generator.model import tokens

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "upstream_v1"


def _random_codes(rng, *shape):
    return rng.integers(0, facts.CODEBOOK_SIZE, shape).astype(np.int32)


def test_encoder_tokens_reproduce_the_upstream_fixture_layout():
    """Recover codes from the fixture's encoder row, rebuild it, and get the same row."""
    reference = np.load(FIXTURES / "reference_tiny.npz")["encoder_input_tokens"]
    row = reference[0]
    context_part = row[:1000].reshape(250, 4)
    context = np.full((1, 250, 16), -1, np.int32)
    known = context_part != facts.MASK_TOKEN
    level_offsets = facts.CODEC_TOKEN_OFFSET + facts.CODEBOOK_SIZE * np.arange(4)
    context[0, :, :4] = np.where(known, context_part - level_offsets, -1)
    context[0, :, 4:] = np.where(known[:, :1], 7, -1)  # deeper levels never reach the encoder
    style = (row[1000:] - facts.STYLE_TOKEN_OFFSET - facts.CODEBOOK_SIZE * np.arange(6))[
        None
    ].astype(np.int32)
    assert np.all((style >= 0) & (style < facts.CODEBOOK_SIZE))
    built = tokens.build_encoder_tokens(context, style)
    np.testing.assert_array_equal(built[0], row)
    np.testing.assert_array_equal(tokens.cfg_uncond_copy(built)[0], reference[1])


def test_encoder_token_layout_is_frame_major_with_offsets_and_masks():
    rng = np.random.default_rng(0)
    context = _random_codes(rng, 2, 250, 16)
    context[0, :30] = -1  # never generated
    style = _random_codes(rng, 2, 6)
    style[1] = -1  # no style
    built = tokens.build_encoder_tokens(context, style)
    assert built.shape == (2, 1006) and built.dtype == np.int32
    frame, level = 123, 2
    assert built[0, frame * 4 + level] == 2 + level * 1024 + context[0, frame, level]
    assert np.all(built[0, : 30 * 4] == facts.MASK_TOKEN)
    assert built[0, 1000 + 5] == 17_410 + 5 * 1024 + style[0, 5]
    assert np.all(built[1, 1000:] == facts.MASK_TOKEN)
    uncond = tokens.cfg_uncond_copy(built)
    np.testing.assert_array_equal(uncond[:, :1000], built[:, :1000])
    assert np.all(uncond[:, 1000:] == facts.MASK_TOKEN)
    assert built[0, 1000] != facts.MASK_TOKEN  # the copy left the input alone


def test_codes_and_decoder_tokens_round_trip():
    codes = _random_codes(np.random.default_rng(1), 3, 50, 16)
    decoder_tokens = tokens.tokens_from_codes(codes)
    assert decoder_tokens.shape == (3, 800)
    assert decoder_tokens[1, 16 * 7 + 9] == 2 + 9 * 1024 + codes[1, 7, 9]
    np.testing.assert_array_equal(tokens.codes_from_tokens(decoder_tokens), codes)


def test_tokens_outside_their_level_wrap_modulo_1024():
    decoder_tokens = tokens.tokens_from_codes(np.zeros((1, 50, 16), np.int32))
    decoder_tokens[0, 0] = 2 + 5 * 1024 + 77  # a level-5 token where level 0 belongs
    decoder_tokens[0, 1] = 0  # PAD
    codes = tokens.codes_from_tokens(decoder_tokens)
    assert codes[0, 0, 0] == 77
    assert codes[0, 0, 1] == (0 - 2) % 1024


@pytest.mark.parametrize("frames", [50, 10])
def test_append_to_context_drops_the_oldest_chunk(frames):
    rng = np.random.default_rng(2)
    context = _random_codes(rng, 2, 250, 16)
    new = _random_codes(rng, 2, frames, 16)
    updated = tokens.append_to_context(context, new)
    assert updated.shape == (2, 250, 16)
    np.testing.assert_array_equal(updated[:, : 250 - frames], context[:, frames:])
    np.testing.assert_array_equal(updated[:, 250 - frames :], new)


@pytest.mark.parametrize("new_shape", [(2, 51, 16), (2, 0, 16), (2, 10, 15), (10, 16)])
def test_append_to_context_refuses_other_chunk_shapes(new_shape):
    with pytest.raises(ValueError, match="new_codes"):
        tokens.append_to_context(np.zeros((2, 250, 16), np.int32), np.zeros(new_shape, np.int32))


@pytest.mark.parametrize(
    "context_shape, style_shape",
    [((250, 16), (1, 6)), ((1, 250, 15), (1, 6)), ((1, 250, 16), (1, 12))],
)
def test_wrong_shapes_are_refused(context_shape, style_shape):
    with pytest.raises(ValueError):
        tokens.build_encoder_tokens(
            np.zeros(context_shape, np.int32), np.zeros(style_shape, np.int32)
        )
