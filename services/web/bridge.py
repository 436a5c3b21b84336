"""One Lyria RealTime WebSocket session, carried over one gateway ``Stream`` call.

The socket's first message must be ``setup``; the session opens on the gateway (with the
client's API key as its bearer key) and ``setupComplete`` is sent once the gateway has
answered ``started``. From then on client frames become ``StreamRequest`` messages and the
gateway's responses become Lyria frames, until either side ends: a gRPC error closes the socket
with a WebSocket close code and the status as the reason; a closed socket cancels the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

import grpc
from aiohttp import WSMsgType, web

from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from services.web import lyria
from services.web.metrics import CHUNKS_SENT, CLIENT_MESSAGES, SESSIONS_ENDED, WARNINGS_SENT

log = logging.getLogger(__name__)

_CLOSE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: lyria.CLOSE_INVALID_PAYLOAD,
    grpc.StatusCode.NOT_FOUND: lyria.CLOSE_INVALID_PAYLOAD,
    grpc.StatusCode.UNAUTHENTICATED: lyria.CLOSE_POLICY,
    grpc.StatusCode.PERMISSION_DENIED: lyria.CLOSE_POLICY,
    grpc.StatusCode.RESOURCE_EXHAUSTED: lyria.CLOSE_TRY_AGAIN_LATER,
    grpc.StatusCode.UNAVAILABLE: lyria.CLOSE_TRY_AGAIN_LATER,
    grpc.StatusCode.DEADLINE_EXCEEDED: lyria.CLOSE_TRY_AGAIN_LATER,
}
# How many past prompt / config versions are remembered for chunks' sourceMetadata.
_VERSIONS_KEPT = 16


class SessionEnded(Exception):
    """The session is over: close the socket with this code and reason."""

    def __init__(self, code: int, reason: str, outcome: str):
        super().__init__(reason)
        self.code, self.reason, self.outcome = code, reason, outcome


def _ended_by_rpc_error(err: grpc.RpcError) -> SessionEnded:
    code = err.code() if isinstance(err, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
    return SessionEnded(
        _CLOSE_CODES.get(code, lyria.CLOSE_INTERNAL),
        f"{code.name}: {details or 'no details'}",
        code.name.lower(),
    )


class ChunkSources:
    """What the client sent as each version, for chunks' ``sourceMetadata``.

    Prompt versions are the gateway's (from its PromptStatus answers, which come in the order
    the updates were sent); config versions count the configs the gateway accepted: each sent
    config counts, and one the gateway refuses (it answers with an INVALID_CONFIG warning and
    keeps its previous settings) is taken back."""

    def __init__(self) -> None:
        self._prompts: dict[int, dict[str, Any]] = {}
        self._configs: dict[int, dict[str, Any]] = {}
        self._unanswered_prompts: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self._config_version = 0

    @staticmethod
    def _remember(table: dict[int, dict[str, Any]], version: int, value: dict[str, Any]) -> None:
        table[version] = value
        for old in sorted(table)[:-_VERSIONS_KEPT]:
            del table[old]

    def prompts_sent(self, update: lyria.PromptUpdate) -> None:
        self._unanswered_prompts.append((update.texts, update.echo))

    def prompts_answered(self, status: music_pb2.PromptStatus) -> tuple[str, ...]:
        """Records an accepted update's version; returns the answered update's prompt texts."""
        texts, echo = self._unanswered_prompts.pop(0) if self._unanswered_prompts else ((), {})
        if status.accepted:
            self._remember(self._prompts, status.version, echo)
        return texts

    def config_sent(self, update: lyria.ConfigUpdate) -> None:
        self._config_version += 1
        self._remember(self._configs, self._config_version, update.echo)

    def config_refused(self) -> None:
        self._configs.pop(self._config_version, None)
        self._config_version -= 1

    def source_metadata(self, chunk: music_pb2.AudioChunk) -> dict[str, Any]:
        metadata = {}
        if chunk.prompt_version in self._prompts:
            metadata["clientContent"] = self._prompts[chunk.prompt_version]
        if chunk.config_version in self._configs:
            metadata["musicGenerationConfig"] = self._configs[chunk.config_version]
        return metadata


class Bridge:
    """Runs one session between ``socket`` and the gateway."""

    def __init__(
        self,
        socket: web.WebSocketResponse,
        stub: music_pb2_grpc.MusicGenerationStub,
        api_key: str,
        *,
        rpc_timeout_s: float,
    ):
        self.socket = socket
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.rpc_timeout_s = rpc_timeout_s
        self.sources = ChunkSources()
        self._requests: asyncio.Queue[music_pb2.StreamRequest] = asyncio.Queue()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.socket.send_str(json.dumps(message))

    async def run(self) -> None:
        """Serve the session until it ends; always closes the socket with a code and reason."""
        try:
            outcome = await self._serve()
            code, reason = lyria.CLOSE_NORMAL, ""
        except SessionEnded as ended:
            outcome, code, reason = ended.outcome, ended.code, ended.reason
        except lyria.ProtocolError as err:
            outcome, code, reason = "invalid_message", err.code, err.reason
        SESSIONS_ENDED.labels(outcome).inc()
        if self.socket.closed:
            log.info("session ended (%s): %s", outcome, reason or "the client closed the socket")
            return
        if code != lyria.CLOSE_NORMAL:
            log.info("closing session with %d: %s", code, reason)
        await self.socket.close(code=code, message=lyria.close_reason(reason).encode())

    async def _next_client_message(self) -> tuple[str, Any] | None:
        """The next client frame, parsed; None when the client has closed the socket."""
        message = await self.socket.receive()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        if message.type == WSMsgType.ERROR:  # aiohttp has closed with the code that fits (1009)
            raise SessionEnded(
                self.socket.close_code or lyria.CLOSE_INVALID_PAYLOAD,
                f"bad frame: {self.socket.exception()}",
                "invalid_message",
            )
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            raise lyria.ProtocolError(f"unexpected frame type {message.type.name}")
        kind, value = lyria.parse_client_message(message.data)
        CLIENT_MESSAGES.labels(kind).inc()
        return kind, value

    async def _serve(self) -> str:
        first = await self._next_client_message()
        if first is None:
            return "cancelled"
        kind, setup = first
        if kind != "setup":
            raise lyria.ProtocolError(f"the first message must be setup, got {kind}")
        try:
            models = await self.stub.ListModels(
                music_pb2.ListModelsRequest(), metadata=self.metadata, timeout=self.rpc_timeout_s
            )
        except grpc.RpcError as err:
            raise _ended_by_rpc_error(err) from None
        model = lyria.model_name(setup, {m.name for m in models.models})
        self._requests.put_nowait(
            music_pb2.StreamRequest(
                setup=music_pb2.SessionSetup(model=model, encoding=music_pb2.PCM_S16LE)
            )
        )
        call = self.stub.Stream(self._request_iterator(), metadata=self.metadata)
        responses = asyncio.create_task(self._forward_responses(call))
        client = asyncio.create_task(self._forward_client_messages())
        try:
            done, _ = await asyncio.wait({responses, client}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
            return responses.result() if responses in done else "cancelled"  # client closed
        finally:
            call.cancel()
            for task in (responses, client):
                task.cancel()
            await asyncio.gather(responses, client, return_exceptions=True)

    async def _request_iterator(self):
        """The call's requests: open until the call is cancelled (the session's end)."""
        while True:
            yield await self._requests.get()

    async def _forward_client_messages(self) -> None:
        while (message := await self._next_client_message()) is not None:
            kind, value = message
            if kind == "setup":
                raise lyria.ProtocolError("setup may only be sent once, first")
            if kind == "clientContent":
                update = lyria.prompts_request(value)
                self.sources.prompts_sent(update)
                self._requests.put_nowait(update.request)
            elif kind == "musicGenerationConfig":
                config = lyria.config_request(value)
                if config.unsupported:
                    WARNINGS_SENT.labels("unsupported_field").inc()
                    await self._send(lyria.unsupported_warning(config.unsupported))
                self.sources.config_sent(config)
                self._requests.put_nowait(config.request)
            else:
                self._requests.put_nowait(lyria.playback_request(value))

    async def _forward_responses(self, call) -> str:
        try:
            async for response in call:
                await self._forward_response(response)
        except grpc.RpcError as err:
            raise _ended_by_rpc_error(err) from None
        return "ok"

    async def _forward_response(self, response: music_pb2.StreamResponse) -> None:
        kind = response.WhichOneof("response")
        if kind == "started":
            log.info(
                "session %s started (model %s)", response.started.session_id, response.started.model
            )
            await self._send(lyria.setup_complete())
        elif kind == "chunk":
            await self._send(
                lyria.audio_message(response.chunk, self.sources.source_metadata(response.chunk))
            )
            CHUNKS_SENT.inc()
        elif kind == "prompt_status":
            status = response.prompt_status
            texts = self.sources.prompts_answered(status)
            for message in lyria.prompt_status_messages(status, texts):
                WARNINGS_SENT.labels("filtered_prompt").inc()
                await self._send(message)
        elif kind == "warning":
            # The generated stub names the field's type `Warning`, which type checkers take for
            # the builtin: say which it is.
            warning = cast(music_pb2.Warning, response.warning)
            if warning.code == "INVALID_CONFIG":
                self.sources.config_refused()
            WARNINGS_SENT.labels(warning.code.lower() or "warning").inc()
            await self._send(lyria.warning_message(warning))
