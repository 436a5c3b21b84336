"""The embedder process: micro-batching, caching, limits, responsiveness."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.proto.mrt.v1 import embedder_pb2, embedder_pb2_grpc
from tests.integration.conftest import metric, scrape


@pytest.fixture
def embedder(mock_cluster):
    channel = grpc.insecure_channel(mock_cluster.embedder_address)
    yield embedder_pb2_grpc.StyleEmbedderStub(channel), mock_cluster.metrics_urls["embedder"]
    channel.close()


def test_concurrent_requests_share_model_calls(embedder):
    stub, url = embedder
    before = metric(scrape(url), "mrt_embedder_model_calls_total", source="text")
    texts = [f"batched prompt number {i} {time.time()}" for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(
            pool.map(lambda t: stub.Embed(embedder_pb2.EmbedRequest(text=t), timeout=30), texts)
        )
    calls = metric(scrape(url), "mrt_embedder_model_calls_total", source="text") - before
    assert all(len(r.embedding) == 768 for r in responses)
    assert 1 <= calls < len(texts)


def test_a_repeated_request_is_a_cache_hit_and_case_does_not_matter(embedder):
    stub, url = embedder
    before = metric(scrape(url), "mrt_embedder_cache_hits_total", source="text")
    first = stub.Embed(embedder_pb2.EmbedRequest(text="Cached Cumbia Groove"), timeout=30)
    again = stub.Embed(embedder_pb2.EmbedRequest(text="cached  cumbia groove"), timeout=30)
    assert not first.cache_hit and again.cache_hit
    assert list(first.embedding) == list(again.embedding)
    assert metric(scrape(url), "mrt_embedder_cache_hits_total", source="text") == before + 1


@pytest.mark.parametrize(
    "request_, needle",
    [
        (embedder_pb2.EmbedRequest(text="x" * 600), "limit is 512"),
        (embedder_pb2.EmbedRequest(text="   "), "empty"),
        (embedder_pb2.EmbedRequest(audio=b"\x00\x01" * 500), "audio"),
        (embedder_pb2.EmbedRequest(), "set `text` or `audio`"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_service_stays_up(
    embedder, mock_cluster, request_, needle
):
    stub, _ = embedder
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    channel = grpc.insecure_channel(mock_cluster.embedder_address)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    channel.close()
    assert health.status == health_pb2.HealthCheckResponse.SERVING
