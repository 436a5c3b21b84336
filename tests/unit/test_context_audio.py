"""Audio written into the context (live-input mixes, initial audio) by the Magenta RT engine.

The expected codes are computed independently of the engine's JAX path: the tiny codec's
encoder and quantizer SavedModels run directly in TensorFlow."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.context_audio import ContextAudio
from services.generator.engine import ChunkJob
from services.generator.magenta_rt import MagentaRTEngine
from services.generator.model import spectrostream, tiny_assets, tokens
from services.generator.model.codec_encoder import SpectroStreamEncoder, convert_encoder
from services.generator.model.spectrostream import SpectroStreamDecoder
from services.generator.model.style_tokens import STYLE_QUANTIZER_ASSET, StyleQuantizer
from services.generator.sessions import GeneratorSession
from tests.codec_reference import tensorflow_codes


class RecordingSampler:
    """Stands in for the token sampler: fixed codes, and a record of each call's encoder input."""

    def __init__(self):
        self.encoder_tokens = []

    def sample(self, encoder_tokens, temperature, top_k, guidance, seeds, frames):
        self.encoder_tokens.append(encoder_tokens)
        return np.full((len(encoder_tokens), frames, facts.DECODER_RVQ_LEVELS), 7, np.int32)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> AssetStore:
    return tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))


@pytest.fixture(scope="module")
def engine(tiny_store):
    return MagentaRTEngine(
        "tiny",
        RecordingSampler(),
        SpectroStreamDecoder.from_store(tiny_store, batch_buckets=(1, 2, 4)),
        StyleQuantizer.load(tiny_store.path(STYLE_QUANTIZER_ASSET)),
        SpectroStreamEncoder.from_store(tiny_store),
    )


def chord(seconds: float, hz=(220.0, 330.0)) -> np.ndarray:
    t = np.arange(round(seconds * facts.SAMPLE_RATE_HZ)) / facts.SAMPLE_RATE_HZ
    left, right = (0.3 * np.sin(2 * np.pi * f * t) for f in hz)
    return np.stack([left, right], axis=1).astype(np.float32)


def previous_state() -> SessionState:
    state = SessionState.fresh()
    state.context_tokens[:] = np.random.default_rng(3).integers(0, 1024, state.context_tokens.shape)
    state.chunk_index = 4
    return state


def test_injected_mix_overwrites_the_last_58_frames_with_its_encoding(engine, tiny_store):
    mix = chord(facts.INJECTION_MIX_SAMPLES / facts.SAMPLE_RATE_HZ)
    before = previous_state()
    plain = ChunkJob(previous_state(), None, SamplingSettings(seed=1))
    injected = ChunkJob(
        before,
        None,
        SamplingSettings(seed=1),
        context_audio=(ContextAudio.injected_mix(mix.astype("<f4").tobytes()),),
    )
    engine._sampler.encoder_tokens.clear()
    outputs = engine.generate([plain, injected])  # one batch: with and without injection

    expected = tensorflow_codes(tiny_store, mix)[facts.INJECTION_EDGE_FRAMES :]
    assert expected.shape == (58, 16)
    context = outputs[1].state.context_tokens
    written = slice(-facts.CHUNK_FRAMES - 58, -facts.CHUNK_FRAMES)  # shifted by the new chunk
    np.testing.assert_array_equal(context[written], expected)
    # The older frames are untouched (moved by one chunk), and the new chunk follows.
    np.testing.assert_array_equal(
        context[: -facts.CHUNK_FRAMES - 58], before.context_tokens[facts.CHUNK_FRAMES : -58]
    )
    np.testing.assert_array_equal(context[-facts.CHUNK_FRAMES :], 7)
    # The model saw the injected frames; the session without injection saw its own context.
    (encoder_tokens,) = engine._sampler.encoder_tokens
    overwritten = before.context_tokens.copy()
    overwritten[-58:] = expected
    np.testing.assert_array_equal(
        encoder_tokens[1], tokens.build_encoder_tokens(overwritten[None], np.full((1, 6), -1))[0]
    )
    np.testing.assert_array_equal(
        encoder_tokens[0],
        tokens.build_encoder_tokens(previous_state().context_tokens[None], np.full((1, 6), -1))[0],
    )
    np.testing.assert_array_equal(
        outputs[0].state.context_tokens[:-50], previous_state().context_tokens[50:]
    )


def test_initial_audio_fills_the_end_of_a_fresh_context(engine, tiny_store):
    clip = chord(3.0, hz=(196.0, 294.0))
    job = ChunkJob(
        SessionState.fresh(),
        None,
        SamplingSettings(seed=2),
        context_audio=(ContextAudio.initial_audio(clip.astype("<f4").tobytes()),),
    )
    engine._sampler.encoder_tokens.clear()
    (output,) = engine.generate([job])
    behind_silence = np.concatenate([np.zeros((7 * facts.SAMPLE_RATE_HZ, 2), np.float32), clip])
    expected = tensorflow_codes(tiny_store, behind_silence)[-75:]  # 3 s = 75 frames
    context = output.state.context_tokens
    np.testing.assert_array_equal(context[-50 - 75 : -50], expected)
    assert np.all(context[: -50 - 75] == -1)  # never generated: MASK for the model


def test_initial_audio_then_a_mix_are_both_written_in_order(engine, tiny_store):
    session = GeneratorSession(
        session_id="s",
        state=SessionState.fresh(),
        sampling=SamplingSettings(seed=3),
        deliver=lambda result: None,
    )
    clip = chord(10.0, hz=(196.0, 294.0))
    mixes = [
        chord(facts.INJECTION_MIX_SAMPLES / facts.SAMPLE_RATE_HZ, hz=hz)
        for hz in ((220.0, 330.0), (247.0, 370.0))
    ]
    session.add_context_audio(ContextAudio.initial_audio(clip.astype("<f4").tobytes()))
    for mix in mixes:  # the second mix replaces the first, the initial audio stays
        session.add_context_audio(ContextAudio.injected_mix(mix.astype("<f4").tobytes()))
    job = ChunkJob(
        session.state, None, session.sampling, context_audio=session.take_context_audio()
    )
    assert len(job.context_audio) == 2 and session.context_audio == ()
    (output,) = engine.generate([job])
    context = output.state.context_tokens[: -facts.CHUNK_FRAMES]  # before the new chunk
    np.testing.assert_array_equal(context[:-58], tensorflow_codes(tiny_store, clip)[50:-58])
    np.testing.assert_array_equal(context[-58:], tensorflow_codes(tiny_store, mixes[1])[8:])


@pytest.mark.parametrize(
    "make, data, why",
    [
        (ContextAudio.injected_mix, b"\0" * 16, "1013760 bytes"),
        (
            ContextAudio.injected_mix,
            np.full((facts.INJECTION_MIX_SAMPLES, 2), np.nan, "<f4").tobytes(),
            "finite",
        ),
        (ContextAudio.initial_audio, b"\0" * 12, "whole"),
        (ContextAudio.initial_audio, b"\0" * (8 * 480_001), "10 s"),
    ],
)
def test_bad_context_audio_is_refused(make, data, why):
    with pytest.raises(ValueError, match=why):
        make(data)


def test_the_engine_checks_its_quantization_against_the_quantizer_savedmodel(tiny_store):
    quantizer_dir = tiny_store.path(spectrostream.QUANTIZER_ASSET)
    assert SpectroStreamEncoder.from_store(tiny_store).matches_quantizer(quantizer_dir)
    shifted = SpectroStreamEncoder(  # codebooks one level off: not what the quantizer does
        tiny_assets.tiny_codec_codebooks()[1:17],
        *convert_encoder(tiny_store.path(spectrostream.ENCODER_ASSET)),
    )
    assert not shifted.matches_quantizer(quantizer_dir)
