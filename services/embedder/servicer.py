"""The embedder's gRPC API: validate, look up the cache, micro-batch the model calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import logging
import time

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from services.common.batching import MicroBatcher
from services.common.lru import LruCache
from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S
from services.common.proto.mrt.v1 import embedder_pb2, embedder_pb2_grpc
from services.embedder.audio_input import AudioInputError, AudioLimits, decode_audio_prompt
from services.embedder.style_model import StyleModel

log = logging.getLogger(__name__)

EMBED_SECONDS = Histogram(
    "mrt_embedder_embed_seconds",
    "Time to answer an Embed request",
    ["source"],
    buckets=LATENCY_BUCKETS_S,
)
CACHE_HITS = Counter(
    "mrt_embedder_cache_hits_total", "Embeddings served from the cache", ["source"]
)
CACHE_MISSES = Counter("mrt_embedder_cache_misses_total", "Embeddings computed", ["source"])
MODEL_CALLS = Counter("mrt_embedder_model_calls_total", "Batched model calls", ["source"])
BATCH_SIZE = Histogram(
    "mrt_embedder_batch_size", "Requests per model call", buckets=BATCH_SIZE_BUCKETS
)
for _source in ("text", "audio"):  # export every series from the start, at zero
    for _metric in (EMBED_SECONDS, CACHE_HITS, CACHE_MISSES, MODEL_CALLS):
        _metric.labels(_source)


@dataclasses.dataclass(frozen=True)
class EmbedderLimits:
    max_text_chars: int = 512
    audio: AudioLimits = dataclasses.field(default_factory=AudioLimits)


def normalize_text(text: str) -> str:
    """The cache key of a text prompt: MusicCoCa lower-cases, and spacing carries no meaning."""
    return " ".join(text.lower().split())


class EmbedderServicer(embedder_pb2_grpc.StyleEmbedderServicer):
    def __init__(
        self,
        model: StyleModel,
        *,
        limits: EmbedderLimits,
        cache_entries: int,
        max_batch_size: int,
        batch_window_s: float,
    ):
        self.model = model
        self.limits = limits
        self.cache: LruCache[np.ndarray] = LruCache(cache_entries)
        # One model thread: TensorFlow uses the cores itself; decoding gets its own pool so a
        # long audio decode never blocks text batches.
        self._model_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._decode_executor = concurrent.futures.ThreadPoolExecutor(
            2, thread_name_prefix="decode"
        )
        self._text_batcher = MicroBatcher(
            self._embed_texts,
            max_batch_size=max_batch_size,
            window_s=batch_window_s,
            executor=self._model_executor,
            on_batch=lambda n: self._count_batch("text", n),
        )
        self._audio_batcher = MicroBatcher(
            self._embed_audio,
            max_batch_size=max_batch_size,
            window_s=batch_window_s,
            executor=self._model_executor,
            on_batch=lambda n: self._count_batch("audio", n),
        )
        self._in_flight: dict[tuple[str, str], asyncio.Future] = {}

    @staticmethod
    def _count_batch(source: str, size: int) -> None:
        MODEL_CALLS.labels(source).inc()
        BATCH_SIZE.observe(size)

    def _embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(np.asarray(self.model.embed_texts(texts), np.float32))

    def _embed_audio(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return list(np.asarray(self.model.embed_audio(clips), np.float32))

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        started = time.perf_counter()
        source = request.WhichOneof("source")
        if source == "text":
            if len(request.text) > self.limits.max_text_chars:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"text prompt is {len(request.text)} characters; the limit is "
                    f"{self.limits.max_text_chars}",
                )
            key = normalize_text(request.text)
            if not key:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text prompt is empty")
        elif source == "audio":
            key = hashlib.sha256(request.audio).hexdigest()
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set `text` or `audio`")
        cached = self.cache.get((source, key))
        if cached is not None:
            CACHE_HITS.labels(source).inc()
            embedding, hit = cached, True
        else:
            CACHE_MISSES.labels(source).inc()
            try:
                embedding = await self._compute_once(source, key, request)
            except AudioInputError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            hit = False
        EMBED_SECONDS.labels(source).observe(time.perf_counter() - started)
        return embedder_pb2.EmbedResponse(
            embedding=embedding.tolist(), cache_hit=hit, model=self.model.name
        )

    async def _compute_once(
        self, source: str, key: str, request: embedder_pb2.EmbedRequest
    ) -> np.ndarray:
        """Compute an embedding; identical requests arriving together share one computation."""
        in_flight = self._in_flight.get((source, key))
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future = asyncio.ensure_future(self._compute(source, key, request))
        self._in_flight[(source, key)] = future
        try:
            embedding = await asyncio.shield(future)
        finally:
            self._in_flight.pop((source, key), None)
        self.cache.put((source, key), embedding)
        return embedding

    async def _compute(
        self, source: str, key: str, request: embedder_pb2.EmbedRequest
    ) -> np.ndarray:
        if source == "text":
            return await self._text_batcher.submit(key)
        loop = asyncio.get_running_loop()
        clip = await loop.run_in_executor(
            self._decode_executor, decode_audio_prompt, request.audio, self.limits.audio
        )
        return await self._audio_batcher.submit(clip)
