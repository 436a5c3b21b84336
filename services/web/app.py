"""The web service's HTTP routes: the Lyria WebSocket endpoint, the player page, /metrics, /healthz.

The WebSocket path is the one the Lyria RealTime SDKs build from their base URL,
``/ws/google.ai.generativelanguage.<version>.GenerativeService.BidiGenerateMusic`` (any API
version; the JavaScript SDK puts a second slash before ``ws``, which is accepted too). The API
key comes from the ``x-goog-api-key`` header (Python SDK) or the ``key`` query parameter
(JavaScript SDK, browsers) and is passed on to the gateway as its bearer key.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import grpc
from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.proto.mrt.v1 import music_pb2_grpc
from services.web.bridge import Bridge
from services.web.metrics import ACTIVE_SESSIONS

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LYRIA_PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateMusic"
_API_KEY_HEADER = "x-goog-api-key"
_STUB = web.AppKey("stub", music_pb2_grpc.MusicGenerationStub)
_SOCKETS = web.AppKey("sockets", weakref.WeakSet)
_RPC_TIMEOUT_S = web.AppKey("rpc_timeout_s", float)
_MAX_MESSAGE_BYTES = web.AppKey("max_message_bytes", int)


def api_key_of(request: web.Request) -> str:
    return request.headers.get(_API_KEY_HEADER) or request.query.get("key", "")


async def lyria_socket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    socket = web.WebSocketResponse(max_msg_size=app[_MAX_MESSAGE_BYTES], heartbeat=20.0)
    await socket.prepare(request)
    app[_SOCKETS].add(socket)
    ACTIVE_SESSIONS.inc()
    try:
        await Bridge(
            socket, app[_STUB], api_key_of(request), rpc_timeout_s=app[_RPC_TIMEOUT_S]
        ).run()
    finally:
        ACTIVE_SESSIONS.dec()
    return socket


async def player_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _close_sockets(app: web.Application) -> None:
    for socket in list(app[_SOCKETS]):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


def build_app(
    channel: grpc.aio.Channel, *, rpc_timeout_s: float, max_message_bytes: int
) -> web.Application:
    """The application, talking to the gateway over ``channel``."""
    app = web.Application()
    app[_STUB] = music_pb2_grpc.MusicGenerationStub(channel)
    app[_SOCKETS] = weakref.WeakSet()
    app[_RPC_TIMEOUT_S] = rpc_timeout_s
    app[_MAX_MESSAGE_BYTES] = max_message_bytes
    app.router.add_get(LYRIA_PATH, lyria_socket)
    app.router.add_get("/" + LYRIA_PATH, lyria_socket)
    app.router.add_get("/", player_page)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(_close_sockets)
    return app
