"""The public MusicGeneration API."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter, Gauge

from services.common import model_facts as facts
from services.common.models import LOCAL_MODELS, MODEL_DESCRIPTIONS
from services.common.proto.mrt.v1 import embedder_pb2, music_pb2, music_pb2_grpc
from services.gateway.audio_encoding import AudioEncoder, make_encoder
from services.gateway.audio_injection import AudioInputRejected, decode_initial_audio
from services.gateway.embedder_client import BackendUnavailable, EmbedderClient, PromptRejected
from services.gateway.generator_pool import GeneratorPool
from services.gateway.listener import ClientTooSlow, ListenerSession, SessionSettings, StreamEnded

log = logging.getLogger(__name__)

ACTIVE = Gauge("mrt_gateway_active_sessions", "Listener streams open now")
STARTED = Counter("mrt_gateway_sessions_started_total", "Sessions started", ["model"])
ENDED = Counter("mrt_gateway_sessions_ended_total", "Sessions ended, by outcome", ["outcome"])

SETUP_TIMEOUT_S = 30.0
# How long a failed session may wait for its handler to end the stream before it is cancelled.
STUCK_WRITE_GRACE_S = 1.0
# How long a cancelled session's tasks get to finish.
TASK_EXIT_TIMEOUT_S = 5.0


class MusicGenerationServicer(music_pb2_grpc.MusicGenerationServicer):
    def __init__(self, *, pool: GeneratorPool, embedder: EmbedderClient, settings: SessionSettings,
                 default_model: str = ""):
        self.pool = pool
        self.embedder = embedder
        self.settings = settings
        self.default_model = default_model

    def _resolve_model(self, requested: str) -> str:
        """The model a session asks for, checked against what the generators serve."""
        served = self.pool.models()
        if not served:
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE, "no generator is reachable")
        model = requested or self.default_model or sorted(served)[0]
        if model not in served:
            raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown model '{model}'; this cluster serves: {', '.join(sorted(served))}")
        return model

    async def Stream(self, request_iterator: AsyncIterator[music_pb2.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[music_pb2.StreamResponse]:
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
                raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT,
                                  "stream closed before `setup`") from None
            except TimeoutError:
                raise StreamEnded(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no `setup` within {SETUP_TIMEOUT_S:.0f} s") from None
            if first.WhichOneof("request") != "setup":
                raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"the first message must be `setup`, got "
                                  f"`{first.WhichOneof('request') or 'an empty request'}`")
            setup = first.setup
            encoder = _audio_encoder(setup)
            model = self._resolve_model(setup.model)
            initial_audio, initial_audio_warning = None, None
            if setup.initial_audio:
                try:
                    initial_audio = await asyncio.to_thread(  # decoding takes a while
                        decode_initial_audio, setup.initial_audio,
                        self.settings.prompt_limits.max_audio_bytes)
                except AudioInputRejected as err:
                    initial_audio_warning = music_pb2.Warning(
                        code="INVALID_INITIAL_AUDIO",
                        message=f"{err}; the session starts without it")
            session = ListenerSession(
                session_id=uuid.uuid4().hex, model=model, encoder=encoder,
                settings=self.settings, pool=self.pool, embedder=self.embedder,
                seed=secrets.randbits(31), initial_audio=initial_audio)
            await session.connect()
            STARTED.labels(model).inc()
            log.info("session %s started (model %s, peer %s)", session.session_id, model, context.peer())
            yield music_pb2.StreamResponse(started=music_pb2.SessionStarted(
                session_id=session.session_id, model=model, sample_rate=facts.SAMPLE_RATE_HZ,
                channels=facts.CHANNELS, chunk_seconds=facts.CHUNK_SECONDS, encoding=setup.encoding,
                buffer_ahead_seconds=self.settings.buffer_ahead_seconds,
                opus_bitrate=encoder.bitrate_bps if setup.encoding == music_pb2.OGG_OPUS else 0,
                audio_input_supported=session.audio_input_supported))
            if initial_audio is not None and not session.audio_input_supported:
                initial_audio_warning = music_pb2.Warning(
                    code="UNSUPPORTED", message=f"model '{model}' does not take audio input; "
                                                f"initial_audio is ignored")
            if initial_audio_warning is not None:
                yield music_pb2.StreamResponse(warning=initial_audio_warning)
            tasks = [asyncio.create_task(session.read_client(requests)),
                     asyncio.create_task(session.pump())]
            for task in tasks:
                task.add_done_callback(
                    self._unstick_on_failure(asyncio.current_task(), watchdogs, cut_off))
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
            if session is not None:
                await session.close()
            if tasks:  # let them finish before the session's resources go
                await asyncio.wait(tasks, timeout=TASK_EXIT_TIMEOUT_S)
                log.info("session %s closed (%s, %d chunks, %d underruns)", session.session_id,
                         outcome, session.next_sequence, session.underruns)
            ACTIVE.dec()
            ENDED.labels(outcome).inc()

    @staticmethod
    def _unstick_on_failure(handler: asyncio.Task, watchdogs: list[asyncio.TimerHandle],
                            cut_off: asyncio.Event):
        """A failed session task normally ends the stream through ``_responses``; but a handler
        stuck writing to a client that stopped reading never gets there, so cancel it."""
        def on_done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is None:
                return

            def cancel_handler() -> None:
                cut_off.set()
                handler.cancel()
            watchdogs.append(asyncio.get_running_loop().call_later(STUCK_WRITE_GRACE_S, cancel_handler))
        return on_done

    @staticmethod
    async def _responses(session: ListenerSession,
                         tasks: list[asyncio.Task]) -> AsyncIterator[music_pb2.StreamResponse]:
        """Yield the session's outbound messages until the pump finishes or a task fails.

        The reader finishing normally just means the client half-closed: keep streaming."""
        pump = tasks[1]
        waiting = set(tasks)
        while True:
            getter = asyncio.ensure_future(session.outbound.get())
            try:
                done, _ = await asyncio.wait({getter, *waiting}, return_when=asyncio.FIRST_COMPLETED)
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

    async def EmbedStyle(self, request: music_pb2.EmbedStyleRequest,
                         context: grpc.aio.ServicerContext) -> music_pb2.EmbedStyleResponse:
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

    async def ListModels(self, request: music_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> music_pb2.ListModelsResponse:
        served = self.pool.models()
        models = [music_pb2.ModelInfo(
            name=name, loaded=name in served, available=name in served or name in LOCAL_MODELS,
            sample_rate=facts.SAMPLE_RATE_HZ, chunk_seconds=facts.CHUNK_SECONDS,
            channels=facts.CHANNELS, description=description)
            for name, description in MODEL_DESCRIPTIONS.items()]
        default = self.default_model or (sorted(served)[0] if served else "")
        return music_pb2.ListModelsResponse(models=models, default_model=default)


def _audio_encoder(setup: music_pb2.SessionSetup) -> AudioEncoder:
    try:
        return make_encoder(setup.encoding, setup.opus_bitrate)
    except ValueError as err:
        raise StreamEnded(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
