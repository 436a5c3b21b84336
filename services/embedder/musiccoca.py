"""MusicCoCa style embeddings from the upstream TensorFlow SavedModel and SentencePiece vocabulary.

Upstream ships MusicCoCa as a SavedModel with two signatures, called like this:

- ``embed_text(inputs_0=int32[B, 128] token ids, inputs_0_1=float32[B, 128] paddings)``
  -> ``contrastive_txt_embed`` float32[B, 768]
- ``embed_music(inputs_0=float32[B, 160000] waveform, 10 s of mono 16 kHz audio)``
  -> ``contrastive_music_embed`` float32[B, 768]

The model also returns ``*_l2_normalized`` variants; upstream (and so we) use the raw embeddings,
which the RVQ codebooks were fitted to (the model ends in a layer norm, so their norm is about 28).

Text preprocessing (upstream's, exactly): lower-case, SentencePiece ids, truncated to 127, prefixed
with id 1, padded with id 0 to 128; the padding mask is 0.0 for real ids (the prefix included) and
1.0 for padding. Audio preprocessing: mono 16 kHz cut into 10 s clips (the last one zero-padded),
one embedding per clip, averaged per waveform.

``tiny`` is a small model the project builds itself in exactly these formats (see
``tiny_musiccoca``); ``musiccoca`` is the real upstream model.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece
import tensorflow as tf

from services.common.assets import AssetMissingError, AssetStore
from services.common.model_facts import (
    AUDIO_PROMPT_SECONDS,
    STYLE_AUDIO_SAMPLE_RATE_HZ,
    STYLE_EMBEDDING_DIM,
)
from services.embedder.style_model import StyleModel

log = logging.getLogger(__name__)

# Upstream asset paths (relative to the assets directory, or to the tiny root for `tiny`).
SAVEDMODEL_RELPATH = "savedmodels/musiccoca_mv212f_cpu_novocab"
VOCAB_RELPATH = "vocabularies/musiccoca_mv212f_vocab.model"

# The SavedModel's signatures: names, input keys and output keys.
TEXT_SIGNATURE = "embed_text"
TEXT_IDS_INPUT = "inputs_0"
TEXT_PADDINGS_INPUT = "inputs_0_1"
TEXT_EMBEDDING_OUTPUT = "contrastive_txt_embed"
MUSIC_SIGNATURE = "embed_music"
MUSIC_WAVEFORM_INPUT = "inputs_0"
MUSIC_EMBEDDING_OUTPUT = "contrastive_music_embed"
L2_NORMALIZED_SUFFIX = "_l2_normalized"

# Text preprocessing constants.
MAX_TEXT_TOKENS = 128
TEXT_START_ID = 1  # prepended to every text (SentencePiece's <s>)
TEXT_PAD_ID = 0

CLIP_SAMPLES = round(AUDIO_PROMPT_SECONDS * STYLE_AUDIO_SAMPLE_RATE_HZ)  # 160 000

DEFAULT_INTRA_OP_THREADS = 2


def encode_texts(
    texts: Sequence[str],
    vocab: sentencepiece.SentencePieceProcessor,
) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's text preprocessing: (int32[N, 128] ids, float32[N, 128] paddings)."""
    ids = np.full((len(texts), MAX_TEXT_TOKENS), TEXT_PAD_ID, dtype=np.int32)
    paddings = np.ones((len(texts), MAX_TEXT_TOKENS), dtype=np.float32)
    for row, text in enumerate(texts):
        pieces = vocab.EncodeAsIds(text.lower())[: MAX_TEXT_TOKENS - 1]
        tokens = [TEXT_START_ID, *pieces]
        ids[row, : len(tokens)] = tokens
        paddings[row, : len(tokens)] = 0.0
    return ids, paddings


def split_into_clips(waveform: np.ndarray) -> np.ndarray:
    """Upstream's audio framing: float32[num_clips, 160000], the last clip zero-padded."""
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {waveform.shape}")
    num_clips = math.ceil(waveform.size / CLIP_SAMPLES)
    clips = np.zeros((num_clips * CLIP_SAMPLES,), dtype=np.float32)
    clips[: waveform.size] = waveform
    return clips.reshape(num_clips, CLIP_SAMPLES)


def limit_tensorflow_threads(intra_op_threads: int = DEFAULT_INTRA_OP_THREADS) -> None:
    """Keep TensorFlow to a few threads: the embedder shares small CPU boxes with other work.

    TensorFlow accepts this only before its runtime starts; later calls keep what was set first.
    """
    threads = max(1, min(intra_op_threads, os.cpu_count() or 1))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("TensorFlow had already started; its thread pools stay as they are")


class MusicCoCaModel(StyleModel):
    """The MusicCoCa SavedModel on CPU, called through its upstream signatures in batches."""

    def __init__(
        self,
        name: str,
        saved_model_dir: Path,
        vocab_path: Path,
        *,
        intra_op_threads: int = DEFAULT_INTRA_OP_THREADS,
    ):
        self.name = name
        limit_tensorflow_threads(intra_op_threads)
        self._vocab = sentencepiece.SentencePieceProcessor(model_file=str(vocab_path))
        with tf.device("/CPU:0"):
            self._saved_model = tf.saved_model.load(str(saved_model_dir))
        signatures = self._saved_model.signatures
        missing = {TEXT_SIGNATURE, MUSIC_SIGNATURE} - set(signatures.keys())
        if missing:
            raise ValueError(
                f"{saved_model_dir} is not a MusicCoCa SavedModel: it has no "
                f"signature {sorted(missing)} (it has {sorted(signatures.keys())})"
            )
        self._embed_text = signatures[TEXT_SIGNATURE]
        self._embed_music = signatures[MUSIC_SIGNATURE]

    @classmethod
    def create(
        cls, model_name: str, store: AssetStore, *, intra_op_threads: int = DEFAULT_INTRA_OP_THREADS
    ) -> MusicCoCaModel:
        """Load ``tiny`` (built on first use) or ``musiccoca`` (the upstream weights)."""
        limit_tensorflow_threads(intra_op_threads)  # before building runs the first TF op
        if model_name == "tiny":
            from services.embedder import tiny_musiccoca  # the builder imports this module

            root = store.tiny_root()
            tiny_musiccoca.ensure_tiny_musiccoca(root)
            saved_model_dir, vocab_path = root / SAVEDMODEL_RELPATH, root / VOCAB_RELPATH
        elif model_name == "musiccoca":
            try:
                saved_model_dir = store.path(SAVEDMODEL_RELPATH)
                vocab_path = store.path(VOCAB_RELPATH)
            except AssetMissingError as error:
                raise AssetMissingError(
                    f"the 'musiccoca' style model needs the upstream MusicCoCa files "
                    f"({SAVEDMODEL_RELPATH}, {VOCAB_RELPATH}). {error} For tests and offline "
                    f"use, the 'tiny' model needs no download."
                ) from error
        else:
            raise ValueError(f"unknown style model {model_name!r}; known: tiny, musiccoca")
        return cls(model_name, saved_model_dir, vocab_path, intra_op_threads=intra_op_threads)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, STYLE_EMBEDDING_DIM), dtype=np.float32)
        ids, paddings = encode_texts(texts, self._vocab)
        return _call_batched(
            self._embed_text,
            TEXT_EMBEDDING_OUTPUT,
            {TEXT_IDS_INPUT: ids, TEXT_PADDINGS_INPUT: paddings},
        )

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        if not clips:
            return np.zeros((0, STYLE_EMBEDDING_DIM), dtype=np.float32)
        per_waveform = [split_into_clips(np.asarray(clip, dtype=np.float32)) for clip in clips]
        clip_embeddings = _call_batched(
            self._embed_music,
            MUSIC_EMBEDDING_OUTPUT,
            {MUSIC_WAVEFORM_INPUT: np.concatenate(per_waveform)},
        )
        bounds = np.cumsum([0] + [len(w) for w in per_waveform])
        return np.stack(
            [clip_embeddings[start:end].mean(axis=0) for start, end in itertools.pairwise(bounds)]
        ).astype(np.float32)


def _call_batched(signature, output_key: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run a signature over N rows, in one call, or in chunks if it was exported with a fixed batch.

    Upstream's code calls the music signature one clip at a time; this works either way.
    """
    rows = len(next(iter(inputs.values())))
    fixed_batch = _fixed_batch_size(signature)
    step = fixed_batch or rows
    outputs = []
    for start in range(0, rows, step):
        chunk = {key: value[start : start + step] for key, value in inputs.items()}
        chunk_rows = len(next(iter(chunk.values())))
        if fixed_batch and chunk_rows < fixed_batch:  # fill a fixed-size batch; drop the filler
            chunk = {
                key: np.concatenate(
                    [value, np.zeros((fixed_batch - chunk_rows,) + value.shape[1:], value.dtype)]
                )
                for key, value in chunk.items()
            }
        with tf.device("/CPU:0"):
            result = signature(**{key: tf.constant(value) for key, value in chunk.items()})
        outputs.append(result[output_key].numpy()[:chunk_rows])
    embeddings = np.concatenate(outputs).astype(np.float32)
    if embeddings.shape != (rows, STYLE_EMBEDDING_DIM):
        raise ValueError(
            f"the style model returned {embeddings.shape}, expected ({rows}, {STYLE_EMBEDDING_DIM})"
        )
    return embeddings


def _fixed_batch_size(signature) -> int | None:
    """The batch size a signature was exported with, or None if it takes any batch size."""
    _, input_specs = signature.structured_input_signature
    return next(iter(input_specs.values())).shape[0]
