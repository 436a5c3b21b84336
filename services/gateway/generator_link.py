"""One session's bidi stream to one generator."""

from __future__ import annotations

import asyncio

import grpc

from services.common.proto.mrt.v1 import generator_pb2
from services.gateway.generator_pool import GeneratorEndpoint


class LinkError(RuntimeError):
    """The generator stream failed or ended; ``code`` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class GeneratorLink:
    def __init__(self, endpoint: GeneratorEndpoint):
        self.endpoint = endpoint
        self.call = endpoint.stub.Session()

    async def open(self, request: generator_pb2.OpenSession, timeout_s: float) -> generator_pb2.SessionOpened:
        """Send `open` and wait for `opened`; raises LinkError (e.g. RESOURCE_EXHAUSTED)."""
        try:
            await self.call.write(generator_pb2.GeneratorRequest(open=request))
            response = await asyncio.wait_for(self.call.read(), timeout_s)
        except asyncio.TimeoutError:
            self.close()
            raise LinkError(grpc.StatusCode.UNAVAILABLE,
                            f"generator {self.endpoint.address} did not open the session in time") from None
        except grpc.aio.AioRpcError as err:
            raise LinkError(err.code(), err.details() or "") from None
        if response is grpc.aio.EOF or response.WhichOneof("response") != "opened":
            raise await self._ended()
        return response.opened

    async def send(self, request: generator_pb2.GeneratorRequest) -> None:
        try:
            await self.call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise LinkError(grpc.StatusCode.UNAVAILABLE, f"generator stream closed: {err}") from None

    async def read_chunk(self) -> generator_pb2.GeneratedChunk:
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError as err:
            raise LinkError(err.code(), err.details() or "") from None
        if response is grpc.aio.EOF:
            raise await self._ended()
        return response.chunk

    async def _ended(self) -> LinkError:
        code = await self.call.code()
        details = await self.call.details()
        if code == grpc.StatusCode.OK:
            code, details = grpc.StatusCode.UNAVAILABLE, "generator ended the session stream"
        return LinkError(code, details or "")

    def close(self) -> None:
        self.call.cancel()
