"""The public MusicGeneration API."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
from prometheus_client import Counter, Gauge

from services.common import model_facts as facts
from services.common.models import LOCAL_MODELS, MODEL_DESCRIPTIONS
from services.common.proto.mrt.v1 import embedder_pb2, music_pb2, music_pb2_grpc
from services.gateway.audio_encoding import AudioEncoder, make_encoder
from services.gateway.audio_injection import AudioInputRejected, decode_initial_audio
from services.gateway.auth import bearer_token, key_digest
from services.gateway.embedder_client import BackendUnavailable, EmbedderClient, PromptRejected
from services.gateway.generator_pool import GeneratorPool
from services.gateway.listener import ClientTooSlow, ListenerSession, SessionSettings, StreamEnded
from services.gateway.resume import ResumeKeeper
from services.gateway.session_store import (
    MemorySessionStore,
    ResumePoint,
    SessionRecord,
    SessionStore,
    StoreUnavailable,
    new_resume_token,
    token_key,
)

log = logging.getLogger(__name__)

ACTIVE = Gauge("mrt_gateway_active_sessions", "Listener streams open now")
STARTED = Counter("mrt_gateway_sessions_started_total", "Sessions started", ["model"])
ENDED = Counter("mrt_gateway_sessions_ended_total", "Sessions ended, by outcome", ["outcome"])
RESUMED = Counter(
    "mrt_gateway_sessions_resumed_total",
    "Sessions continued from a resume token, by reason (the client's stream was "
    "lost, or the gateway asked it to reconnect)",
    ["reason"],
)
RESUME_FAILED = Counter(
    "mrt_gateway_session_resume_failures_total", "Resume tokens refused, by reason", ["reason"]
)

SETUP_TIMEOUT_S = 30.0
# How long a failed session may wait for its handler to end the stream before it is cancelled.
STUCK_WRITE_GRACE_S = 1.0
# How long a cancelled session's tasks get to finish.
TASK_EXIT_TIMEOUT_S = 5.0


def _refuse_resume(reason: str, code: grpc.StatusCode, details: str) -> StreamEnded:
    """A resume refused with ``code``, counted by ``reason``."""
    RESUME_FAILED.labels(reason).inc()
    return StreamEnded(code, details)


class MusicGenerationServicer(music_pb2_grpc.MusicGenerationServicer):
    def __init__(
        self,
        *,
        pool: GeneratorPool,
        embedder: EmbedderClient,
        settings: SessionSettings,
        default_model: str = "",
        store: SessionStore | None = None,
        api_keys_enabled: bool = False,
    ):
        self.pool = pool
        self.embedder = embedder
        self.settings = settings
        self.default_model = default_model
        self.store = store if store is not None else MemorySessionStore(ttl_s=300.0)
        self.api_keys_enabled = api_keys_enabled
        self.sessions: set[ListenerSession] = set()  # open streams, told to move on drain
        self.draining = False
        self._sessions_changed = asyncio.Event()

    def _resolve_model(self, requested: str) -> str:
        """The model a session asks for, checked against what the generators serve."""
        served = self.pool.models()
        if not served:
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE, "no generator is reachable")
        model = requested or self.default_model or sorted(served)[0]
        if model not in served:
            raise StreamEnded(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown model '{model}'; this cluster serves: {', '.join(sorted(served))}",
            )
        return model

    async def Stream(
        self,
        request_iterator: AsyncIterator[music_pb2.StreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[music_pb2.StreamResponse]:
        requests = aiter(request_iterator)
        outcome = "ok"
        session: ListenerSession | None = None
        tasks: list[asyncio.Task] = []
        watchdogs: list[asyncio.TimerHandle] = []
        cut_off = asyncio.Event()  # set when the handler had to be cancelled while stuck
        ACTIVE.inc()
        try:
            try:
                first = await asyncio.wait_for(anext(requests), SETUP_TIMEOUT_S)
            except StopAsyncIteration:
                raise StreamEnded(
                    grpc.StatusCode.INVALID_ARGUMENT, "stream closed before `setup`"
                ) from None
            except TimeoutError:
                raise StreamEnded(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no `setup` within {SETUP_TIMEOUT_S:.0f} s"
                ) from None
            if first.WhichOneof("request") != "setup":
                raise StreamEnded(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the first message must be `setup`, got "
                    f"`{first.WhichOneof('request') or 'an empty request'}`",
                )
            setup = first.setup
            if self.draining:
                raise StreamEnded(
                    grpc.StatusCode.UNAVAILABLE, "this gateway is shutting down; connect to another"
                )
            owner_key = self._owner_key(context)
            if setup.resume_token:
                session, keeper, initial_audio_warning = await self._resume(setup, owner_key)
                resume_reason = "drain" if keeper.record.drain_requested else "stream_lost"
                initial_audio = None
            else:
                session, initial_audio, initial_audio_warning = await self._new_session(setup)
                keeper = ResumeKeeper(
                    self.store,
                    new_resume_token(),
                    SessionRecord(
                        session_id=session.session_id,
                        model=session.model,
                        encoding=setup.encoding,
                        opus_bitrate=session.encoder.bitrate_bps
                        if setup.encoding == music_pb2.OGG_OPUS
                        else 0,
                        owner_key=owner_key,
                        chunk_frames=session.chunk_frames,
                        points=[ResumePoint(sequence=0, position_s=0.0)],
                    ),
                )
            session.fill_record(keeper.record)
            keeper.record.drain_requested = False
            # The token works before the client has it; a resume claims the session.
            resumable = await keeper.save_now(claim=bool(setup.resume_token))
            if keeper.superseded:
                raise _refuse_resume(
                    "concurrent",
                    grpc.StatusCode.ABORTED,
                    "another stream resumed this session at the same moment and continues it",
                )
            session.keeper = keeper
            await session.connect()
            self.sessions.add(session)
            if self.draining:  # set up while the drain began: move it too
                session.ask_to_reconnect()
            model = session.model
            encoding = keeper.record.encoding
            if setup.resume_token:
                RESUMED.labels(resume_reason).inc()
            else:
                STARTED.labels(model).inc()
            log.info(
                "session %s %s (model %s, peer %s)",
                session.session_id,
                f"resumed at chunk {session.next_sequence}" if setup.resume_token else "started",
                model,
                context.peer(),
            )
            yield music_pb2.StreamResponse(
                started=music_pb2.SessionStarted(
                    session_id=session.session_id,
                    model=model,
                    sample_rate=facts.SAMPLE_RATE_HZ,
                    channels=facts.CHANNELS,
                    chunk_seconds=session.chunk_seconds,
                    encoding=encoding,
                    buffer_ahead_seconds=session.buffer_ahead_s,
                    opus_bitrate=keeper.record.opus_bitrate,
                    audio_input_supported=session.audio_input_supported,
                    resume_token=keeper.token if resumable else "",
                    resumed=bool(setup.resume_token),
                )
            )
            if initial_audio is not None and not session.audio_input_supported:
                initial_audio_warning = music_pb2.Warning(
                    code="UNSUPPORTED",
                    message=f"model '{model}' does not take audio input; initial_audio is ignored",
                )
            if initial_audio_warning is not None:
                yield music_pb2.StreamResponse(warning=initial_audio_warning)
            tasks = [
                asyncio.create_task(session.read_client(requests)),
                asyncio.create_task(session.pump()),
            ]
            for task in tasks:
                task.add_done_callback(
                    self._unstick_on_failure(asyncio.current_task(), watchdogs, cut_off)
                )
            async for response in self._responses(session, tasks):
                yield response
        except StreamEnded as ended:
            outcome = "slow_client" if isinstance(ended, ClientTooSlow) else ended.code.name.lower()
            log.info("session %s ended: %s", session.session_id if session else "-", ended)
            await context.abort(ended.code, ended.details)
        except (asyncio.CancelledError, GeneratorExit):
            # The RPC ended under us: the client went away, or a stuck write was cut off.
            outcome = "slow_client" if cut_off.is_set() else "cancelled"
            raise
        except Exception:
            outcome = "error"
            log.exception("session %s failed", session.session_id if session else "-")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the session was ended")
        finally:
            for handle in watchdogs:
                handle.cancel()
            for task in tasks:
                task.cancel()
            try:
                if session is not None:
                    await self._close_stream(session, tasks)
            except asyncio.CancelledError:
                # A cancelled call often first ends the request stream like a half-close, and
                # the cancel itself arrives while the stream closes: it still was a cancel.
                if outcome == "ok":
                    outcome = "cancelled"
                raise
            finally:
                if tasks:
                    log.info(
                        "session %s closed (%s, %d chunks, %d underruns)",
                        session.session_id,
                        outcome,
                        session.next_sequence,
                        session.underruns,
                    )
                ACTIVE.dec()
                ENDED.labels(outcome).inc()

    async def _close_stream(self, session: ListenerSession, tasks: list[asyncio.Task]) -> None:
        """Release what the stream held. The session's resumable state stays in the store until
        it expires, however the stream ended: a half-close and a cancelled call (or a lost
        connection) can look the same here, and a lost stream must stay resumable."""
        self.sessions.discard(session)
        self._sessions_changed.set()
        await session.close()
        if tasks:  # let them finish before the session's resources go
            await asyncio.wait(tasks, timeout=TASK_EXIT_TIMEOUT_S)

    def _owner_key(self, context: grpc.aio.ServicerContext) -> str:
        """Who a resume token belongs to: the caller's API key (hashed), when keys are on."""
        if not self.api_keys_enabled:
            return ""
        token = bearer_token(context.invocation_metadata())
        return "" if token is None else key_digest(token).hex()

    async def _new_session(
        self, setup: music_pb2.SessionSetup
    ) -> tuple[ListenerSession, np.ndarray | None, music_pb2.Warning | None]:
        """A fresh session for ``setup``: (session, initial audio, a warning about it)."""
        chunk_frames = _chunk_frames(setup.chunk_frames)
        encoder = _audio_encoder(setup.encoding, setup.opus_bitrate)
        model = self._resolve_model(setup.model)
        initial_audio, initial_audio_warning = None, None
        if setup.initial_audio:
            try:
                initial_audio = await asyncio.to_thread(  # decoding takes a while
                    decode_initial_audio,
                    setup.initial_audio,
                    self.settings.prompt_limits.max_audio_bytes,
                )
            except AudioInputRejected as err:
                initial_audio_warning = music_pb2.Warning(
                    code="INVALID_INITIAL_AUDIO", message=f"{err}; the session starts without it"
                )
        session = ListenerSession(
            session_id=uuid.uuid4().hex,
            model=model,
            encoder=encoder,
            settings=self.settings,
            pool=self.pool,
            embedder=self.embedder,
            seed=secrets.randbits(31),
            chunk_frames=chunk_frames,
            initial_audio=initial_audio,
        )
        return session, initial_audio, initial_audio_warning

    async def _resume(
        self, setup: music_pb2.SessionSetup, owner_key: str
    ) -> tuple[ListenerSession, ResumeKeeper, music_pb2.Warning | None]:
        """The session ``setup.resume_token`` names, continued from the chunk the client needs.

        Raises StreamEnded: NOT_FOUND (unknown or expired), PERMISSION_DENIED (another API key's),
        OUT_OF_RANGE (that chunk can no longer be made), UNAVAILABLE (the store failed)."""
        try:
            record = await self.store.load(token_key(setup.resume_token))
        except StoreUnavailable as err:
            raise _refuse_resume(
                "store_unavailable",
                grpc.StatusCode.UNAVAILABLE,
                f"cannot resume: {err}; start a new session",
            ) from None
        if record is None:
            raise _refuse_resume(
                "unknown",
                grpc.StatusCode.NOT_FOUND,
                "unknown or expired resume token; start a new session",
            )
        if record.owner_key != owner_key:
            raise _refuse_resume(
                "wrong_key",
                grpc.StatusCode.PERMISSION_DENIED,
                "this resume token belongs to another API key",
            )
        point = record.point_for(setup.resume_from_sequence)
        if point is None:
            known = ", ".join(str(p.sequence) for p in record.points)
            raise _refuse_resume(
                "sequence_unavailable",
                grpc.StatusCode.OUT_OF_RANGE,
                f"cannot continue session {record.session_id} at chunk "
                f"{setup.resume_from_sequence}: it can continue at chunk {known}",
            )
        self._resolve_model(record.model)
        session = ListenerSession(
            session_id=record.session_id,
            model=record.model,
            encoder=_audio_encoder(record.encoding, record.opus_bitrate),
            settings=self.settings,
            pool=self.pool,
            embedder=self.embedder,
            seed=0,
            chunk_frames=record.chunk_frames,
        )
        record.epoch += 1  # the stream the client left may still write: this one wins
        session.restore(record, point)
        record.add_point(point)  # forget the points of chunks that will now be made anew
        warning = None
        if record.encoding == music_pb2.OGG_OPUS:
            warning = music_pb2.Warning(
                code="NEW_OGG_STREAM",
                message="the session resumed: from this chunk on the audio "
                "is a new Ogg Opus stream (its first chunk starts with its headers)",
            )
        return session, ResumeKeeper(self.store, setup.resume_token, record), warning

    async def drain(self, grace_s: float) -> None:
        """Stop taking streams, ask every client to reconnect elsewhere with its token, and
        keep streaming until each has moved or ``grace_s`` ends."""
        self.draining = True
        sessions = list(self.sessions)
        log.info(
            "draining: %d session(s) asked to reconnect elsewhere (grace %.0f s)",
            len(sessions),
            grace_s,
        )
        for session in sessions:
            session.ask_to_reconnect()
        try:
            await asyncio.wait_for(self._all_sessions_closed(), grace_s)
        except TimeoutError:
            log.warning(
                "drain grace of %.0f s over: %d session(s) had not moved; ending them",
                grace_s,
                len(self.sessions),
            )

    async def _all_sessions_closed(self) -> None:
        while self.sessions:
            self._sessions_changed.clear()
            await self._sessions_changed.wait()

    @staticmethod
    def _unstick_on_failure(
        handler: asyncio.Task, watchdogs: list[asyncio.TimerHandle], cut_off: asyncio.Event
    ):
        """A failed session task normally ends the stream through ``_responses``; but a handler
        stuck writing to a client that stopped reading never gets there, so cancel it."""

        def on_done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is None:
                return

            def cancel_handler() -> None:
                cut_off.set()
                handler.cancel()

            watchdogs.append(
                asyncio.get_running_loop().call_later(STUCK_WRITE_GRACE_S, cancel_handler)
            )

        return on_done

    @staticmethod
    async def _responses(
        session: ListenerSession, tasks: list[asyncio.Task]
    ) -> AsyncIterator[music_pb2.StreamResponse]:
        """Yield the session's outbound messages until the pump finishes or a task fails.

        The reader finishing normally just means the client half-closed: keep streaming."""
        pump = tasks[1]
        waiting = set(tasks)
        while True:
            getter = asyncio.ensure_future(session.outbound.get())
            try:
                done, _ = await asyncio.wait(
                    {getter, *waiting}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:  # also when the stream is cancelled while waiting
                if not getter.done():
                    getter.cancel()
            if getter in done:
                yield getter.result()
                continue
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
            waiting -= done
            if pump in done:
                while not session.outbound.empty():
                    yield session.outbound.get_nowait()
                return

    async def EmbedStyle(
        self, request: music_pb2.EmbedStyleRequest, context: grpc.aio.ServicerContext
    ) -> music_pb2.EmbedStyleResponse:
        source = request.WhichOneof("source")
        if source == "text":
            if not request.text.strip():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
            inner = embedder_pb2.EmbedRequest(text=request.text)
        elif source == "audio":
            if not request.audio:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audio is empty")
            inner = embedder_pb2.EmbedRequest(audio=request.audio)
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set `text` or `audio`")
        try:
            embedding = await self.embedder.embed(inner)
        except PromptRejected as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except BackendUnavailable as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        return music_pb2.EmbedStyleResponse(embedding=embedding.tolist())

    async def ListModels(
        self, request: music_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> music_pb2.ListModelsResponse:
        served = self.pool.models()
        models = [
            music_pb2.ModelInfo(
                name=name,
                loaded=name in served,
                available=name in served or name in LOCAL_MODELS,
                sample_rate=facts.SAMPLE_RATE_HZ,
                chunk_seconds=facts.CHUNK_SECONDS,
                channels=facts.CHANNELS,
                description=description,
            )
            for name, description in MODEL_DESCRIPTIONS.items()
        ]
        default = self.default_model or (sorted(served)[0] if served else "")
        return music_pb2.ListModelsResponse(models=models, default_model=default)


def _chunk_frames(requested: int) -> int:
    """A session's codec frames per chunk; a value out of range ends the stream."""
    try:
        return facts.session_chunk_frames(requested)
    except ValueError as err:
        raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None


def _audio_encoder(encoding: int, opus_bitrate: int) -> AudioEncoder:
    try:
        return make_encoder(encoding, opus_bitrate)
    except ValueError as err:
        raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
