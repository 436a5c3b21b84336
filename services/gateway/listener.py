"""One listener's session: client messages in, paced audio chunks out.

The session keeps everything needed to resume on another generator: the mixed style, the
sampling settings and the last state snapshot the generator returned. Audio is released on
the listener's timeline: chunk n is needed ``n * 2 s`` after the first chunk after PLAY was
sent, and is sent ``buffer_ahead_seconds`` before that; a chunk sent after it was needed is a
buffer underrun (the listener's player ran dry), and the timeline shifts by the gap.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from services.common import model_facts as facts
from services.common.metrics import LATENCY_BUCKETS_S
from services.common.proto.mrt.v1 import generator_pb2, music_pb2
from services.gateway.audio_encoding import encode_audio
from services.gateway.embedder_client import BackendUnavailable, EmbedderClient
from services.gateway.generation_config import SamplingSettings, merge_config
from services.gateway.generator_link import GeneratorLink, LinkError
from services.gateway.generator_pool import GeneratorPool, NoCapacity, NoGenerator
from services.gateway.prompts import PromptError, PromptLimits, resolve_prompts

log = logging.getLogger(__name__)

UNDERRUNS = Counter("mrt_gateway_buffer_underruns_total",
                    "Chunks sent later than the listener needed them")
CLIENT_UNDERRUNS = Counter("mrt_gateway_client_reported_underruns_total",
                           "Underruns clients reported hearing")
TIME_TO_FIRST_AUDIO = Histogram("mrt_gateway_time_to_first_audio_seconds",
                                "From PLAY to the first chunk sent", buckets=LATENCY_BUCKETS_S)
CHUNKS_SENT = Counter("mrt_gateway_chunks_sent_total", "Audio chunks sent to listeners")
LATENESS = Histogram("mrt_gateway_chunk_lateness_seconds",
                     "How late a chunk left against the listener's need (0 = in time)",
                     buckets=LATENCY_BUCKETS_S)
PROMPT_TO_AUDIO = Histogram("mrt_gateway_prompt_to_audio_seconds",
                            "From a prompt update to the first chunk sent with it",
                            buckets=LATENCY_BUCKETS_S)
MIGRATED = Counter("mrt_gateway_sessions_migrated_total",
                   "Sessions resumed on another generator, by reason", ["reason"])

# Messages queued for a client before the session waits for it to read (about 8 s of audio).
OUTBOX_MESSAGES = 4
# Chunks a session keeps demanded or in hand (generated, not yet released). Demanding ahead
# lets the generator serve sessions of every phase in one batch per chunk period: a session
# served by one batch has its next demand there already. The generator still makes each
# chunk at most about a period before its release.
CHUNKS_AHEAD = 3
# A chunk this close to its need time still counts as in time (scheduling jitter).
UNDERRUN_TOLERANCE_S = 0.02


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    buffer_ahead_seconds: float
    open_timeout_s: float
    slow_client_timeout_s: float
    prompt_limits: PromptLimits


class StreamEnded(Exception):
    """End the client's stream with this status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ClientTooSlow(StreamEnded):
    """The client stopped reading: its stream is ended so it holds nothing."""


def placement_error(err: Exception) -> StreamEnded:
    if isinstance(err, NoCapacity):
        return StreamEnded(grpc.StatusCode.RESOURCE_EXHAUSTED, f"no capacity: {err}")
    return StreamEnded(grpc.StatusCode.UNAVAILABLE, f"no generator available: {err}")


class ListenerSession:
    def __init__(self, *, session_id: str, model: str, encoding: int, settings: SessionSettings,
                 pool: GeneratorPool, embedder: EmbedderClient, seed: int):
        self.session_id = session_id
        self.model = model
        self.encoding = encoding
        self.settings = settings
        self.pool = pool
        self.embedder = embedder
        self.outbound: asyncio.Queue[music_pb2.StreamResponse | None] = asyncio.Queue(maxsize=OUTBOX_MESSAGES)
        # What the generator needs to (re)open the session anywhere.
        self.style: np.ndarray | None = None
        self.prompt_version = 0
        self.sampling = SamplingSettings(seed=seed)
        self.config_version = 0
        self.snapshot: generator_pb2.SessionSnapshot | None = None
        # Generation.
        self.link: GeneratorLink | None = None
        self._link_reader: asyncio.Task | None = None
        self.demands_outstanding = 0
        self.received: collections.deque[generator_pb2.GeneratedChunk] = collections.deque()
        # Playback and the listener's timeline.
        self.playing = False
        self.client_done = False
        self.next_sequence = 0
        self.next_position_s = 0.0
        self.anchor: tuple[float, float] | None = None  # (wall time, timeline position) at PLAY
        self.play_requested_at: float | None = None
        self.prompt_received_at: dict[int, float] = {}
        self.underruns = 0
        self._changed = asyncio.Event()
        self._link_failure: LinkError | None = None
        self.closed = False  # set once the client's stream is over: never place it again

    # --- generator placement and failover ----------------------------------------------------------
    def _open_request(self) -> generator_pb2.OpenSession:
        request = generator_pb2.OpenSession(
            session_id=self.session_id, model=self.model,
            style=generator_pb2.Style(embedding=[] if self.style is None else self.style.tolist(),
                                      version=self.prompt_version),
            sampling=self._sampling_message())
        if self.snapshot is not None:
            request.resume_from.CopyFrom(self.snapshot)
        return request

    def _sampling_message(self) -> generator_pb2.Sampling:
        return generator_pb2.Sampling(
            temperature=self.sampling.temperature, top_k=self.sampling.top_k,
            guidance=self.sampling.guidance, seed=self.sampling.seed, version=self.config_version)

    async def connect(self, exclude: set[str] = frozenset()) -> None:
        """Place the session on the generator with the most headroom (trying the next on refusal).

        Raises StreamEnded: RESOURCE_EXHAUSTED when all are full, UNAVAILABLE when none is up."""
        tried = set(exclude)
        last_error: Exception | None = None
        refreshed = False
        while True:
            if self.closed:
                raise StreamEnded(grpc.StatusCode.CANCELLED, "the session is closed")
            try:
                candidates = self.pool.candidates(self.model, exclude=tried)
            except (NoCapacity, NoGenerator) as err:
                if not refreshed:  # the last load poll may be stale: look again once
                    refreshed = True
                    await self.pool.refresh()
                    continue
                if isinstance(err, NoGenerator) and isinstance(last_error, NoCapacity):
                    err = last_error
                raise placement_error(err) from None
            endpoint = candidates[0]
            tried.add(endpoint.address)
            link = GeneratorLink(endpoint)
            try:
                await link.open(self._open_request(), self.settings.open_timeout_s)
            except LinkError as err:
                link.close()
                log.info("session %s: generator %s refused: %s", self.session_id, endpoint.address, err)
                if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    last_error = NoCapacity(err.details)
                else:
                    self.pool.mark_unhealthy(endpoint.address)
                    last_error = NoGenerator(err.details)
                continue
            if self.closed:  # the client left while the generator was opening the session
                link.close()
                raise StreamEnded(grpc.StatusCode.CANCELLED, "the session is closed")
            self.pool.placed(endpoint)
            self.link = link
            self.demands_outstanding = 0
            self._link_failure = None
            self._link_reader = asyncio.create_task(self._read_link(link))
            log.info("session %s placed on generator %s", self.session_id, endpoint.address)
            return

    async def _read_link(self, link: GeneratorLink) -> None:
        try:
            while True:
                chunk = await link.read_chunk()
                self.snapshot = chunk.snapshot
                self.received.append(chunk)
                self.demands_outstanding = max(0, self.demands_outstanding - 1)
                self._changed.set()
        except LinkError as err:
            if link is self.link:
                self._link_failure = err
                self._changed.set()

    def _drop_link(self) -> None:
        if self._link_reader is not None:
            self._link_reader.cancel()
        if self.link is not None:
            self.link.close()
        self.link, self._link_reader, self.demands_outstanding = None, None, 0

    async def _migrate(self, failure: LinkError) -> None:
        failed = self.link.endpoint.address if self.link else ""
        reason = "drain" if "draining" in failure.details else "generator_lost"
        log.warning("session %s: generator %s failed (%s); resuming elsewhere", self.session_id,
                    failed, failure)
        self._drop_link()
        if reason == "generator_lost":
            self.pool.mark_unhealthy(failed)
        try:
            await self.connect(exclude={failed})
        except StreamEnded as err:
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE,
                              f"generator lost and no other could take the session: {err.details}") from None
        MIGRATED.labels(reason).inc()
        await self._emit(music_pb2.StreamResponse(warning=music_pb2.Warning(
            code="SESSION_MIGRATED",
            message=f"the generator serving this session {'is draining' if reason == 'drain' else 'was lost'}; "
                    f"the session resumed on another generator from its last state")))

    async def _send_to_generator(self, request: generator_pb2.GeneratorRequest) -> None:
        if self.link is not None:
            try:
                await self.link.send(request)
            except LinkError as err:  # the link reader sees the failure too; migrate there
                log.info("session %s: update not delivered: %s", self.session_id, err)

    # --- the listener's timeline -------------------------------------------------------------------
    def _need_time(self, position_s: float) -> float | None:
        if self.anchor is None:
            return None
        wall, position = self.anchor
        return wall + (position_s - position)

    def _release_time(self, position_s: float) -> float:
        need = self._need_time(position_s)
        if need is None:  # not playing yet: as if the next chunk were needed now
            need = time.time() + position_s - self.next_position_s
        return need - self.settings.buffer_ahead_seconds

    async def _send_chunk(self, chunk: generator_pb2.GeneratedChunk) -> None:
        now = time.time()
        need = self._need_time(self.next_position_s)
        if need is None:
            self.anchor = (now, self.next_position_s)
            if self.play_requested_at is not None:
                TIME_TO_FIRST_AUDIO.observe(now - self.play_requested_at)
                self.play_requested_at = None
        else:
            lateness = max(0.0, now - need)
            LATENESS.observe(lateness)
            if lateness > UNDERRUN_TOLERANCE_S:
                self.underruns += 1
                UNDERRUNS.inc()
                wall, position = self.anchor
                self.anchor = (wall + lateness, position)  # the player stalled this long
        for version in [v for v in self.prompt_received_at if v <= chunk.style_version]:
            PROMPT_TO_AUDIO.observe(now - self.prompt_received_at.pop(version))
        audio = np.frombuffer(chunk.audio, "<f4").reshape(-1, facts.CHANNELS)
        duration_s = audio.shape[0] / facts.SAMPLE_RATE_HZ
        await self._emit(music_pb2.StreamResponse(chunk=music_pb2.AudioChunk(
            sequence=self.next_sequence, data=encode_audio(audio, self.encoding),
            start_seconds=self.next_position_s, duration_seconds=duration_s,
            prompt_version=chunk.style_version, config_version=chunk.sampling_version)))
        CHUNKS_SENT.inc()
        self.next_sequence += 1
        self.next_position_s += duration_s

    async def _emit(self, response: music_pb2.StreamResponse) -> None:
        try:
            await asyncio.wait_for(self.outbound.put(response), self.settings.slow_client_timeout_s)
        except asyncio.TimeoutError:
            raise ClientTooSlow(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client did not read for {self.settings.slow_client_timeout_s:.0f} s") from None

    # --- the pump: demand, receive, pace, send ---------------------------------------------------
    async def pump(self) -> None:
        """Run until the session ends normally; raises StreamEnded to end it with a status."""
        while not self.closed:
            self._changed.clear()
            if self.client_done and not self.playing:
                return
            wake_at = await self._step()
            timeout = None if wake_at is None else max(0.0, wake_at - time.time())
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _step(self) -> float | None:
        """Do what can be done now; return when to look again (None: on the next change)."""
        if self._link_failure is not None:
            failure, self._link_failure = self._link_failure, None
            await self._migrate(failure)
        if not self.playing:
            return None
        if self.link is None:
            await self.connect()
        await self._demand_ahead()
        while self.received:
            release = self._release_time(self.next_position_s)
            if time.time() < release:
                return release
            await self._send_chunk(self.received.popleft())
            await self._demand_ahead()
        return None

    async def _demand_ahead(self) -> None:
        """Demand chunks until `CHUNKS_AHEAD` are demanded or in hand, each due when the
        timeline releases it."""
        while self.link is not None and len(self.received) + self.demands_outstanding < CHUNKS_AHEAD:
            ahead = len(self.received) + self.demands_outstanding
            self.demands_outstanding += 1
            position_s = self.next_position_s + ahead * facts.CHUNK_SECONDS
            await self._send_to_generator(generator_pb2.GeneratorRequest(
                demand=generator_pb2.ChunkDemand(deadline_unix_s=self._release_time(position_s))))

    # --- client messages ---------------------------------------------------------------------------
    async def handle(self, request: music_pb2.StreamRequest) -> None:
        """Apply one client message; raises StreamEnded for a malformed stream."""
        kind = request.WhichOneof("request")
        if kind == "setup":
            raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT, "`setup` may only be sent once, first")
        if kind == "prompts":
            await self._update_prompts(request.prompts)
        elif kind == "config":
            await self._update_config(request.config)
        elif kind == "playback":
            await self._playback(request.playback.action)
        elif kind == "report":
            CLIENT_UNDERRUNS.inc(request.report.underruns)
        else:
            raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT,
                              "empty StreamRequest: set one of setup, prompts, config, playback, report")
        self._changed.set()

    async def _update_prompts(self, update: music_pb2.PromptUpdate) -> None:
        received_at = time.time()
        try:
            style = await resolve_prompts(update.prompts, self.embedder, self.settings.prompt_limits)
        except PromptError as err:
            await self._emit(music_pb2.StreamResponse(prompt_status=music_pb2.PromptStatus(
                accepted=False, message=f"prompt update refused, previous prompts kept: {err}",
                version=self.prompt_version, prompt_errors=err.errors)))
            return
        except BackendUnavailable as err:
            await self._emit(music_pb2.StreamResponse(prompt_status=music_pb2.PromptStatus(
                accepted=False, message=f"prompt update not applied, previous prompts kept: {err}",
                version=self.prompt_version)))
            return
        self.style = style
        self.prompt_version += 1
        self.prompt_received_at[self.prompt_version] = received_at
        await self._send_to_generator(generator_pb2.GeneratorRequest(style=generator_pb2.Style(
            embedding=[] if style is None else style.tolist(), version=self.prompt_version)))
        await self._emit(music_pb2.StreamResponse(prompt_status=music_pb2.PromptStatus(
            accepted=True, version=self.prompt_version,
            message="unconditioned" if style is None else f"{len(update.prompts)} prompt(s) mixed")))

    async def _update_config(self, update: music_pb2.GenerationConfig) -> None:
        try:
            self.sampling = merge_config(self.sampling, update)
        except ValueError as err:
            await self._emit(music_pb2.StreamResponse(warning=music_pb2.Warning(
                code="INVALID_CONFIG", message=f"config refused, previous settings kept: {err}")))
            return
        self.config_version += 1
        await self._send_to_generator(generator_pb2.GeneratorRequest(sampling=self._sampling_message()))

    async def _playback(self, action: int) -> None:
        Action = music_pb2.PlaybackControl
        if action == Action.PLAY:
            if not self.playing:
                self.playing = True
                self.play_requested_at = time.time()
        elif action == Action.PAUSE:
            self.playing = False
            self.anchor = None
        elif action == Action.STOP:
            self.playing = False
            self.anchor = None
            self.received.clear()
            self.snapshot = None  # PLAY after STOP starts from a fresh context
            self._drop_link()
        elif action == Action.RESET_CONTEXT:
            await self._send_to_generator(generator_pb2.GeneratorRequest(reset=generator_pb2.ResetContext()))
        else:
            await self._emit(music_pb2.StreamResponse(warning=music_pb2.Warning(
                code="INVALID_PLAYBACK", message=f"unknown playback action {action}; ignored")))

    async def read_client(self, requests) -> None:
        """Apply client messages in order until the client half-closes."""
        async for request in requests:
            await self.handle(request)
        self.client_done = True
        self._changed.set()

    async def close(self) -> None:
        self.closed = True
        self._changed.set()
        self._drop_link()
