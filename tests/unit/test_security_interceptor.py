"""The API-key interceptor on an in-process gRPC server: refusals, and session slots that are
given back however a stream ends."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from services.gateway.auth import ApiKeyFile, ApiKeyInterceptor

KEY = "limited-0123456789abcdef"
KEY_LINE = f"limited {KEY} max_sessions=1\n"
METADATA = (("authorization", f"Bearer {KEY}"),)


async def echo(request_iterator, context):
    """Echoes each request; b"fail" raises, b"end" ends the stream normally."""
    async for request in request_iterator:
        if request == b"fail":
            raise RuntimeError("failing as asked")
        if request == b"end":
            return
        yield request


async def ping(request, context):
    return request


def handlers(service: str) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service,
        {
            "Stream": grpc.stream_stream_rpc_method_handler(echo),
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
        },
    )


async def released(interceptor: ApiKeyInterceptor) -> bool:
    """Whether the key's slot comes back within a second (the server finishes asynchronously)."""
    for _ in range(100):
        if interceptor.open_sessions("limited") == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def scenario(key_file) -> None:
    interceptor = ApiKeyInterceptor(ApiKeyFile(key_file, reload_interval_s=0.0), ["test.Echo"])
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([handlers("test.Echo"), handlers("test.Open")])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream("/test.Echo/Stream")

            # Unprotected services need no key; protected ones do, unary or streaming.
            assert await channel.unary_unary("/test.Open/Ping")(b"hi") == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Echo/Ping")(b"hi")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await channel.unary_unary("/test.Echo/Ping")(b"hi", metadata=METADATA) == b"hi"

            # One slot: a second stream is refused while the first is open.
            first = stream(metadata=METADATA)
            await first.write(b"a")
            assert await first.read() == b"a"
            assert interceptor.open_sessions("limited") == 1
            second = stream(metadata=METADATA)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await second.read()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # The slot comes back when the stream ends normally, fails, or is cancelled.
            await first.write(b"end")
            assert await first.code() == grpc.StatusCode.OK
            assert await released(interceptor)
            failing = stream(metadata=METADATA)
            await failing.write(b"fail")
            assert await failing.code() == grpc.StatusCode.UNKNOWN
            assert await released(interceptor)
            cancelled = stream(metadata=METADATA)
            await cancelled.write(b"a")
            assert await cancelled.read() == b"a"
            cancelled.cancel()
            assert await released(interceptor)

            # Revoking the key ends an open stream at its next response.
            running = stream(metadata=METADATA)
            await running.write(b"a")
            assert await running.read() == b"a"
            staging = key_file.with_name("keys.new")
            staging.write_text(KEY_LINE.replace("max_sessions=1", "revoked"))
            os.replace(staging, key_file)
            await running.write(b"b")
            assert await running.code() == grpc.StatusCode.PERMISSION_DENIED
            assert await released(interceptor)
    finally:
        await server.stop(None)


def test_session_slots_and_refusals(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(KEY_LINE)
    asyncio.run(asyncio.wait_for(scenario(key_file), timeout=30))
