"""The depthformer against the upstream model's own logits, and its incremental decode
against its teacher-forced pass."""

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from services.common import model_facts as facts
from services.generator.model import convert, tokens
from services.generator.model.configs import CONFIGS, DepthformerConfig
from services.generator.model.depthformer import Depthformer, EncoderPasses, decode_chunk

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "upstream_v1"
LEVEL_COLUMNS = (
    facts.CODEC_TOKEN_OFFSET
    + facts.CODEBOOK_SIZE * (np.arange(facts.DECODER_STEPS) % 16)[:, None]
    + np.arange(facts.CODEBOOK_SIZE)[None, :]
)  # [800, 1024] vocabulary ids


# The logits upstream's own model computed from the checkpoint (see the fixture's README):
# the file must stay byte for byte what upstream produced.
REFERENCE_SHA256 = "fc3a885ba7c90f72f90eb18fe2f3ccd0a4929e49064f87a2018e5d92e8453871"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "reference_tiny.npz"))


@pytest.fixture(scope="module")
def params():
    return convert.load_checkpoint(FIXTURES / "t5x_checkpoint_tiny", CONFIGS["tiny"])


def test_the_reference_is_upstreams_file_unchanged():
    digest = hashlib.sha256((FIXTURES / "reference_tiny.npz").read_bytes()).hexdigest()
    assert digest == REFERENCE_SHA256


def test_tiny_is_the_size_of_the_upstream_checkpoint():
    dims = json.loads((FIXTURES / "config_tiny.json").read_text())["dims"]
    assert DepthformerConfig.from_size_macros(dims) == CONFIGS["tiny"]


def _teacher_forced_hidden(config, params, reference):
    model = Depthformer(config)
    run = jax.jit(
        lambda p, e, d: model.apply({"params": p}, e, d, method=Depthformer.teacher_forced_hidden)
    )
    return np.asarray(
        run(params, reference["encoder_input_tokens"], reference["decoder_input_tokens"]),
        np.float32,
    )


def _level_logits(hidden, params):
    kernel = np.asarray(params["logits_dense"]["kernel"])
    return np.einsum("btd,tdv->btv", hidden, kernel[:, LEVEL_COLUMNS].transpose(1, 0, 2))


@pytest.fixture(scope="module")
def hidden(params, reference):
    return _teacher_forced_hidden(CONFIGS["tiny"], params, reference)


def _assert_close(actual, expected, relative=1e-4):
    bound = relative * np.abs(expected).max()
    assert np.abs(actual - expected).max() <= bound


def test_teacher_forced_logits_match_upstream(hidden, params, reference):
    _assert_close(_level_logits(hidden, params), reference["level_logits"])
    full = hidden[:, :4] @ np.asarray(params["logits_dense"]["kernel"])
    _assert_close(full, reference["full_logits_first_positions"])


@pytest.mark.parametrize(
    "encoder_passes",
    [EncoderPasses(rows=2), EncoderPasses(rows=1, query_block=256)],
    ids=["whole", "query-blocks"],
)
def test_incremental_decode_gives_the_teacher_forced_logits(
    hidden, params, reference, encoder_passes
):
    """Feed the fixture's targets through the KV-cached loop and record each step's logits
    (1 006 encoder queries in blocks of 256 include a padded last block)."""
    config = CONFIGS["tiny"]
    target_codes = jnp.asarray(tokens.codes_from_tokens(reference["decoder_target_tokens"]))

    def force_targets(logits, frame, level, state):
        return target_codes[:, frame, level], state, logits

    run = jax.jit(
        lambda p, e: decode_chunk(
            Depthformer(config), p, e, force_targets, encoder_passes=encoder_passes
        )
    )
    codes, _, step_logits = run(params, reference["encoder_input_tokens"])
    np.testing.assert_array_equal(codes, target_codes)
    # [50, 16, rows, 1024] -> [rows, 800, 1024]
    step_logits = np.asarray(step_logits).reshape(facts.DECODER_STEPS, 2, -1).transpose(1, 0, 2)
    _assert_close(step_logits, _level_logits(hidden, params), relative=2e-5)


def test_bfloat16_activations_stay_close_to_float32(hidden, params, reference):
    bf16 = _teacher_forced_hidden(CONFIGS["tiny"].with_dtype("bfloat16"), params, reference)
    level_bf16 = _level_logits(bf16, params)
    level_f32 = _level_logits(hidden, params)
    assert np.abs(level_bf16 - level_f32).max() <= 0.03 * np.abs(level_f32).max()
    assert np.mean(level_bf16.argmax(-1) == level_f32.argmax(-1)) > 0.95


def test_bfloat16_keeps_the_decoder_residual_stream_in_float32(params):
    """Upstream's decoder casts the bfloat16 token embeddings up to float32 (its own dtype);
    the encoder stays in bfloat16."""
    model = Depthformer(CONFIGS["tiny"].with_dtype("bfloat16"))
    tokens_in = jnp.asarray([[facts.PAD_TOKEN, facts.CODEC_TOKEN_OFFSET + 5]], jnp.int32)
    decoder_embedded = model.apply(
        {"params": params}, tokens_in, method=Depthformer.embed_decoder_tokens
    )
    assert decoder_embedded.dtype == jnp.float32
    table = np.asarray(params["token_embedding"]["embedding"])
    expected = np.asarray(jnp.asarray(table[np.asarray(tokens_in)], jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(decoder_embedded), expected)
    encoded = model.apply({"params": params}, tokens_in, method=Depthformer.encode)
    assert encoded.dtype == jnp.bfloat16
    hidden_out = model.apply(
        {"params": params},
        tokens_in,
        jnp.zeros((1, 16), jnp.int32),
        method=Depthformer.teacher_forced_hidden,
    )
    assert hidden_out.dtype == jnp.bfloat16  # the final norm's output, as upstream's
