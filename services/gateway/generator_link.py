"""One session's bidi stream to one generator."""

from __future__ import annotations

import asyncio

import grpc

from services.common.proto.mrt.v1 import generator_pb2
from services.common.session_end import DRAINING, reason_from_metadata
from services.gateway.generator_pool import GeneratorEndpoint


class LinkError(RuntimeError):
    """The generator stream failed or ended: ``code`` is its gRPC status, ``reason`` what the
    generator named in trailing metadata (e.g. ``draining``; '' when it named none)."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str = ""):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.reason = reason

    @property
    def draining(self) -> bool:
        """The generator is draining: a healthy generator asking the session to move."""
        return self.reason == DRAINING


class GeneratorLink:
    def __init__(self, endpoint: GeneratorEndpoint):
        self.endpoint = endpoint
        self.call = endpoint.stub.Session()
        # One write at a time: the session's updates and its demands are sent from two tasks.
        self._writing = asyncio.Lock()
        self._closed = False
        endpoint.links += 1

    async def open(
        self, request: generator_pb2.OpenSession, timeout_s: float
    ) -> generator_pb2.SessionOpened:
        """Send `open` and wait for `opened`; raises LinkError (e.g. RESOURCE_EXHAUSTED)."""
        try:
            await self.call.write(generator_pb2.GeneratorRequest(open=request))
            response = await asyncio.wait_for(self.call.read(), timeout_s)
        except TimeoutError:
            self.close()
            raise LinkError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"generator {self.endpoint.address} did not open the session in time",
            ) from None
        except grpc.aio.AioRpcError as err:
            raise _link_error(err) from None
        if response is grpc.aio.EOF or response.WhichOneof("response") != "opened":
            raise await self._ended()
        return response.opened

    async def send(self, request: generator_pb2.GeneratorRequest) -> None:
        try:
            async with self._writing:
                await self.call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise LinkError(
                grpc.StatusCode.UNAVAILABLE, f"generator stream closed: {err}"
            ) from None

    async def read_chunk(self) -> generator_pb2.GeneratedChunk:
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError as err:
            raise _link_error(err) from None
        if response is grpc.aio.EOF:
            raise await self._ended()
        return response.chunk

    async def _ended(self) -> LinkError:
        code = await self.call.code()
        details = await self.call.details()
        reason = reason_from_metadata(await self.call.trailing_metadata())
        if code == grpc.StatusCode.OK:
            code, details = grpc.StatusCode.UNAVAILABLE, "generator ended the session stream"
        return LinkError(code, details or "", reason)

    def close(self) -> None:
        """Cancel the stream (idempotent); the generator frees the session when it sees it."""
        if not self._closed:
            self._closed = True
            self.endpoint.links -= 1
        self.call.cancel()


def _link_error(err: grpc.aio.AioRpcError) -> LinkError:
    return LinkError(err.code(), err.details() or "", reason_from_metadata(err.trailing_metadata()))
