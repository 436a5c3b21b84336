"""The MusicCoCa path on the tiny model: upstream formats, preprocessing and embedding behaviour."""

import io
import os

import numpy as np
import pytest
import sentencepiece
import soundfile
import tensorflow as tf

from services.common.assets import AssetMissingError, AssetStore
from services.embedder import musiccoca, tiny_musiccoca
from services.embedder.audio_input import decode_audio_prompt
from services.embedder.musiccoca import MusicCoCaModel

SAVEDMODEL = "savedmodels/musiccoca_mv212f_cpu_novocab"
VOCAB = "vocabularies/musiccoca_mv212f_vocab.model"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return AssetStore(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def model(store):
    return MusicCoCaModel.create("tiny", store)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def tone(seconds: float, sample_rate_hz: int, frequencies_hz=(220.0, 277.0, 330.0)) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in frequencies_hz).astype(np.float32)


def encode(samples: np.ndarray, sample_rate_hz: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate_hz, format=fmt, subtype=subtype)
    return buffer.getvalue()


# --- the tiny assets are in the upstream formats -------------------------------------------------


def test_tiny_assets_use_the_upstream_paths(store, model):
    assert model.name == "tiny"
    assert (store.tiny_root() / SAVEDMODEL / "saved_model.pb").is_file()
    assert (store.tiny_root() / VOCAB).is_file()


def test_tiny_savedmodel_has_the_upstream_signatures(store, model):
    loaded = tf.saved_model.load(str(store.tiny_root() / SAVEDMODEL))
    assert set(loaded.signatures.keys()) == {"embed_text", "embed_music"}

    _, text_inputs = loaded.signatures["embed_text"].structured_input_signature
    assert set(text_inputs) == {"inputs_0", "inputs_0_1"}
    assert text_inputs["inputs_0"].dtype == tf.int32
    assert text_inputs["inputs_0"].shape.as_list() == [None, 128]
    assert text_inputs["inputs_0_1"].dtype == tf.float32
    assert text_inputs["inputs_0_1"].shape.as_list() == [None, 128]
    text_outputs = loaded.signatures["embed_text"].structured_outputs
    assert set(text_outputs) == {"contrastive_txt_embed", "contrastive_txt_embed_l2_normalized"}
    assert text_outputs["contrastive_txt_embed"].shape.as_list() == [None, 768]

    _, music_inputs = loaded.signatures["embed_music"].structured_input_signature
    assert set(music_inputs) == {"inputs_0"}
    assert music_inputs["inputs_0"].dtype == tf.float32
    assert music_inputs["inputs_0"].shape.as_list() == [None, 160_000]
    music_outputs = loaded.signatures["embed_music"].structured_outputs
    assert set(music_outputs) == {
        "contrastive_music_embed",
        "contrastive_music_embed_l2_normalized",
    }
    assert music_outputs["contrastive_music_embed"].shape.as_list() == [None, 768]


def test_tiny_vocabulary_has_the_upstream_special_ids(store, model):
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(store.tiny_root() / VOCAB))
    assert vocab.pad_id() == 0 and vocab.IdToPiece(0) == "<pad>"
    assert vocab.bos_id() == 1 and vocab.IdToPiece(1) == "<s>"
    assert vocab.eos_id() == 2 and vocab.unk_id() == 3
    # Music words are whole pieces, not spelled out letter by letter.
    assert len(vocab.EncodeAsIds("jazz")) == 1 and len(vocab.EncodeAsIds("synthesizer")) == 1


# --- preprocessing, as upstream does it --------------------------------------------------------


def test_text_preprocessing_prefixes_the_start_id_and_pads(store, model):
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(store.tiny_root() / VOCAB))
    ids, paddings = musiccoca.encode_texts(["Heavy Metal", ""], vocab)
    assert ids.shape == paddings.shape == (2, 128)
    assert ids.dtype == np.int32 and paddings.dtype == np.float32
    pieces = vocab.EncodeAsIds("heavy metal")
    assert ids[0, : len(pieces) + 1].tolist() == [1, *pieces]
    assert np.all(ids[0, len(pieces) + 1 :] == 0)
    assert paddings[0].tolist() == [0.0] * (len(pieces) + 1) + [1.0] * (127 - len(pieces))
    assert ids[1, 0] == 1 and np.all(ids[1, 1:] == 0)  # an empty text is just the start id
    assert paddings[1, 0] == 0.0 and np.all(paddings[1, 1:] == 1.0)


def test_long_texts_are_cut_to_128_ids(store, model):
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(store.tiny_root() / VOCAB))
    long_text = " ".join(["rock jazz blues"] * 100)
    ids, paddings = musiccoca.encode_texts([long_text], vocab)
    assert ids[0, 0] == 1
    assert ids[0, 1:].tolist() == vocab.EncodeAsIds(long_text)[:127]
    assert np.all(paddings == 0.0)


def test_audio_is_cut_into_padded_ten_second_clips():
    clips = musiccoca.split_into_clips(np.ones(250_000, np.float32))
    assert clips.shape == (2, 160_000)
    assert np.all(clips[0] == 1.0)
    assert np.all(clips[1, :90_000] == 1.0) and np.all(clips[1, 90_000:] == 0.0)
    with pytest.raises(ValueError):
        musiccoca.split_into_clips(np.zeros(0, np.float32))


# --- text embeddings ---------------------------------------------------------------------------


def test_text_embeddings_are_768_finite_floats(model):
    embeddings = model.embed_texts(["ambient pads", "", "日本の音楽", "x" * 2000])
    assert embeddings.shape == (4, 768) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    # Like MusicCoCa, the raw embedding ends in a layer norm: norm about sqrt(768), not 1.
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), np.sqrt(768), rtol=0.01)


def test_same_text_same_embedding_and_case_does_not_matter(model):
    first = model.embed_texts(["Dreamy synthwave with a driving bassline"])
    again = model.embed_texts(["dreamy SYNTHWAVE with a DRIVING bassline"])
    np.testing.assert_array_equal(first, again)


def test_different_texts_are_clearly_different(model):
    texts = ["rock", "jazz", "heavy metal", "calm ambient piano", "upbeat latin salsa"]
    embeddings = model.embed_texts(texts)
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            assert cosine(embeddings[i], embeddings[j]) < 0.8, (texts[i], texts[j])


def test_a_batch_equals_one_at_a_time(model):
    texts = ["funk", "lofi hip hop beats", "orchestral film score"]
    batch = model.embed_texts(texts)
    singles = np.concatenate([model.embed_texts([text]) for text in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_no_texts_no_embeddings(model):
    assert model.embed_texts([]).shape == (0, 768)
    with pytest.raises(TypeError):
        model.embed_texts("a single string")


# --- audio embeddings --------------------------------------------------------------------------


def test_the_same_audio_as_wav_mp3_and_ogg_embeds_alike(model):
    samples = tone(6.0, 44_100)
    prompts = [
        decode_audio_prompt(encode(samples, 44_100, fmt, subtype))
        for fmt, subtype in [("WAV", "PCM_16"), ("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS")]
    ]
    wav, mp3, ogg = model.embed_audio(prompts)
    for other in (mp3, ogg):
        assert cosine(wav, other) > 0.995
        assert np.linalg.norm(wav - other) < 0.1 * np.linalg.norm(wav)


@pytest.mark.parametrize(
    "channels, sample_rate_hz", [(1, 16_000), (2, 44_100), (1, 8_000), (2, 96_000)]
)
def test_mono_stereo_and_any_sample_rate_embed_like_the_16khz_original(
    model, channels, sample_rate_hz
):
    reference = model.embed_audio([tone(10.0, 16_000)])[0]
    samples = np.repeat(tone(10.0, sample_rate_hz)[:, None], channels, axis=1)
    prompt = decode_audio_prompt(encode(samples, sample_rate_hz, "WAV", "FLOAT"))
    embedding = model.embed_audio([prompt])[0]
    assert embedding.shape == (768,) and np.isfinite(embedding).all()
    assert cosine(embedding, reference) > 0.99


def test_silence_embeds_to_finite_values(model):
    prompt = decode_audio_prompt(encode(np.zeros(16_000, np.float32), 16_000, "WAV", "PCM_16"))
    embedding = model.embed_audio([prompt])
    assert embedding.shape == (1, 768) and np.isfinite(embedding).all()


def test_different_audio_embeds_differently(model):
    rng = np.random.default_rng(0)
    chord, melody = tone(10.0, 16_000), tone(10.0, 16_000, (523.0, 784.0))
    noise = (0.1 * rng.standard_normal(160_000)).astype(np.float32)
    embeddings = model.embed_audio([chord, melody, noise, np.zeros(160_000, np.float32)])
    for i in range(4):
        for j in range(i + 1, 4):
            assert cosine(embeddings[i], embeddings[j]) < 0.95


def test_longer_audio_averages_its_ten_second_clips(model):
    first, second = tone(10.0, 16_000), tone(5.0, 16_000, (523.0, 784.0))
    whole = model.embed_audio([np.concatenate([first, second])])[0]
    parts = model.embed_audio([first, second])
    np.testing.assert_allclose(whole, parts.mean(axis=0), atol=1e-4)


def test_audio_batch_equals_one_at_a_time(model):
    clips = [tone(10.0, 16_000), tone(3.0, 16_000, (440.0,)), np.zeros(16_000, np.float32)]
    batch = model.embed_audio(clips)
    singles = np.concatenate([model.embed_audio([clip]) for clip in clips])
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    assert model.embed_audio([]).shape == (0, 768)


# --- signatures exported with a fixed batch size (as upstream calls its music signature) --------


class _FixedBatchDoubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 768], tf.float32, name="inputs_0")])
    def double(self, inputs_0):
        return {"out": inputs_0 * 2.0}


def test_fixed_batch_signatures_are_called_in_chunks(tmp_path):
    module = _FixedBatchDoubler()
    tf.saved_model.save(module, str(tmp_path / "doubler"), signatures={"double": module.double})
    signature = tf.saved_model.load(str(tmp_path / "doubler")).signatures["double"]
    rows = np.arange(3 * 768, dtype=np.float32).reshape(3, 768)
    result = musiccoca._call_batched(signature, "out", {"inputs_0": rows})
    np.testing.assert_array_equal(result, rows * 2.0)


# --- building and loading ----------------------------------------------------------------------


def test_building_twice_changes_nothing(store, model):
    root = store.tiny_root()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    tiny_musiccoca.ensure_tiny_musiccoca(root)
    MusicCoCaModel.create("tiny", store)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    assert before == after
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files  # no staging leftovers


def test_builds_are_deterministic(tmp_path, store, model):
    tiny_musiccoca.build_tiny_musiccoca(tmp_path)
    assert (tmp_path / VOCAB).read_bytes() == (store.tiny_root() / VOCAB).read_bytes()
    fresh, ours = (
        tf.train.load_checkpoint(str(root / SAVEDMODEL / "variables" / "variables"))
        for root in (tmp_path, store.tiny_root())
    )
    names = set(fresh.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert names == set(ours.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert len(names) >= 10
    for name in names:
        np.testing.assert_array_equal(fresh.get_tensor(name), ours.get_tensor(name))


def test_a_build_that_loses_the_race_keeps_the_winner(tmp_path):
    winner, loser = tmp_path / "winner", tmp_path / "loser"
    for staging, marker in ((winner, b"first"), (loser, b"second")):
        (staging / SAVEDMODEL).mkdir(parents=True)
        (staging / SAVEDMODEL / "saved_model.pb").write_bytes(marker)
        (staging / VOCAB).parent.mkdir(parents=True)
        (staging / VOCAB).write_bytes(marker)
    root = tmp_path / "root"
    tiny_musiccoca.publish(winner, root)
    tiny_musiccoca.publish(loser, root)
    assert (root / SAVEDMODEL / "saved_model.pb").read_bytes() == b"first"
    assert (root / VOCAB).read_bytes() == b"first"


def test_the_real_model_without_its_files_says_how_to_get_them(tmp_path):
    with pytest.raises(AssetMissingError, match="musiccoca_mv212f_cpu_novocab") as raised:
        MusicCoCaModel.create("musiccoca", AssetStore(tmp_path))
    assert "tiny" in str(raised.value) and "download" in str(raised.value)


def test_the_real_model_loads_from_a_directory_in_the_upstream_layout(tmp_path, store, model):
    # The upstream layout at the top of the assets directory: exactly what the real files use.
    for rel in (SAVEDMODEL, VOCAB):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(store.tiny_root() / rel, tmp_path / rel)
    real_path = MusicCoCaModel.create("musiccoca", AssetStore(tmp_path))
    assert real_path.name == "musiccoca"
    np.testing.assert_array_equal(real_path.embed_texts(["techno"]), model.embed_texts(["techno"]))


def test_unknown_model_names_are_refused(store):
    with pytest.raises(ValueError, match="unknown style model 'huge'"):
        MusicCoCaModel.create("huge", store)
