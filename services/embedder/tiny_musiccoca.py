"""Builds the ``tiny`` MusicCoCa: a small style model in exactly the upstream file formats.

Nothing here is downloaded. From a fixed seed this module writes, under the tiny assets root:

- ``vocabularies/musiccoca_mv212f_vocab.model``: a SentencePiece model trained on the music words
  below, with upstream's special ids (0 = <pad>, 1 = <s>, the id prepended to every text,
  2 = </s>, 3 = <unk>);
- ``savedmodels/musiccoca_mv212f_cpu_novocab``: a TensorFlow SavedModel with upstream's
  ``embed_text`` and ``embed_music`` signatures (same input names, dtypes, shapes and outputs).

The network is small but real: text = token embeddings, masked mean pooling and a two-layer
projection; audio = a log-mel spectrogram (128 bands, 25 ms windows, 10 ms hop), a per-frame
projection, mean pooling over time and a two-layer projection. Both end, like MusicCoCa, in a
layer norm into the shared 768-d space. Its weights are random, so it embeds consistently rather
than meaningfully: different texts land far apart, similar audio lands close together. That is
what the service and its tests need; the real model is loaded through the same code.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece
import tensorflow as tf

from services.common.assets import move_into_place
from services.common.model_facts import STYLE_AUDIO_SAMPLE_RATE_HZ, STYLE_EMBEDDING_DIM
from services.embedder.musiccoca import (
    CLIP_SAMPLES,
    L2_NORMALIZED_SUFFIX,
    MAX_TEXT_TOKENS,
    MUSIC_EMBEDDING_OUTPUT,
    MUSIC_SIGNATURE,
    SAVEDMODEL_RELPATH,
    TEXT_EMBEDDING_OUTPUT,
    TEXT_PAD_ID,
    TEXT_SIGNATURE,
    TEXT_START_ID,
    VOCAB_RELPATH,
)

log = logging.getLogger(__name__)

SEED = 20_250_612
VOCAB_SIZE = 640  # a soft limit: the trainer stops earlier if the corpus has fewer pieces
TEXT_EMBEDDING_DIM = 128
HIDDEN_DIM = 256
MEL_BANDS = 128
FRAME_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512
MEL_FLOOR = 0.1  # log(1 + mel / floor): silence -> 0, faint codec noise stays near 0
LAYER_NORM_EPSILON = 1e-6

# The vocabulary's training text: words people use to describe music.
MUSIC_WORDS = """
rock pop jazz blues funk soul disco house techno trance dubstep drum and bass jungle garage grime
hip hop rap trap drill reggae reggaeton dancehall dub ska punk metal heavy metal death metal
black metal doom thrash grunge emo hardcore indie alternative shoegaze post rock math rock
progressive psychedelic krautrock new wave synthwave vaporwave chillwave lofi lo-fi ambient
drone noise industrial ebm electro electronica idm glitch breakbeat big beat downtempo trip hop
chillout lounge bossa nova samba salsa cumbia merengue bachata tango flamenco fado afrobeat
afrobeats highlife juju soukous mbalax gqom amapiano kwaito bhangra qawwali carnatic hindustani
raga gamelan k-pop j-pop city pop enka cantopop mandopop celtic folk country bluegrass americana
gospel spiritual r&b rnb neo soul motown doo wop rockabilly surf swing bebop big band dixieland
ragtime boogie woogie cool jazz free jazz fusion smooth jazz acid jazz latin jazz classical
baroque romantic minimalist contemporary opera choral chamber symphony orchestral film score
soundtrack video game chiptune 8-bit musical theatre cabaret polka waltz march lullaby
sea shanty yodel throat singing world music new age meditation hardstyle gabber eurodance
italo disco french house deep house tech house acid house minimal techno detroit techno
uk garage future bass footwork juke baile funk phonk hyperpop bedroom pop art pop dream pop
guitar electric guitar acoustic guitar bass guitar slide guitar steel guitar twelve string
piano grand piano upright piano electric piano rhodes wurlitzer organ hammond organ pipe organ
harpsichord clavinet celesta accordion harmonica melodica synthesizer synth analog synth moog
modular arpeggiator pad lead bassline sub bass 808 drum machine drums drum kit snare kick
hi-hat cymbal ride crash tom toms percussion congas bongos djembe tabla cajon timpani
tambourine shaker cowbell claps handclaps woodblock triangle marimba xylophone vibraphone
glockenspiel steel drum kalimba mbira handpan bells chimes violin viola cello double bass
contrabass fiddle strings string quartet harp mandolin banjo ukulele sitar sarod oud bouzouki
balalaika koto shamisen erhu guzheng pipa dulcimer zither lute flute piccolo recorder pan flute
shakuhachi bansuri clarinet bass clarinet oboe bassoon saxophone alto sax tenor sax soprano sax
baritone sax trumpet cornet flugelhorn trombone french horn tuba euphonium brass horns
bagpipes didgeridoo vocals voice choir male vocals female vocals falsetto whisper scat beatbox
vocoder autotune turntables scratching sampler samples field recordings tape loops
happy sad melancholic joyful uplifting euphoric dreamy nostalgic romantic dark moody eerie
haunting mysterious ominous menacing aggressive angry intense energetic calm peaceful serene
relaxing soothing gentle tender warm cozy bright cheerful playful whimsical quirky funny epic
heroic triumphant majestic dramatic cinematic emotional passionate sensual sexy groovy funky
bouncy hypnotic trance-like meditative spiritual hopeful bittersweet lonely longing anxious
tense suspenseful chaotic dissonant sparse minimal lush rich dense layered atmospheric spacey
cosmic ethereal airy heavy gritty raw distorted fuzzy crunchy clean crisp punchy smooth
mellow soft loud quiet slow fast upbeat midtempo laid back driving pulsing steady swinging
shuffling syncopated polyrhythmic staccato legato fast tempo slow tempo 120 bpm 90 bpm 140 bpm
major key minor key modal chromatic pentatonic blues scale harmony melody rhythm groove riff
solo chorus verse bridge hook drop build up breakdown intro outro fade out crescendo
instrumental acoustic electric live studio vintage retro modern futuristic experimental
avant-garde underground mainstream catchy anthemic lo-fi hi-fi reverb delay echo chorus effect
phaser flanger tremolo vibrato wah distortion overdrive compression sidechain saturation
bitcrushed filtered warped reversed tape saturation vinyl crackle analog warmth
1950s 1960s 1970s 1980s 1990s 2000s 80s 90s summer winter night rain ocean forest city desert
party club dance floor road trip sunset sunrise morning late night festival stadium cafe
music song track tune beat style sound genre band artist with and or of the a an in on for like
featuring without plus some lots little very more less
"""


def ensure_tiny_musiccoca(root: Path) -> None:
    """Build the tiny MusicCoCa assets under ``root`` unless they are there already.

    Safe when several processes start at once: each builds in its own staging directory and
    moves the results into place with atomic renames; the first to arrive wins.
    """
    root = Path(root)
    if all((root / rel).exists() for rel in (SAVEDMODEL_RELPATH, VOCAB_RELPATH)):
        return
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".musiccoca-build-", dir=root))
    try:
        log.info("building the tiny MusicCoCa model under %s", root)
        build_tiny_musiccoca(staging)
        publish(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, root: Path) -> None:
    """Move each built asset from ``staging`` to ``root``, keeping any another process put first."""
    for rel in (SAVEDMODEL_RELPATH, VOCAB_RELPATH):
        final = root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            move_into_place(staging / rel, final)


def build_tiny_musiccoca(out_dir: Path) -> None:
    """Write the vocabulary and the SavedModel under ``out_dir`` (upstream layout), from SEED."""
    vocab_path = Path(out_dir) / VOCAB_RELPATH
    vocab_path.parent.mkdir(parents=True, exist_ok=True)
    vocab_path.write_bytes(train_vocabulary())
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(vocab_path))
    module = TinyMusicCoCa(vocab_size=vocab.GetPieceSize(), seed=SEED)
    tf.saved_model.save(
        module,
        str(Path(out_dir) / SAVEDMODEL_RELPATH),
        signatures={TEXT_SIGNATURE: module.embed_text, MUSIC_SIGNATURE: module.embed_music},
    )


def train_vocabulary() -> bytes:
    """A SentencePiece unigram model of MUSIC_WORDS with upstream's special ids (serialized)."""
    phrases = [line.strip() for line in MUSIC_WORDS.strip().splitlines()]
    words = " ".join(phrases).split()
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(phrases + words),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=TEXT_PAD_ID,
        bos_id=TEXT_START_ID,
        eos_id=2,
        unk_id=3,
        num_threads=1,  # one thread keeps training deterministic
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _dense_init(rng: np.random.Generator, fan_in: int, fan_out: int) -> tf.Variable:
    return tf.Variable(rng.normal(0.0, fan_in**-0.5, (fan_in, fan_out)).astype(np.float32))


class _Projection(tf.Module):
    """Two dense layers (GELU between) into the style space, then a layer norm, as MusicCoCa ends."""

    def __init__(self, rng: np.random.Generator, input_dim: int):
        super().__init__()
        self.hidden_kernel = _dense_init(rng, input_dim, HIDDEN_DIM)
        self.hidden_bias = tf.Variable(rng.normal(0.0, 0.1, HIDDEN_DIM).astype(np.float32))
        self.output_kernel = _dense_init(rng, HIDDEN_DIM, STYLE_EMBEDDING_DIM)
        self.norm_scale = tf.Variable(np.ones(STYLE_EMBEDDING_DIM, np.float32))
        self.norm_bias = tf.Variable(np.zeros(STYLE_EMBEDDING_DIM, np.float32))

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        hidden = tf.nn.gelu(features @ self.hidden_kernel + self.hidden_bias)
        out = hidden @ self.output_kernel
        mean, variance = tf.nn.moments(out, axes=[-1], keepdims=True)
        embedding = (out - mean) * tf.math.rsqrt(variance + LAYER_NORM_EPSILON)
        embedding = embedding * self.norm_scale + self.norm_bias
        return embedding


class TinyMusicCoCa(tf.Module):
    """Text and audio towers into one 768-d space, exported with upstream's signatures."""

    def __init__(self, vocab_size: int, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.token_embeddings = tf.Variable(
            rng.normal(0.0, 1.0, (vocab_size, TEXT_EMBEDDING_DIM)).astype(np.float32)
        )
        self.text_projection = _Projection(rng, TEXT_EMBEDDING_DIM)
        self.frame_kernel = _dense_init(rng, MEL_BANDS, HIDDEN_DIM)
        self.frame_bias = tf.Variable(rng.normal(0.0, 0.1, HIDDEN_DIM).astype(np.float32))
        self.music_projection = _Projection(rng, HIDDEN_DIM)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, MAX_TEXT_TOKENS], tf.int32, name="inputs_0"),
            tf.TensorSpec([None, MAX_TEXT_TOKENS], tf.float32, name="inputs_0_1"),
        ]
    )
    def embed_text(self, inputs_0: tf.Tensor, inputs_0_1: tf.Tensor) -> dict[str, tf.Tensor]:
        """Token ids and paddings (1.0 = padding) -> the text's style embedding."""
        weights = (1.0 - inputs_0_1)[..., tf.newaxis]
        tokens = tf.gather(self.token_embeddings, inputs_0)
        pooled = tf.reduce_sum(tokens * weights, axis=1) / tf.maximum(
            tf.reduce_sum(weights, axis=1), 1.0
        )
        return _with_l2_normalized(TEXT_EMBEDDING_OUTPUT, self.text_projection(pooled))

    @tf.function(input_signature=[tf.TensorSpec([None, CLIP_SAMPLES], tf.float32, name="inputs_0")])
    def embed_music(self, inputs_0: tf.Tensor) -> dict[str, tf.Tensor]:
        """10 s of mono 16 kHz audio -> the clip's style embedding."""
        spectrum = tf.abs(tf.signal.stft(inputs_0, FRAME_SAMPLES, HOP_SAMPLES, FFT_SIZE))
        mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            MEL_BANDS,
            FFT_SIZE // 2 + 1,
            STYLE_AUDIO_SAMPLE_RATE_HZ,
            20.0,
            STYLE_AUDIO_SAMPLE_RATE_HZ / 2,
        )
        log_mel = tf.math.log1p((spectrum @ mel_matrix) / MEL_FLOOR)
        frames = tf.nn.gelu(log_mel @ self.frame_kernel + self.frame_bias)
        pooled = tf.reduce_mean(frames, axis=1)
        return _with_l2_normalized(MUSIC_EMBEDDING_OUTPUT, self.music_projection(pooled))


def _with_l2_normalized(name: str, embedding: tf.Tensor) -> dict[str, tf.Tensor]:
    return {name: embedding, name + L2_NORMALIZED_SUFFIX: tf.math.l2_normalize(embedding, axis=-1)}
