"""The generator's gRPC API: one bidi stream per session, and its load report."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import grpc
import numpy as np
from prometheus_client import Counter, Gauge

from services.common import model_facts as facts
from services.common import session_end
from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.common.snapshots import snapshot_to_state, state_to_snapshot
from services.generator.context_audio import ContextAudio
from services.generator.runner import BatchRunner
from services.generator.scheduler import Scheduler
from services.generator.sessions import ChunkResult, GeneratorSession

log = logging.getLogger(__name__)

ACTIVE = Gauge("mrt_generator_active_sessions", "Sessions placed on this generator")
STARTED = Counter(
    "mrt_generator_sessions_started_total", "Sessions opened (fresh or resumed)", ["kind"]
)
ENDED = Counter("mrt_generator_sessions_ended_total", "Sessions ended, by outcome", ["outcome"])
DRAINING = Gauge("mrt_generator_draining", "1 while the generator is draining")

# Chunks a session may have generated but not yet sent; the gateway demands one at a time.
OUTBOX_CHUNKS = 2


def sampling_from_proto(message: generator_pb2.Sampling) -> SamplingSettings:
    """Validate fully resolved sampling settings (the gateway resolves defaults)."""
    checks = [
        (
            math.isfinite(message.temperature)
            and facts.TEMPERATURE_RANGE[0] <= message.temperature <= facts.TEMPERATURE_RANGE[1],
            f"temperature must be in {list(facts.TEMPERATURE_RANGE)}",
        ),
        (
            facts.TOP_K_RANGE[0] <= message.top_k <= facts.TOP_K_RANGE[1],
            f"top_k must be in {list(facts.TOP_K_RANGE)}",
        ),
        (
            math.isfinite(message.guidance)
            and facts.GUIDANCE_RANGE[0] <= message.guidance <= facts.GUIDANCE_RANGE[1],
            f"guidance must be in {list(facts.GUIDANCE_RANGE)}",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise ValueError(why)
    return SamplingSettings(
        temperature=message.temperature,
        top_k=message.top_k,
        guidance=message.guidance,
        seed=message.seed,
    )


def style_from_proto(message: generator_pb2.Style) -> np.ndarray | None:
    if not message.embedding:
        return None
    embedding = np.asarray(message.embedding, np.float32)
    if embedding.shape != (facts.STYLE_EMBEDDING_DIM,) or not np.all(np.isfinite(embedding)):
        raise ValueError(f"style embedding must be {facts.STYLE_EMBEDDING_DIM} finite floats")
    return embedding


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(
        self, scheduler: Scheduler, runner: BatchRunner, *, model_name: str, generator_id: str
    ):
        self.scheduler = scheduler
        self.runner = runner
        self.model_name = model_name
        self.generator_id = generator_id
        self.draining = False
        self._streams: dict[str, asyncio.Event] = {}  # session id -> "end this stream" event

    # --- load and drain ----------------------------------------------------------------------
    def load_report(self) -> generator_pb2.LoadReport:
        active = self.scheduler.session_count
        # A draining or unhealthy generator takes no new sessions.
        capacity = 0 if self.draining or not self.runner.healthy() else self.scheduler.capacity
        return generator_pb2.LoadReport(
            generator_id=self.generator_id,
            model=self.model_name,
            active_sessions=active,
            capacity_sessions=capacity,
            free_slots=max(0, math.floor(capacity - self.scheduler.load)),
            recent_real_time_factor=self.runner.recent_real_time_factor,
            draining=self.draining,
            max_batch_size=self.scheduler.max_batch_size,
        )

    async def GetLoad(
        self, request: generator_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> generator_pb2.LoadReport:
        return self.load_report()

    async def drain(self, grace_s: float) -> None:
        """Stop taking sessions; end each stream at its next chunk boundary so the gateway
        resumes it elsewhere from the snapshot it holds; wait up to ``grace_s`` for that."""
        self.draining = True
        DRAINING.set(1)
        log.info("draining %d sessions (grace %.0f s)", len(self._streams), grace_s)
        for end in self._streams.values():
            end.set()
        deadline = asyncio.get_running_loop().time() + grace_s
        while self._streams and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained; %d sessions left", len(self._streams))

    # --- the session stream ---------------------------------------------------------------------
    async def Session(
        self,
        request_iterator: AsyncIterator[generator_pb2.GeneratorRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[generator_pb2.GeneratorResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("request") != "open":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`"
            )
        open_msg = first.open
        if self.draining:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "generator is draining",
                session_end.reason_metadata(session_end.DRAINING),
            )
        if open_msg.model and open_msg.model != self.model_name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"this generator serves model '{self.model_name}', not '{open_msg.model}'",
            )
        if not open_msg.session_id or open_msg.session_id in self._streams:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "open.session_id must be set and not already open here",
            )
        try:
            state = (
                snapshot_to_state(open_msg.resume_from)
                if open_msg.HasField("resume_from")
                else SessionState.fresh()
            )
            sampling = sampling_from_proto(open_msg.sampling)
            style = style_from_proto(open_msg.style)
            chunk_frames = facts.session_chunk_frames(open_msg.chunk_frames)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if not self.scheduler.has_room_for(chunk_frames):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"generator {self.generator_id} is at capacity "
                f"({self.scheduler.capacity} sessions of {facts.CHUNK_FRAMES} frames per "
                f"chunk; a session of {chunk_frames} counts as "
                f"{self.scheduler.session_load(chunk_frames):.2f})",
            )

        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[ChunkResult] = asyncio.Queue(maxsize=OUTBOX_CHUNKS)
        session = GeneratorSession(
            session_id=open_msg.session_id,
            state=state,
            sampling=sampling,
            style_embedding=style,
            style_version=open_msg.style.version,
            sampling_version=open_msg.sampling.version,
            deliver=lambda result: loop.call_soon_threadsafe(outbox.put_nowait, result),
            chunk_frames=chunk_frames,
        )
        end_stream = asyncio.Event()
        self._streams[session.session_id] = end_stream
        self.scheduler.add(session)
        ACTIVE.set(self.scheduler.session_count)
        STARTED.labels("resumed" if open_msg.HasField("resume_from") else "fresh").inc()
        log.info(
            "session %s opened (%s, chunk %d, %d frames per chunk)",
            session.session_id,
            "resumed" if open_msg.HasField("resume_from") else "fresh",
            state.chunk_index,
            chunk_frames,
        )
        outcome = "ok"
        reader = asyncio.create_task(self._read_updates(request_iterator, session.session_id))
        try:
            yield generator_pb2.GeneratorResponse(
                opened=generator_pb2.SessionOpened(
                    session_id=session.session_id,
                    model=self.model_name,
                    sample_rate=facts.SAMPLE_RATE_HZ,
                    channels=facts.CHANNELS,
                    chunk_seconds=session.chunk_seconds,
                    generator_id=self.generator_id,
                    audio_input_supported=self.runner.engine.supports_audio_input,
                )
            )
            while True:
                result = await self._next_result(outbox, reader, end_stream)
                if result is None:
                    break
                if result.error is not None:
                    outcome = "error"
                    await context.abort(grpc.StatusCode.INTERNAL, result.error)
                yield generator_pb2.GeneratorResponse(chunk=self._chunk_message(result))
            if end_stream.is_set():
                outcome = "drained"
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "generator is draining; resume the session elsewhere",
                    session_end.reason_metadata(session_end.DRAINING),
                )
            if reader.done() and reader.exception() is not None:
                outcome = "invalid_argument"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(reader.exception()))
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            reader.cancel()
            self.scheduler.remove(session.session_id)
            self._streams.pop(session.session_id, None)
            ACTIVE.set(self.scheduler.session_count)
            ENDED.labels(outcome).inc()
            log.info("session %s ended (%s)", session.session_id, outcome)

    async def _next_result(
        self, outbox: asyncio.Queue, reader: asyncio.Task, end_stream: asyncio.Event
    ) -> ChunkResult | None:
        """The next chunk, or None when the client is done or the stream must end."""
        if not outbox.empty():
            return outbox.get_nowait()
        getter = asyncio.ensure_future(outbox.get())
        ender = asyncio.ensure_future(end_stream.wait())
        try:
            await asyncio.wait({getter, reader, ender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ender.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _read_updates(
        self, request_iterator: AsyncIterator[generator_pb2.GeneratorRequest], session_id: str
    ) -> None:
        """Apply the session's updates as they arrive; raises ValueError on a bad one."""
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "style":
                self.scheduler.set_style(
                    session_id, style_from_proto(request.style), request.style.version
                )
            elif kind == "sampling":
                self.scheduler.set_sampling(
                    session_id, sampling_from_proto(request.sampling), request.sampling.version
                )
            elif kind == "demand":
                if not math.isfinite(request.demand.deadline_unix_s):
                    raise ValueError("demand.deadline_unix_s must be finite")
                self.scheduler.demand(session_id, request.demand.deadline_unix_s)
            elif kind in ("inject", "prime"):
                self._check_audio_input_supported()
                audio = (
                    ContextAudio.injected_mix(request.inject.mix)
                    if kind == "inject"
                    else ContextAudio.initial_audio(request.prime.audio)
                )
                self.scheduler.add_context_audio(session_id, audio)
            elif kind == "reset":
                self.scheduler.request_reset(session_id)
            else:
                raise ValueError(f"unexpected message in a session stream: {kind}")

    def _check_audio_input_supported(self) -> None:
        if not self.runner.engine.supports_audio_input:
            raise ValueError(f"model '{self.model_name}' does not take audio input")

    @staticmethod
    def _chunk_message(result: ChunkResult) -> generator_pb2.GeneratedChunk:
        assert result.output is not None
        audio = np.ascontiguousarray(result.output.audio, dtype="<f4")
        return generator_pb2.GeneratedChunk(
            chunk_index=result.output.state.chunk_index - 1,
            audio=audio.tobytes(),
            snapshot=state_to_snapshot(result.output.state),
            style_version=result.style_version,
            sampling_version=result.sampling_version,
            queue_wait_seconds=result.queue_wait_s,
            generation_seconds=result.generation_s,
            batch_size=result.batch_size,
        )
