"""The Magenta RT engine's chunk algorithm, on the tiny codec with a stand-in token sampler."""

import dataclasses
import zlib

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.assets import AssetMissingError, AssetStore
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator import magenta_rt
from services.generator.engine import ChunkJob
from services.generator.magenta_rt import MagentaRTEngine
from services.generator.model import tiny_assets
from services.generator.model.codec_encoder import SpectroStreamEncoder
from services.generator.model.spectrostream import SpectroStreamDecoder
from services.generator.model.style_tokens import STYLE_QUANTIZER_ASSET, StyleQuantizer


class RecordingSampler:
    """Stands in for `sampling.TokenSampler`: codes that depend only on each row's encoder
    tokens and seed (as real per-row sampling does), and a record of every call."""

    def __init__(self):
        self.calls = []

    def sample(self, encoder_tokens, temperature, top_k, guidance, seeds, frames=50):
        self.calls.append(
            dict(
                encoder_tokens=encoder_tokens,
                temperature=temperature,
                top_k=top_k,
                guidance=guidance,
                seeds=seeds,
                frames=frames,
            )
        )
        return np.stack(
            [self.row_codes(row, seed, frames) for row, seed in zip(encoder_tokens, seeds)]
        )

    @staticmethod
    def row_codes(encoder_row, seed, frames):
        rng = np.random.default_rng([int(seed), zlib.crc32(encoder_row.tobytes())])
        return rng.integers(0, 1024, (frames, facts.DECODER_RVQ_LEVELS), dtype=np.int32)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> AssetStore:
    # One build per test session: every module points at the same directory.
    return tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))


@pytest.fixture(scope="module")
def decoder(tiny_store):
    return SpectroStreamDecoder.from_store(tiny_store, batch_buckets=(1, 2, 4))


@pytest.fixture
def sampler():
    return RecordingSampler()


@pytest.fixture
def engine(tiny_store, decoder, sampler):
    quantizer = StyleQuantizer.load(tiny_store.path(STYLE_QUANTIZER_ASSET))
    return MagentaRTEngine(
        "tiny", sampler, decoder, quantizer, SpectroStreamEncoder.from_store(tiny_store)
    )


STYLE = np.random.default_rng(9).standard_normal(768).astype(np.float32)


def _jobs():
    later = SessionState.fresh()
    later.context_tokens[-100:] = np.random.default_rng(4).integers(0, 1024, (100, 16))
    later.crossfade_tail[:] = 0.25
    later.chunk_index = 2
    return [
        ChunkJob(SessionState.fresh(), None, SamplingSettings(seed=11)),
        ChunkJob(later, STYLE, SamplingSettings(temperature=0.7, top_k=5, guidance=2.0, seed=40)),
        ChunkJob(SessionState.fresh(), STYLE, SamplingSettings(seed=11)),
    ]


def test_sampler_gets_each_rows_settings_and_seed(engine, sampler):
    engine.generate(_jobs())
    (call,) = sampler.calls
    assert call["encoder_tokens"].shape == (3, facts.ENCODER_INPUT_TOKENS)
    np.testing.assert_allclose(call["temperature"], [1.1, 0.7, 1.1])
    np.testing.assert_array_equal(call["top_k"], [40, 5, 40])
    np.testing.assert_allclose(call["guidance"], [5.0, 2.0, 5.0])
    np.testing.assert_array_equal(call["seeds"], [11, 42, 11])  # seed + chunk index


def test_style_tokens_are_quantized_per_row_and_minus_one_without_style(engine, tiny_store):
    tokens = engine.style_tokens(_jobs())
    assert tokens.shape == (3, 6) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[0], -1)
    quantizer = StyleQuantizer.load(tiny_store.path(STYLE_QUANTIZER_ASSET))
    np.testing.assert_array_equal(tokens[1:], quantizer.tokens(np.stack([STYLE, STYLE])))


def test_state_update(engine, sampler):
    jobs = _jobs()
    outputs = engine.generate(jobs)
    codes = sampler.sample(**sampler.calls[0])
    for job, out, new in zip(jobs, outputs, codes):
        assert out.audio.shape == (facts.CHUNK_SAMPLES, 2) and out.audio.dtype == np.float32
        assert np.all(np.abs(out.audio) <= 1.0)
        out.state.validate()
        assert out.state.chunk_index == job.state.chunk_index + 1
        np.testing.assert_array_equal(out.state.context_tokens[:-50], job.state.context_tokens[50:])
        np.testing.assert_array_equal(out.state.context_tokens[-50:], new)
    # The jobs' own states are left as they were.
    assert jobs[1].state.chunk_index == 2
    np.testing.assert_array_equal(jobs[0].state.context_tokens, -1)


def test_audio_is_the_decoded_chunk_crossfaded_with_the_previous_tail(engine, sampler, decoder):
    jobs = _jobs()
    outputs = engine.generate(jobs)
    codes = sampler.sample(**sampler.calls[0])
    fade = facts.CROSSFADE_SAMPLES
    # Chunk 0 decodes a frame of codes 0 first; a later chunk, its last context frame.
    first = decoder.decode(np.concatenate([np.zeros((1, 1, 16), np.int32), codes[:1]], axis=1))
    later = decoder.decode(
        np.concatenate([jobs[1].state.context_tokens[None, -1:], codes[1:2]], axis=1)
    )
    for out, decoded, previous_tail in ((outputs[0], first, 0.0), (outputs[1], later, 0.25)):
        np.testing.assert_allclose(
            out.audio[fade:], decoded[0, fade : facts.CHUNK_SAMPLES], atol=1e-6
        )
        np.testing.assert_allclose(
            out.state.crossfade_tail, decoded[0, facts.CHUNK_SAMPLES :], atol=1e-6
        )
        ramp = np.sin(np.linspace(0, np.pi / 2, fade, endpoint=False))[:, None]
        np.testing.assert_allclose(
            out.audio[:fade], decoded[0, :fade] * ramp + previous_tail * ramp[::-1], atol=1e-5
        )


def test_each_row_gets_what_it_would_get_alone(engine):
    jobs = _jobs()
    batched = engine.generate(jobs)
    for job, out in zip(jobs, batched):
        alone = engine.generate([job])[0]
        np.testing.assert_allclose(out.audio, alone.audio, atol=1e-6)
        np.testing.assert_array_equal(out.state.context_tokens, alone.state.context_tokens)


def test_consecutive_chunks_join_without_a_jump(engine):
    job = ChunkJob(SessionState.fresh(), STYLE, SamplingSettings(seed=3))
    first = engine.generate([job])[0]
    second = engine.generate([ChunkJob(first.state, STYLE, job.sampling)])[0]
    within = max(np.abs(np.diff(a.audio, axis=0)).max() for a in (first, second))
    join_step = np.abs(second.audio[0] - first.audio[-1]).max()
    assert join_step <= within


def test_empty_batch(engine):
    assert engine.generate([]) == []


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        MagentaRTEngine.create("huge", AssetStore(tmp_path), max_batch_size=1)


@pytest.mark.parametrize("model", ["base", "large"])
def test_missing_upstream_assets_say_how_to_get_them(tmp_path, model):
    with pytest.raises(AssetMissingError, match="mrt assets download"):
        MagentaRTEngine.create(model, AssetStore(tmp_path), max_batch_size=1)


def test_random_weights_need_no_upstream_files(tmp_path, monkeypatch):
    """`base` with random weights builds from the tiny codec and style assets alone (its
    depthformer shrunk here to the tiny size, to keep the test fast)."""
    from services.generator.model import configs

    monkeypatch.setitem(configs.CONFIGS, "base", configs.CONFIGS["tiny"])
    engine = MagentaRTEngine.create(
        "base", AssetStore(tmp_path), max_batch_size=1, random_weights=True
    )
    assert engine.name == "base"
    output = engine.generate([ChunkJob(SessionState.fresh(), None, SamplingSettings(seed=3))])[0]
    assert output.audio.shape == (facts.CHUNK_SAMPLES, facts.CHANNELS)
    assert output.state.chunk_index == 1
    with pytest.raises(ValueError, match="exclude"):
        MagentaRTEngine.create(
            "base",
            AssetStore(tmp_path),
            max_batch_size=1,
            random_weights=True,
            checkpoint=tmp_path / "checkpoint",
        )


def test_asset_table_names_the_upstream_paths():
    for model in ("base", "large"):
        paths = magenta_rt.MODEL_ASSET_PATHS[model]
        for needed in (
            "savedmodels/ssv2_48k_stereo/decoder",
            "savedmodels/ssv2_48k_stereo/quantizer",
            "savedmodels/musiccoca_mv212_quant",
            "savedmodels/musiccoca_mv212f_cpu_novocab",
            "vocabularies/musiccoca_mv212f_vocab.model",
        ):
            assert needed in paths
    assert "checkpoints/llm_large_x3047_c1860k.tar" in magenta_rt.MODEL_ASSET_PATHS["large"]
    assert "checkpoints/llm_base_x4286_c1860k.tar" in magenta_rt.MODEL_ASSET_PATHS["base"]
    assert magenta_rt.MODEL_ASSET_PATHS["tiny"] == []


def test_checkpoint_is_the_archive_or_its_unpacked_directory(tmp_path):
    store = AssetStore(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    archive = checkpoints / "llm_base_x4286_c1860k.tar"
    archive.write_bytes(b"tar")
    assert magenta_rt.checkpoint_path(store, "base") == archive
    (checkpoints / "llm_base_x4286_c1860k").mkdir()  # unpacked, as upstream's cache keeps it
    assert magenta_rt.checkpoint_path(store, "base") == checkpoints / "llm_base_x4286_c1860k"


def test_missing_checkpoint_raises_asset_missing(tmp_path):
    with pytest.raises(AssetMissingError, match="llm_large_x3047_c1860k.tar"):
        magenta_rt.checkpoint_path(AssetStore(tmp_path), "large")


def test_the_style_quantizer_runs_once_per_style_not_per_chunk(engine, monkeypatch):
    quantizer = engine._style_quantizer
    quantized: list[int] = []
    real_tokens = quantizer.tokens
    monkeypatch.setattr(
        quantizer,
        "tokens",
        lambda embeddings: quantized.append(len(embeddings)) or real_tokens(embeddings),
    )
    other = np.random.default_rng(10).standard_normal(768).astype(np.float32)
    first = engine.style_tokens(
        [
            ChunkJob(SessionState.fresh(), STYLE, SamplingSettings()),
            ChunkJob(SessionState.fresh(), STYLE, SamplingSettings()),
            ChunkJob(SessionState.fresh(), None, SamplingSettings()),
        ]
    )
    again = engine.style_tokens(
        [
            ChunkJob(SessionState.fresh(), other, SamplingSettings()),
            ChunkJob(SessionState.fresh(), STYLE, SamplingSettings()),
        ]
    )
    assert quantized == [1, 1]  # STYLE once (for two rows), then only the new style
    np.testing.assert_array_equal(first[0], real_tokens(STYLE[None])[0])
    np.testing.assert_array_equal(first[1], first[0])
    assert np.all(first[2] == -1)
    np.testing.assert_array_equal(again[1], first[0])
    np.testing.assert_array_equal(again[0], real_tokens(other[None])[0])


def test_a_short_chunk_decodes_its_frames_and_advances_the_context_by_them(engine, sampler):
    jobs = [dataclasses.replace(job, chunk_frames=10) for job in _jobs()]
    outputs = engine.generate(jobs)
    assert sampler.calls[0]["frames"] == 10
    codes = sampler.sample(**sampler.calls[0])
    for job, out, new in zip(jobs, outputs, codes):
        assert out.audio.shape == (10 * facts.SAMPLES_PER_FRAME, 2)
        out.state.validate()
        np.testing.assert_array_equal(out.state.context_tokens[:-10], job.state.context_tokens[10:])
        np.testing.assert_array_equal(out.state.context_tokens[-10:], new)
    with pytest.raises(ValueError, match="one chunk length"):
        engine.generate([jobs[0], _jobs()[1]])
