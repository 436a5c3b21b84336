"""The Magenta RT chunk engine: style tokens -> depthformer sampling -> codec decode -> crossfade.

One `generate` call runs the chunk algorithm of docs/model.md for a whole batch of sessions at
once, each row with its own context, style, sampling settings and seed, so a row gets exactly
what it would get alone. The host builds the batch's inputs and reads back its outputs; from
tokens to audio it is one compiled program (`model/chunk_program.py`). Models: `tiny` (our
small depthformer with random weights from a fixed seed and the locally built tiny codec,
works offline) and upstream's `base` and `large` (real weights, from the asset store).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.common.lru import LruCache
from services.common.models import MAGENTA_RT_MODELS
from services.common.session_state import SessionState
from services.generator.batch_buckets import batch_buckets
from services.generator.context_audio import INITIAL_AUDIO_MAX_SAMPLES, write_context_audio
from services.generator.engine import (
    ChunkEngine,
    ChunkJob,
    ChunkOutput,
    FinishedBatch,
    PendingBatch,
    check_one_chunk_length,
    fresh_job,
)
from services.generator.model import spectrostream, tokens
from services.generator.model.chunk_program import ChunkProgram, DispatchedChunk
from services.generator.model.codec_encoder import SpectroStreamEncoder
from services.generator.model.crossfade import previous_frames
from services.generator.model.spectrostream import SpectroStreamDecoder
from services.generator.model.style_tokens import STYLE_QUANTIZER_ASSET, StyleQuantizer
from services.generator.model.tiny_assets import ensure_tiny_assets

log = logging.getLogger(__name__)

TINY_PARAMS_SEED = 0
# Style embeddings whose quantized tokens are kept: a session's style changes with its
# prompts, not per chunk, so the quantizer runs once per change.
STYLE_TOKEN_CACHE_ENTRIES = 4096

# Upstream t5x checkpoints: tar archives of a t5x checkpoint directory.
CHECKPOINT_ARCHIVES = {
    "base": "checkpoints/llm_base_x4286_c1860k.tar",
    "large": "checkpoints/llm_large_x3047_c1860k.tar",
}
# What the generator loads besides the checkpoint.
GENERATOR_ASSETS = [
    spectrostream.DECODER_ASSET,
    spectrostream.QUANTIZER_ASSET,
    spectrostream.ENCODER_ASSET,
    STYLE_QUANTIZER_ASSET,
]
# Everything a model needs across the cluster (the embedder's MusicCoCa and vocabulary, the
# codec encoder for audio input): what `mrt assets download --model <name>` fetches.
_SHARED_UPSTREAM_ASSETS = [
    spectrostream.ENCODER_ASSET,
    spectrostream.DECODER_ASSET,
    spectrostream.QUANTIZER_ASSET,
    "savedmodels/musiccoca_mv212f_cpu_novocab",
    "vocabularies/musiccoca_mv212f_vocab.model",
    STYLE_QUANTIZER_ASSET,
]
MODEL_ASSET_PATHS: dict[str, list[str]] = {
    "tiny": [],  # built locally (tiny_assets), never downloaded
    "base": _SHARED_UPSTREAM_ASSETS + [CHECKPOINT_ARCHIVES["base"]],
    "large": _SHARED_UPSTREAM_ASSETS + [CHECKPOINT_ARCHIVES["large"]],
}


class MagentaRTEngine(ChunkEngine):
    """Generates the next chunk (2 s, or the sessions' shorter length) for a batch of
    sessions with one model."""

    def __init__(
        self,
        name: str,
        program: ChunkProgram,
        style_quantizer: StyleQuantizer,
        encoder: SpectroStreamEncoder | None,
    ):
        """`program` samples, decodes and crossfades a batch; without an `encoder` the engine
        takes no audio input."""
        self.name = name
        self._program = program
        self._style_quantizer = style_quantizer
        self._encoder = encoder
        self.supports_audio_input = encoder is not None
        self._style_token_cache: LruCache[np.ndarray] = LruCache(STYLE_TOKEN_CACHE_ENTRIES)

    @classmethod
    def create(
        cls,
        model_name: str,
        store: AssetStore,
        *,
        max_batch_size: int,
        checkpoint: Path | None = None,
        dtype: str | None = None,
        random_weights: bool = False,
    ) -> MagentaRTEngine:
        """Load a model by name, compiled for batches of up to `max_batch_size` sessions.

        `tiny` builds its codec and style assets under the store's tiny root if missing and
        uses random depthformer weights from a fixed seed. `base` and `large` load upstream's
        assets and t5x checkpoint from the store; a missing asset raises AssetMissingError
        saying how to get it. `checkpoint` (a t5x checkpoint directory or `.tar`) replaces
        the weights for any size. `random_weights` gives `base` or `large` random weights and
        the tiny codec and style assets instead, so their speed can be measured where the
        upstream files are not (the music is noise, and the codec's cost is the tiny one's).
        `dtype` is the activation dtype; None keeps the size's own.
        """
        if model_name not in MAGENTA_RT_MODELS:
            raise ValueError(f"unknown model {model_name!r}; choose one of {MAGENTA_RT_MODELS}")
        if random_weights and checkpoint is not None:
            raise ValueError("random weights and a checkpoint exclude each other")
        if model_name == "tiny" or random_weights:
            assets = ensure_tiny_assets(store)
        else:
            assets = store
            for relpath in GENERATOR_ASSETS:  # fail early, before any slow loading
                assets.path(relpath)
            checkpoint = checkpoint or checkpoint_path(store, model_name)

        # The depthformer modules are imported here so that the codec side loads without them.
        from services.generator.model import configs, convert, depthformer, sampling

        config = configs.CONFIGS[model_name]
        if dtype is not None:
            config = config.with_dtype(configs.activation_dtype(dtype))
        if checkpoint is None:
            params = depthformer.init_params(config, seed=TINY_PARAMS_SEED)
        else:
            params = convert.load_checkpoint(Path(checkpoint), config)
        log.info("loading %s codec and style quantizer", model_name)
        loaded = SpectroStreamEncoder.from_store(assets)
        encoder = (
            loaded if loaded.matches_quantizer(assets.path(spectrostream.QUANTIZER_ASSET)) else None
        )
        if encoder is None:
            log.error("the codec quantizer's own encoding differs from ours: audio input is off")
        buckets = batch_buckets(max_batch_size)
        return cls(
            model_name,
            ChunkProgram(
                sampling.TokenSampler(config, params, batch_buckets=buckets),
                SpectroStreamDecoder.from_store(assets, batch_buckets=buckets),
            ),
            StyleQuantizer.load(assets.path(STYLE_QUANTIZER_ASSET)),
            encoder,
        )

    def generate(self, jobs: Sequence[ChunkJob]) -> list[ChunkOutput]:
        return self.start(jobs).finish()

    def start(self, jobs: Sequence[ChunkJob]) -> PendingBatch:
        """Prepare the batch's inputs on the host and dispatch its program; returns without
        waiting for the device (audio input written into the context does wait, for its
        encoder pass)."""
        if not jobs:
            return FinishedBatch([])
        frames = check_one_chunk_length(jobs)
        jobs = write_context_audio(jobs, self._encoder)
        states = [job.state for job in jobs]
        context = np.stack([state.context_tokens for state in states])
        chunk_indices = np.array([state.chunk_index for state in states])
        dispatched = self._program.start(
            tokens.build_encoder_tokens(context, self.style_tokens(jobs)),
            temperature=np.array([job.sampling.temperature for job in jobs], np.float32),
            top_k=np.array([job.sampling.top_k for job in jobs], np.int32),
            guidance=np.array([job.sampling.guidance for job in jobs], np.float32),
            seeds=chunk_seeds(jobs),
            previous_frames=previous_frames(context, chunk_indices),
            previous_tails=np.stack([state.crossfade_tail for state in states]),
            frames=frames,
        )
        return _DispatchedBatch(dispatched, context, states)

    def style_tokens(self, jobs: Sequence[ChunkJob]) -> np.ndarray:
        """int32[B, 6] raw style codes per job; -1 (no style) where a job has no embedding.
        Only embeddings not seen recently go through the quantizer."""
        style_tokens = np.full((len(jobs), facts.STYLE_RVQ_LEVELS), -1, np.int32)
        unseen: dict[bytes, list[int]] = {}  # embedding bytes -> rows
        for row, job in enumerate(jobs):
            if job.style_embedding is None:
                continue
            key = np.asarray(job.style_embedding, np.float32).tobytes()
            cached = self._style_token_cache.get(key)
            if cached is None:
                unseen.setdefault(key, []).append(row)
            else:
                style_tokens[row] = cached
        if unseen:
            embeddings = np.stack([np.frombuffer(key, np.float32) for key in unseen])
            for (key, rows), codes in zip(unseen.items(), self._style_quantizer.tokens(embeddings)):
                self._style_token_cache.put(key, codes)
                style_tokens[rows] = codes
        return style_tokens

    def warmup(self, batch_size: int, chunk_frames: int = facts.CHUNK_FRAMES) -> None:
        """Compile every program a batch of `batch_size` sessions of `chunk_frames` frames can
        run (the chunk program's, one per guidance-row bucket; the encoder's for live-input
        mixes and an initial clip), then run one throw-away batch of that many prompted
        sessions: with a guidance row each, the costliest batch of that size, which is what a
        timed warm-up should see."""
        self._program.compile_batches(batch_size, chunk_frames)
        if self._encoder is not None:
            self._encoder.compile_batches(batch_size, facts.INJECTION_MIX_SAMPLES)
            self._encoder.compile_batches(1, INITIAL_AUDIO_MAX_SAMPLES)
        prompted = dataclasses.replace(fresh_job(chunk_frames), style_embedding=WARMUP_STYLE)
        self.generate([prompted] * batch_size)


# The style of warm-up sessions: any embedding will do (a unit vector, as MusicCoCa's are).
WARMUP_STYLE = np.full(facts.STYLE_EMBEDDING_DIM, facts.STYLE_EMBEDDING_DIM**-0.5, np.float32)


class _DispatchedBatch(PendingBatch):
    """A batch whose program runs on the device; `finish` reads it back and advances each
    session's context."""

    def __init__(
        self, dispatched: DispatchedChunk, context: np.ndarray, states: list[SessionState]
    ):
        self._dispatched, self._context, self._states = dispatched, context, states

    def ready(self) -> bool:
        return self._dispatched.ready()

    def finish(self) -> list[ChunkOutput]:
        new_codes, chunks, tails = self._dispatched.read_back()
        next_context = tokens.append_to_context(self._context, new_codes)
        return [
            ChunkOutput(
                audio=chunks[row],
                state=SessionState(
                    context_tokens=next_context[row],
                    crossfade_tail=tails[row],
                    chunk_index=state.chunk_index + 1,
                ),
            )
            for row, state in enumerate(self._states)
        ]


def chunk_seeds(jobs: Sequence[ChunkJob]) -> np.ndarray:
    """uint32[B]: each session's PRNG seed for this chunk, seed + chunk index (docs/model.md)."""
    return np.array(
        [(job.sampling.seed + job.state.chunk_index) % 2**32 for job in jobs], np.uint32
    )


def checkpoint_path(store: AssetStore, model_name: str) -> Path:
    """Where `model_name`'s t5x checkpoint is: a directory if one is already unpacked beside
    the archive (as upstream's own cache keeps it), else the `.tar` archive itself, which the
    converter reads directly. A missing archive raises AssetMissingError (or is downloaded,
    if the store allows)."""
    archive_relpath = CHECKPOINT_ARCHIVES[model_name]
    unpacked = store.root / archive_relpath.removesuffix(".tar")
    return unpacked if unpacked.is_dir() else store.path(archive_relpath)
