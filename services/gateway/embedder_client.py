"""The gateway's view of the embedder: one call per prompt, errors mapped to what they mean."""

from __future__ import annotations

import grpc
import numpy as np

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.server import channel_options


class PromptRejected(ValueError):
    """The embedder refused the prompt itself (bad audio, too long...)."""


class BackendUnavailable(RuntimeError):
    """A backend service could not be reached or did not answer in time."""


class EmbedderClient:
    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
    ):
        options = channel_options(max_message_bytes, tls_server_name)
        self.address = address
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options)
            if credentials
            else grpc.aio.insecure_channel(address, options)
        )
        self.stub = embedder_pb2_grpc.StyleEmbedderStub(self.channel)
        self.timeout_s = timeout_s

    async def embed(self, request: embedder_pb2.EmbedRequest) -> np.ndarray:
        try:
            response = await self.stub.Embed(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise PromptRejected(err.details()) from None
            raise BackendUnavailable(
                f"embedder at {self.address} failed: {err.code().name}: {err.details()}"
            ) from None
        embedding = np.asarray(response.embedding, np.float32)
        if embedding.shape != (facts.STYLE_EMBEDDING_DIM,):
            raise BackendUnavailable(f"embedder returned {embedding.shape[0]} values, expected 768")
        return embedding

    async def close(self) -> None:
        await self.channel.close()
