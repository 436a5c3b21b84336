"""One listener's session: client messages in, paced audio chunks out.

The session keeps everything needed to resume on another generator: the mixed style, the
sampling settings and the last state snapshot the generator returned. Audio is released on
the listener's timeline: chunk n is needed ``n * chunk_seconds`` (2 s, or shorter when the
session asked for fewer ``chunk_frames``) after the first chunk after PLAY was sent, and is sent
the session's buffer ahead before that; a chunk sent after it was needed is a buffer underrun
(the listener's player ran dry), and the timeline shifts by the gap. The buffer ahead is
``buffer_ahead_seconds`` for 2 s chunks and shrinks in proportion for shorter ones, so a session
with short chunks really hears a prompt change sooner.

Moving a session to another generator (the generator failed, drains, left discovery, or missed
a chunk deadline by more than ``chunk_timeout_s``) happens in the background: chunks already
received keep being released on time meanwhile, and the listener is warned
(``SESSION_MIGRATED``) just before the first chunk made by the new generator. Updates that
arrive while a session is being opened reach the new generator before its first demand. A
session paused (or never played) for ``idle_release_s`` gives its generator slot back and is
placed again, from its snapshot, on PLAY.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import ClassVar

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from services.common import model_facts as facts
from services.common.metrics import LATENCY_BUCKETS_S
from services.common.proto.mrt.v1 import embedder_pb2, generator_pb2, music_pb2
from services.common.sampling import SamplingSettings
from services.gateway.audio_encoding import AudioEncoder
from services.gateway.audio_injection import (
    AudioInjector,
    AudioInputRejected,
    InjectionSettings,
    merge_injection_config,
    mix_live_style,
    uses_injection_fields,
)
from services.gateway.embedder_client import BackendUnavailable, EmbedderClient, PromptRejected
from services.gateway.generation_config import merge_config
from services.gateway.generator_link import GeneratorLink, LinkError
from services.gateway.generator_pool import (
    GeneratorEndpoint,
    GeneratorPool,
    NoCapacity,
    NoGenerator,
)
from services.gateway.prompts import PromptError, PromptLimits, prompt_weight, resolve_prompts
from services.gateway.resume import ResumeKeeper, float_array, float_bytes
from services.gateway.session_store import ResumePoint, SessionRecord

log = logging.getLogger(__name__)

UNDERRUNS = Counter(
    "mrt_gateway_buffer_underruns_total", "Chunks sent later than the listener needed them"
)
CLIENT_UNDERRUNS = Counter(
    "mrt_gateway_client_reported_underruns_total", "Underruns clients reported hearing"
)
TIME_TO_FIRST_AUDIO = Histogram(
    "mrt_gateway_time_to_first_audio_seconds",
    "From PLAY to the first chunk sent",
    buckets=LATENCY_BUCKETS_S,
)
CHUNKS_SENT = Counter("mrt_gateway_chunks_sent_total", "Audio chunks sent to listeners")
LATENESS = Histogram(
    "mrt_gateway_chunk_lateness_seconds",
    "How late a chunk left against the listener's need (0 = in time)",
    buckets=LATENCY_BUCKETS_S,
)
PROMPT_TO_AUDIO = Histogram(
    "mrt_gateway_prompt_to_audio_seconds",
    "From a prompt update to when the listener's player reaches the first chunk made with it "
    "(the chunk is sent the session's buffer ahead before that)",
    buckets=LATENCY_BUCKETS_S,
)
AUDIO_INPUT_RECEIVED = Counter(
    "mrt_gateway_audio_input_received_seconds_total",
    "Seconds of live audio input received from clients",
)
AUDIO_INPUT_DROPPED = Counter(
    "mrt_gateway_audio_input_dropped_seconds_total",
    "Seconds of live audio input refused or dropped before it was mixed",
)
INJECTIONS = Counter(
    "mrt_gateway_audio_injections_total",
    "Mixes of live input and model output sent to be written into a context",
)
MIGRATED = Counter(
    "mrt_gateway_sessions_migrated_total",
    "Sessions resumed on another generator, by reason",
    ["reason"],
)
IDLE_RELEASED = Counter(
    "mrt_gateway_idle_sessions_released_total",
    "Paused or unplayed sessions that gave their generator slot back",
)

# Messages queued for a client before the session waits for it to read (8 s of 2 s chunks).
OUTBOX_MESSAGES = 4
# The same audio-input warning is repeated at most this often (a live stream sends many messages).
AUDIO_INPUT_WARNING_INTERVAL_S = 5.0
# Chunks a session keeps demanded or in hand (generated, not yet released), whatever their
# length. Demanding ahead lets the generator serve sessions of every phase in one batch per
# chunk period: a session served by one batch has its next demand there already. The generator
# still makes each chunk at most about a period before its release, so counting in chunks keeps
# a short-chunk session's audio made close to its release (and a prompt change heard sooner).
CHUNKS_AHEAD = 3
# A chunk this close to its need time still counts as in time (scheduling jitter).
UNDERRUN_TOLERANCE_S = 0.02


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    # How far ahead of the listener's need a 2 s chunk is sent; shorter chunks are sent
    # proportionally less ahead (``session_buffer_ahead_s``).
    buffer_ahead_seconds: float
    open_timeout_s: float
    slow_client_timeout_s: float
    prompt_limits: PromptLimits
    max_audio_input_message_bytes: int = 1024 * 1024
    # A demanded chunk this late against its deadline moves the session to another generator.
    chunk_timeout_s: float = 1.0
    # A session paused (or never played) this long gives its generator slot back.
    idle_release_s: float = 60.0
    # How long a session that lost its generator keeps looking for another before it ends.
    reconnect_window_s: float = 30.0
    # How often a session looking for a generator tries again.
    reconnect_interval_s: float = 1.0


class StreamEnded(Exception):
    """End the client's stream with this status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ClientTooSlow(StreamEnded):
    """The client stopped reading: its stream is ended so it holds nothing."""


class MoveReason:
    """Why a session moves to another generator (the ``reason`` label of the metric)."""

    GENERATOR_LOST = "generator_lost"  # its stream failed
    DRAIN = "drain"  # the generator drains, or left discovery
    TIMEOUT = "chunk_timeout"  # a demanded chunk is overdue

    WARNINGS: ClassVar[dict[str, str]] = {
        GENERATOR_LOST: "was lost",
        DRAIN: "is draining",
        TIMEOUT: "stopped delivering audio in time",
    }


@dataclasses.dataclass(frozen=True)
class MigrationNotice:
    """Queued among received chunks: warn the listener just before the new generator's audio."""

    reason: str


def chunk_seconds(chunk_frames: int) -> float:
    return chunk_frames / facts.FRAME_RATE_HZ


def session_buffer_ahead_s(settings: SessionSettings, chunk_frames: int) -> float:
    """How far ahead of the listener's need a session's chunks are sent: the gateway's buffer
    for 2 s chunks, scaled to the session's chunk length (the same number of chunks)."""
    return settings.buffer_ahead_seconds * chunk_frames / facts.CHUNK_FRAMES


def placement_error(err: Exception) -> StreamEnded:
    if isinstance(err, NoCapacity):
        return StreamEnded(grpc.StatusCode.RESOURCE_EXHAUSTED, f"no capacity: {err}")
    return StreamEnded(grpc.StatusCode.UNAVAILABLE, f"no generator available: {err}")


class ListenerSession:
    def __init__(
        self,
        *,
        session_id: str,
        model: str,
        encoder: AudioEncoder,
        settings: SessionSettings,
        pool: GeneratorPool,
        embedder: EmbedderClient,
        seed: int,
        chunk_frames: int = facts.CHUNK_FRAMES,
        initial_audio: np.ndarray | None = None,
        open_link: Callable[[GeneratorEndpoint], GeneratorLink] = GeneratorLink,
    ):
        self.session_id = session_id
        # The id the generator knows this stream's session by: a resumed session gets its own,
        # since the stream it continues may still be open on the same generator.
        self.generator_session_id = session_id
        self.model = model
        self.encoder = encoder  # the listener's, whichever generator makes the audio
        self.settings = settings
        self.chunk_frames = chunk_frames  # fixed for the session's life, resumes included
        self.chunk_seconds = chunk_seconds(chunk_frames)
        self.buffer_ahead_s = session_buffer_ahead_s(settings, chunk_frames)
        self.pool = pool
        self.embedder = embedder
        self.open_link = open_link
        self.outbound: asyncio.Queue[music_pb2.StreamResponse | None] = asyncio.Queue(
            maxsize=OUTBOX_MESSAGES
        )
        # What the generator needs to (re)open the session anywhere.
        self.style: np.ndarray | None = None
        self.prompt_version = 0
        self.sampling = SamplingSettings(seed=seed)
        self.injection_settings = InjectionSettings()
        self.config_version = 0
        self.reset_pending = False  # RESET_CONTEXT not yet handed to the generator making chunks
        self.snapshot: generator_pb2.SessionSnapshot | None = None
        # Audio input (audio_injection.py): the clip that seeds a fresh context, and the
        # input / output history, made on the first audio_input message.
        self.initial_audio = initial_audio
        self.audio_input_supported = False
        self.injector: AudioInjector | None = None
        self.generated_until_samples = 0  # timeline position where the next generated chunk starts
        self._last_input_warning: tuple[str, float] = ("", 0.0)
        # The live style prompt: the prompts' own mix and weight, the input's latest embedding.
        self.prompt_style: np.ndarray | None = None
        self.prompt_weight_total = 0.0
        self.input_embedding: np.ndarray | None = None
        self._input_embedding_task: asyncio.Task | None = None
        # Generation.
        self.link: GeneratorLink | None = None
        self._link_reader: asyncio.Task | None = None
        self._placement: asyncio.Task | None = None  # opening the session on a generator
        # Deadlines of the chunks demanded and not yet received, oldest first, and when the
        # oldest of them counts as overdue (the chunk watchdog).
        self.demand_deadlines: collections.deque[float] = collections.deque()
        self.demand_overdue_at: float | None = None
        self.received: collections.deque[generator_pb2.GeneratedChunk | MigrationNotice] = (
            collections.deque()
        )
        # Playback and the listener's timeline.
        self.playing = False
        self.idle_since: float | None = time.time()  # paused / never played since then
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
        self.keeper: ResumeKeeper | None = None  # keeps the state a resume needs in the store
        self.reconnect_requested = False  # the gateway drains: tell the client to move
        self._reconnect_told = False

    # --- resuming (resume.py keeps the record in the session store) --------------------------------
    def fill_record(self, record: SessionRecord) -> None:
        """Copy into ``record`` what a resume needs besides the resume points."""
        record.playing = self.playing
        record.style = float_bytes(self.style)
        record.prompt_style = float_bytes(self.prompt_style)
        record.prompt_weight_total = self.prompt_weight_total
        record.prompt_version = self.prompt_version
        record.sampling = dataclasses.asdict(self.sampling)
        record.injection = dataclasses.asdict(self.injection_settings)
        record.config_version = self.config_version

    def restore(self, record: SessionRecord, point: ResumePoint) -> None:
        """Continue ``record``'s session from ``point``: its next chunk is ``point.sequence``."""
        self.style = float_array(record.style)
        self.prompt_style = float_array(record.prompt_style)
        self.prompt_weight_total = record.prompt_weight_total
        self.prompt_version = record.prompt_version
        self.sampling = SamplingSettings(**record.sampling)
        self.injection_settings = InjectionSettings(**record.injection)
        self.config_version = record.config_version
        self.snapshot = (
            generator_pb2.SessionSnapshot.FromString(point.snapshot) if point.snapshot else None
        )
        self.initial_audio = None  # the context already holds it
        self.generator_session_id = f"{record.session_id}-{record.epoch}"
        self.next_sequence = point.sequence
        self.next_position_s = point.position_s
        self.generated_until_samples = round(point.position_s * facts.SAMPLE_RATE_HZ)
        if record.playing:
            self.playing = True
            self.idle_since = None

    def _remember(self, point: ResumePoint | None = None) -> None:
        if self.keeper is not None:
            self.fill_record(self.keeper.record)
            self.keeper.changed(point)

    def ask_to_reconnect(self) -> None:
        """The gateway drains: the pump tells the client to resume elsewhere (RECONNECT)."""
        self.reconnect_requested = True
        if self.keeper is not None:
            self.keeper.record.drain_requested = True
            self.keeper.changed()
        self._changed.set()

    async def _report_resume_state(self) -> None:
        """End a stream a newer one took over; warn once when resume became unavailable; pass
        on a drain's RECONNECT."""
        if self.keeper is None:
            return
        if self.keeper.superseded:
            raise StreamEnded(grpc.StatusCode.ABORTED, "this session continues on a newer stream")
        if self.reconnect_requested and not self._reconnect_told:
            self._reconnect_told = True
            await self.keeper.flush()  # the record says why the session moves before it does
            await self._emit(
                music_pb2.StreamResponse(
                    warning=music_pb2.Warning(
                        code="RECONNECT",
                        resume_token=self.keeper.token,
                        message="this gateway is shutting down: open a new stream with this resume_token "
                        "(and resume_from_sequence); this one keeps playing until then",
                    )
                )
            )
        if self.keeper.failure_unreported is not None:
            why, self.keeper.failure_unreported = self.keeper.failure_unreported, None
            await self._emit(
                music_pb2.StreamResponse(
                    warning=music_pb2.Warning(
                        code="RESUME_UNAVAILABLE",
                        message=f"the session store failed ({why}); this session plays on but cannot "
                        f"be resumed after a lost stream until it recovers",
                    )
                )
            )

    # --- generator placement and failover ----------------------------------------------------------
    def _open_request(self) -> generator_pb2.OpenSession:
        request = generator_pb2.OpenSession(
            session_id=self.generator_session_id,
            model=self.model,
            style=self._style_message(),
            sampling=self._sampling_message(),
            chunk_frames=self.chunk_frames,
        )
        if self.snapshot is not None:
            request.resume_from.CopyFrom(self.snapshot)
        return request

    def _style_message(self) -> generator_pb2.Style:
        return generator_pb2.Style(
            embedding=[] if self.style is None else self.style.tolist(), version=self.prompt_version
        )

    def _sampling_message(self) -> generator_pb2.Sampling:
        return generator_pb2.Sampling(
            temperature=self.sampling.temperature,
            top_k=self.sampling.top_k,
            guidance=self.sampling.guidance,
            seed=self.sampling.seed,
            version=self.config_version,
        )

    async def connect(self) -> None:
        """Place the session for the first time (at setup).

        Raises StreamEnded: RESOURCE_EXHAUSTED when all are full, UNAVAILABLE when none is up."""
        link, versions = await self._open_somewhere(exclude=set())
        await self._catch_up(link, versions)
        self._install(link)

    async def _open_somewhere(self, exclude: set[str]) -> tuple[GeneratorLink, tuple[int, int]]:
        """Open the session on the generator with the most headroom (trying the next on
        refusal): the open link, and the (prompt, config) versions the generator was given."""
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
            link = self.open_link(endpoint)
            versions = (self.prompt_version, self.config_version)
            try:
                opened = await link.open(self._open_request(), self.settings.open_timeout_s)
                self._check_chunk_length(opened, endpoint)
                self.audio_input_supported = opened.audio_input_supported
                if (
                    self.snapshot is None
                    and self.initial_audio is not None
                    and self.audio_input_supported
                ):
                    await link.send(
                        generator_pb2.GeneratorRequest(
                            prime=generator_pb2.PrimeContext(
                                audio=self.initial_audio.astype("<f4").tobytes()
                            )
                        )
                    )
            except LinkError as err:
                link.close()
                log.info(
                    "session %s: generator %s refused: %s", self.session_id, endpoint.address, err
                )
                if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    last_error = NoCapacity(err.details)
                else:
                    if not err.draining and err.code != grpc.StatusCode.FAILED_PRECONDITION:
                        self.pool.mark_unhealthy(endpoint.address)
                    last_error = NoGenerator(err.details)
                continue
            if self.closed:  # the client left while the generator was opening the session
                link.close()
                raise StreamEnded(grpc.StatusCode.CANCELLED, "the session is closed")
            self.pool.placed(endpoint)
            return link, versions

    def _check_chunk_length(
        self, opened: generator_pb2.SessionOpened, endpoint: GeneratorEndpoint
    ) -> None:
        """Raise LinkError (FAILED_PRECONDITION: healthy, just not for this session) when the
        generator makes chunks of another length than the session asked for: one that predates
        ``chunk_frames`` ignores it and makes 2 s chunks."""
        if abs(opened.chunk_seconds - self.chunk_seconds) > 1e-4:
            raise LinkError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"generator {endpoint.address} makes {opened.chunk_seconds:g} s chunks, not the "
                f"{self.chunk_seconds:g} s ({self.chunk_frames} frames) this session asked for",
            )

    def _install(self, link: GeneratorLink) -> None:
        """Make ``link`` the session's generator stream."""
        self.link = link
        self.demand_deadlines.clear()
        self.demand_overdue_at = None
        self._link_failure = None
        self._link_reader = asyncio.create_task(self._read_link(link))
        log.info("session %s placed on generator %s", self.session_id, link.endpoint.address)

    async def _catch_up(self, link: GeneratorLink, versions: tuple[int, int]) -> None:
        """Hand ``link``'s generator what changed while it was opening the session (``versions``:
        the prompt and config versions it was opened with), so no chunk is made with settings
        older than the client was told. Returns with nothing left to hand over: the caller
        installs the link before anything else can change."""
        prompt_version, config_version = versions
        while (self.prompt_version, self.config_version) != (
            prompt_version,
            config_version,
        ) or self.reset_pending:
            if self.prompt_version != prompt_version:
                prompt_version = self.prompt_version
                await link.send(generator_pb2.GeneratorRequest(style=self._style_message()))
            if self.config_version != config_version:
                config_version = self.config_version
                await link.send(generator_pb2.GeneratorRequest(sampling=self._sampling_message()))
            if self.reset_pending:
                self.reset_pending = False
                try:
                    await link.send(
                        generator_pb2.GeneratorRequest(reset=generator_pb2.ResetContext())
                    )
                except LinkError:
                    self.reset_pending = True  # for the generator the session moves to next
                    raise

    async def _place_in_background(self, reason: str | None, exclude: set[str]) -> None:
        """Open the session on a generator and install it, while the pump goes on releasing
        what was received. ``reason`` is why it moves (None: placed again on PLAY). A moving
        session keeps trying for ``reconnect_window_s`` (a lost generator may be the only one
        and come back); a session placed on PLAY ends at once when nothing can take it."""
        give_up_at = time.time() + self.settings.reconnect_window_s
        while True:
            try:
                link, versions = await self._open_somewhere(exclude)
                break
            except StreamEnded as err:
                if reason is None or self.closed:
                    raise
                if time.time() >= give_up_at:
                    raise StreamEnded(
                        grpc.StatusCode.UNAVAILABLE,
                        f"generator lost and no other could take the session: {err.details}",
                    ) from None
                log.info(
                    "session %s: no generator to move to yet (%s); trying again",
                    self.session_id,
                    err.details,
                )
                exclude = set()  # the lost generator is unhealthy until it answers again
                await asyncio.sleep(self.settings.reconnect_interval_s)
        try:
            await self._catch_up(link, versions)
        except LinkError as err:  # failed at once: its reader will report it
            log.info("session %s: update not delivered on open: %s", self.session_id, err)
        self._install(link)
        if reason is not None:
            MIGRATED.labels(reason).inc()
            self.received.append(MigrationNotice(reason))

    def _start_placement(self, reason: str | None, exclude: set[str] = frozenset()) -> None:
        self._placement = asyncio.create_task(self._place_in_background(reason, set(exclude)))
        self._placement.add_done_callback(lambda _: self._changed.set())

    def _move(self, reason: str, why: str) -> None:
        """Leave the current generator and resume from the last snapshot on another one."""
        failed = self.link.endpoint.address if self.link is not None else ""
        log.warning(
            "session %s: leaving generator %s (%s: %s); resuming elsewhere from chunk %d",
            self.session_id,
            failed,
            reason,
            why,
            self.snapshot.chunk_index if self.snapshot is not None else 0,
        )
        self._drop_link()
        self._start_placement(reason, exclude={failed} if failed else set())

    async def _read_link(self, link: GeneratorLink) -> None:
        try:
            while True:
                chunk = await link.read_chunk()
                if link is not self.link:  # a chunk from a generator the session left
                    return
                self.pool.delivered(link.endpoint)
                self.snapshot = chunk.snapshot
                self._record_output(chunk)
                self.received.append(chunk)
                self._received_demanded_chunk()
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
        self.link, self._link_reader, self._link_failure = None, None, None
        self.demand_deadlines.clear()
        self.demand_overdue_at = None

    def _cancel_placement(self) -> None:
        if self._placement is not None:
            self._placement.cancel()
            self._placement = None

    async def _send_to_generator(self, request: generator_pb2.GeneratorRequest) -> bool:
        """Send to the generator making the session's chunks; False when there is none now (a
        placement in progress hands it the latest settings)."""
        if self.link is None:
            return False
        try:
            await self.link.send(request)
        except LinkError as err:  # the link reader sees the failure too; the move resends
            log.info("session %s: update not delivered: %s", self.session_id, err)
            return False
        return True

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
        return need - self.buffer_ahead_s

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
        plays_at = self._need_time(self.next_position_s)  # the listener's player reaches it then
        for version in [v for v in self.prompt_received_at if v <= chunk.style_version]:
            PROMPT_TO_AUDIO.observe(plays_at - self.prompt_received_at.pop(version))
        audio = np.frombuffer(chunk.audio, "<f4").reshape(-1, facts.CHANNELS)
        duration_s = audio.shape[0] / facts.SAMPLE_RATE_HZ
        if self.keeper is not None:  # where the session continues after this chunk: stored first
            self._remember(
                ResumePoint(
                    sequence=self.next_sequence + 1,
                    position_s=self.next_position_s + duration_s,
                    snapshot=chunk.snapshot.SerializeToString(),
                )
            )
            await self.keeper.flush()
        await self._emit(
            music_pb2.StreamResponse(
                chunk=music_pb2.AudioChunk(
                    sequence=self.next_sequence,
                    data=self.encoder.encode(audio),
                    start_seconds=self.next_position_s,
                    duration_seconds=duration_s,
                    prompt_version=chunk.style_version,
                    config_version=chunk.sampling_version,
                )
            )
        )
        CHUNKS_SENT.inc()
        self.next_sequence += 1
        self.next_position_s += duration_s

    async def _emit(self, response: music_pb2.StreamResponse) -> None:
        try:
            await asyncio.wait_for(self.outbound.put(response), self.settings.slow_client_timeout_s)
        except TimeoutError:
            raise ClientTooSlow(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client did not read for {self.settings.slow_client_timeout_s:.0f} s",
            ) from None

    # --- the pump: demand, receive, pace, send ---------------------------------------------------
    async def pump(self) -> None:
        """Run until the session ends normally; raises StreamEnded to end it with a status."""
        try:
            while not self.closed:
                self._changed.clear()
                if self.client_done and not self.playing:
                    return
                wake_at = await self._step()
                timeout = None if wake_at is None else max(0.0, wake_at - time.time())
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            self._cancel_placement()

    async def _step(self) -> float | None:
        """Do what can be done now; return when to look again (None: on the next change)."""
        self._follow_generator()
        await self._report_resume_state()
        wake_at = [await self._release_received()]
        if self._placement is not None:
            return _earliest(wake_at)  # the placement wakes the pump when it is done
        if self.playing:
            if self.link is None:
                self._start_placement(reason=None)
                return _earliest(wake_at)
            await self._demand_ahead()
            wake_at.append(self.demand_overdue_at)
        elif self.link is not None:
            wake_at.append(self._release_if_idle())
        return _earliest(wake_at)

    def _follow_generator(self) -> None:
        """React to what happened to the generator: a failed stream, a finished placement, an
        overdue chunk, a generator leaving discovery."""
        if self._link_failure is not None:
            failure, self._link_failure = self._link_failure, None
            if failure.draining:
                self._move(MoveReason.DRAIN, "the generator is draining")
            else:
                self.pool.mark_unhealthy(self.link.endpoint.address)
                self._move(MoveReason.GENERATOR_LOST, str(failure))
        if self._placement is not None and self._placement.done():
            placement, self._placement = self._placement, None
            placement.result()  # raises StreamEnded when nothing could take the session
        if self.link is None or self._placement is not None:
            return
        if self.demand_overdue_at is not None and time.time() >= self.demand_overdue_at:
            endpoint = self.link.endpoint
            self.pool.missed_deadline(endpoint)
            if self.pool.has_room_elsewhere(self.model, endpoint.address):
                self._move(
                    MoveReason.TIMEOUT,
                    f"no chunk {self.settings.chunk_timeout_s:g} s after its deadline",
                )
            else:  # nowhere better to go: keep waiting for this one
                log.warning(
                    "session %s: generator %s is late and no other has room; waiting",
                    self.session_id,
                    endpoint.address,
                )
                self.demand_overdue_at = time.time() + self.settings.chunk_timeout_s
        elif self.link.endpoint.leaving and not self.demand_deadlines:
            self._move(MoveReason.DRAIN, "the generator left discovery")

    async def _release_received(self) -> float | None:
        """Send what is due of the received chunks (and migration notices, in their place);
        return when the next one is due."""
        while self.received and self.playing:
            item = self.received[0]
            if isinstance(item, MigrationNotice):
                self.received.popleft()
                what = MoveReason.WARNINGS[item.reason]
                await self._emit(
                    music_pb2.StreamResponse(
                        warning=music_pb2.Warning(
                            code="SESSION_MIGRATED",
                            message=f"the generator serving this session {what}; the session resumed "
                            f"on another generator from its last state",
                        )
                    )
                )
                continue
            release = self._release_time(self.next_position_s)
            if time.time() < release:
                return release
            await self._send_chunk(self.received.popleft())
        return None

    async def _demand_ahead(self) -> None:
        """Demand chunks until `CHUNKS_AHEAD` are demanded or in hand, each due when the
        timeline releases it. A session playing along demands one at a time: the mix sent
        before each demand needs the model's output up to that chunk."""
        limit = 1 if self.injector is not None else CHUNKS_AHEAD
        while self.link is not None:
            ahead = self._chunks_in_hand() + len(self.demand_deadlines)
            if ahead >= limit:
                return
            await self._inject_input()
            deadline = self._release_time(self.next_position_s + ahead * self.chunk_seconds)
            # Outstanding before the send: the chunk may arrive (and clear it) before it returns.
            self.demand_deadlines.append(deadline)
            if self.demand_overdue_at is None:
                self.demand_overdue_at = max(deadline, time.time()) + self.settings.chunk_timeout_s
            if not await self._send_to_generator(
                generator_pb2.GeneratorRequest(
                    demand=generator_pb2.ChunkDemand(deadline_unix_s=deadline)
                )
            ):
                self.demand_deadlines.clear()
                self.demand_overdue_at = None
                return

    def _received_demanded_chunk(self) -> None:
        """A demanded chunk arrived: the watchdog now watches the next one, if any."""
        if self.demand_deadlines:
            self.demand_deadlines.popleft()
        self.demand_overdue_at = (
            max(self.demand_deadlines[0], time.time()) + self.settings.chunk_timeout_s
            if self.demand_deadlines
            else None
        )

    def _chunks_in_hand(self) -> int:
        return sum(1 for item in self.received if not isinstance(item, MigrationNotice))

    def _release_if_idle(self) -> float | None:
        """Give the generator slot back once paused / unplayed for ``idle_release_s``; the
        snapshot and received chunks stay, and PLAY places the session again."""
        if self.idle_since is None or self.demand_deadlines:
            return None
        release_at = self.idle_since + self.settings.idle_release_s
        if time.time() < release_at:
            return release_at
        log.info(
            "session %s idle for %.0f s: generator %s slot given back",
            self.session_id,
            time.time() - self.idle_since,
            self.link.endpoint.address,
        )
        IDLE_RELEASED.inc()
        self._drop_link()
        return None

    # --- live audio input -------------------------------------------------------------------------
    def _record_output(self, chunk: generator_pb2.GeneratedChunk) -> None:
        """Keep the model's output for mixing with input, at its place on the timeline."""
        audio = np.frombuffer(chunk.audio, "<f4").reshape(-1, facts.CHANNELS)
        if self.injector is not None:
            tail = np.frombuffer(chunk.snapshot.crossfade_tail, "<f4").reshape(-1, facts.CHANNELS)
            self.injector.add_output(self.generated_until_samples, audio, tail)
        self.generated_until_samples += len(audio)

    async def _inject_input(self) -> None:
        """Before demanding a chunk: send the mix of recent input and output, if any input."""
        if self.injector is None or not self.audio_input_supported:
            return
        mix = self.injector.mix_for_chunk(self.generated_until_samples)
        if mix is not None:
            INJECTIONS.inc()
            await self._send_to_generator(
                generator_pb2.GeneratorRequest(
                    inject=generator_pb2.InjectAudio(mix=mix.astype("<f4").tobytes())
                )
            )
        if self.injection_settings.style_weight > 0 and (
            self._input_embedding_task is None or self._input_embedding_task.done()
        ):
            wav = self.injector.recent_input_wav()
            if wav is not None:  # embedded in the background: the pump does not wait for it
                self._input_embedding_task = asyncio.create_task(self._embed_input(wav))

    async def _embed_input(self, wav: bytes) -> None:
        """Embed the newest input and let the next chunks use it as a style prompt."""
        try:
            self.input_embedding = await self.embedder.embed(embedder_pb2.EmbedRequest(audio=wav))
        except (BackendUnavailable, PromptRejected) as err:
            log.info("session %s: live input not embedded: %s", self.session_id, err)
            return
        await self._apply_style()

    async def _apply_style(self) -> None:
        """Send the style the generator should use now: the prompts, with the live input."""
        self.style = mix_live_style(
            self.prompt_style,
            self.prompt_weight_total,
            self.input_embedding,
            self.injection_settings.style_weight,
        )
        await self._send_to_generator(generator_pb2.GeneratorRequest(style=self._style_message()))

    def _why_no_audio_input(self) -> str | None:
        """Why this session cannot play along with live input (None: it can)."""
        if not self.audio_input_supported:
            return f"model '{self.model}' does not take audio input"
        if self.chunk_frames != facts.CHUNK_FRAMES:
            return (
                f"live audio input needs {facts.CHUNK_FRAMES}-frame chunks; this session "
                f"has {self.chunk_frames}"
            )
        return None

    async def _add_audio_input(self, message: music_pb2.AudioInput) -> None:
        if (why := self._why_no_audio_input()) is not None:
            await self._warn_about_input("UNSUPPORTED", f"{why}; audio_input is ignored")
            return
        if self.injector is None:
            self.injector = AudioInjector()
            self.injector.settings = self.injection_settings
        try:
            receipt = self.injector.add_input(message, self.settings.max_audio_input_message_bytes)
        except AudioInputRejected as err:
            await self._warn_about_input("INVALID_AUDIO_INPUT", f"audio_input refused: {err}")
            return
        AUDIO_INPUT_RECEIVED.inc(receipt.received_s)
        if receipt.dropped_s > 0:
            AUDIO_INPUT_DROPPED.inc(receipt.dropped_s)
            await self._warn_about_input(
                "AUDIO_INPUT_DROPPED",
                "audio input arrives faster than real time (or too late): "
                "the oldest input was dropped before it could be mixed",
            )

    async def _warn_about_input(self, code: str, message: str) -> None:
        """A warning, but the same one at most every few seconds: input streams are chatty."""
        last_message, last_at = self._last_input_warning
        now = time.monotonic()
        if message == last_message and now - last_at < AUDIO_INPUT_WARNING_INTERVAL_S:
            return
        self._last_input_warning = (message, now)
        await self._emit(
            music_pb2.StreamResponse(warning=music_pb2.Warning(code=code, message=message))
        )

    # --- client messages ---------------------------------------------------------------------------
    async def handle(self, request: music_pb2.StreamRequest) -> None:
        """Apply one client message; raises StreamEnded for a malformed stream."""
        kind = request.WhichOneof("request")
        if kind == "setup":
            raise StreamEnded(
                grpc.StatusCode.INVALID_ARGUMENT, "`setup` may only be sent once, first"
            )
        if kind == "prompts":
            await self._update_prompts(request.prompts)
        elif kind == "config":
            await self._update_config(request.config)
        elif kind == "playback":
            await self._playback(request.playback.action)
        elif kind == "report":
            CLIENT_UNDERRUNS.inc(request.report.underruns)
        elif kind == "audio_input":
            await self._add_audio_input(request.audio_input)
        else:
            raise StreamEnded(
                grpc.StatusCode.INVALID_ARGUMENT,
                "empty StreamRequest: set one of setup, prompts, config, playback, report, "
                "audio_input",
            )
        if kind in ("prompts", "config", "playback"):
            self._remember()
        self._changed.set()

    async def _update_prompts(self, update: music_pb2.PromptUpdate) -> None:
        received_at = time.time()
        try:
            style = await resolve_prompts(
                update.prompts, self.embedder, self.settings.prompt_limits
            )
        except PromptError as err:
            await self._emit(
                music_pb2.StreamResponse(
                    prompt_status=music_pb2.PromptStatus(
                        accepted=False,
                        message=f"prompt update refused, previous prompts kept: {err}",
                        version=self.prompt_version,
                        prompt_errors=err.errors,
                    )
                )
            )
            return
        except BackendUnavailable as err:
            await self._emit(
                music_pb2.StreamResponse(
                    prompt_status=music_pb2.PromptStatus(
                        accepted=False,
                        message=f"prompt update not applied, previous prompts kept: {err}",
                        version=self.prompt_version,
                    )
                )
            )
            return
        self.prompt_style = style
        self.prompt_weight_total = sum(
            prompt_weight(p) for p in update.prompts if prompt_weight(p) > 0
        )
        self.prompt_version += 1
        self.prompt_received_at[self.prompt_version] = received_at
        await self._apply_style()
        await self._emit(
            music_pb2.StreamResponse(
                prompt_status=music_pb2.PromptStatus(
                    accepted=True,
                    version=self.prompt_version,
                    message="unconditioned"
                    if style is None
                    else f"{len(update.prompts)} prompt(s) mixed",
                )
            )
        )

    async def _update_config(self, update: music_pb2.GenerationConfig) -> None:
        try:
            sampling = merge_config(self.sampling, update)
            injection_settings = merge_injection_config(self.injection_settings, update)
        except ValueError as err:
            await self._emit(
                music_pb2.StreamResponse(
                    warning=music_pb2.Warning(
                        code="INVALID_CONFIG",
                        message=f"config refused, previous settings kept: {err}",
                    )
                )
            )
            return
        style_weight_changed = (
            injection_settings.style_weight != self.injection_settings.style_weight
        )
        self.sampling, self.injection_settings = sampling, injection_settings
        self.config_version += 1
        if self.injector is not None:
            self.injector.settings = self.injection_settings
        if style_weight_changed and self.input_embedding is not None:
            await self._apply_style()
        if uses_injection_fields(update) and (why := self._why_no_audio_input()) is not None:
            await self._warn_about_input(
                "UNSUPPORTED", f"{why}; the input_* settings have no effect"
            )
        await self._send_to_generator(
            generator_pb2.GeneratorRequest(sampling=self._sampling_message())
        )

    async def _playback(self, action: int) -> None:
        Action = music_pb2.PlaybackControl
        if action == Action.PLAY:
            if not self.playing:
                self.playing = True
                self.idle_since = None
                self.play_requested_at = time.time()
        elif action == Action.PAUSE:
            if self.playing:
                self.playing = False
                self.idle_since = time.time()
            self.anchor = None
        elif action == Action.STOP:
            self.playing = False
            self.idle_since = time.time()
            self.anchor = None
            self.generated_until_samples -= sum(
                _audio_samples(item)
                for item in self.received
                if not isinstance(item, MigrationNotice)
            )
            self.received.clear()
            if self.injector is not None:
                self.injector.restart_output()
            self.snapshot = None  # PLAY after STOP starts from a fresh context
            self.reset_pending = False
            self._remember(ResumePoint(self.next_sequence, self.next_position_s))  # a fresh context
            self._cancel_placement()
            self._drop_link()
        elif action == Action.RESET_CONTEXT:
            self.reset_pending = not await self._send_to_generator(
                generator_pb2.GeneratorRequest(reset=generator_pb2.ResetContext())
            )
        else:
            await self._emit(
                music_pb2.StreamResponse(
                    warning=music_pb2.Warning(
                        code="INVALID_PLAYBACK",
                        message=f"unknown playback action {action}; ignored",
                    )
                )
            )

    async def read_client(self, requests) -> None:
        """Apply client messages in order until the client half-closes (a cancelled call or a
        lost connection may end the request stream the same way, before the cancel arrives)."""
        async for request in requests:
            await self.handle(request)
        self.client_done = True
        self._changed.set()

    async def close(self) -> None:
        if self._input_embedding_task is not None:
            self._input_embedding_task.cancel()
        self.closed = True
        self._changed.set()
        self._cancel_placement()
        self._drop_link()
        self.encoder.close()


def _audio_samples(chunk: generator_pb2.GeneratedChunk) -> int:
    """Samples per channel of a generated chunk's float32 interleaved audio."""
    return len(chunk.audio) // (4 * facts.CHANNELS)


def _earliest(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
