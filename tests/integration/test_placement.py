"""Placement by headroom over two generators, and refusal when every generator is full."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc, music_pb2
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import StreamClient


@pytest.fixture(scope="module")
def small_generators(tmp_path_factory):
    """Two generators that each accept two sessions."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MRT_CAPACITY_SESSIONS", "2")
        cluster = start_cluster(tmp_path_factory, generators=2)
    yield cluster
    cluster.stop()


def active_sessions(cluster) -> list[int]:
    return [
        int(metric(scrape(g.metrics_url), "mrt_generator_active_sessions"))
        for g in cluster.generators
    ]


def test_sessions_spread_by_headroom_and_the_fifth_is_refused(small_generators):
    clients = []
    try:
        for _ in range(4):
            client = StreamClient(small_generators.gateway_address)
            client.setup()
            clients.append(client)
        assert active_sessions(small_generators) == [2, 2]
        refused = StreamClient(small_generators.gateway_address)
        refused.send(setup=music_pb2.SessionSetup())
        assert refused.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in refused.error.details()
        refused.close()
        # A slot freed on one generator is used by the next session.
        clients.pop().close()
        time.sleep(2.5)  # the next load poll
        replacement = StreamClient(small_generators.gateway_address)
        replacement.setup()
        clients.append(replacement)
        assert active_sessions(small_generators) == [2, 2]
    finally:
        for client in clients:
            client.close()


def test_a_generator_refuses_sessions_beyond_its_capacity(small_generators):
    channel = grpc.insecure_channel(small_generators.generator_addresses[0])
    stub = generator_pb2_grpc.GeneratorStub(channel)
    sampling = generator_pb2.Sampling(temperature=1.0, top_k=40, guidance=5.0)
    calls = []
    deadline = time.time() + 10
    while any(active_sessions(small_generators)) and time.time() < deadline:
        time.sleep(0.1)  # sessions of the previous test are still closing
    try:
        load = stub.GetLoad(generator_pb2.GetLoadRequest(), timeout=5)
        assert load.capacity_sessions == 2 and load.model == "mock"
        for i in range(3):
            requests = queue.Queue()
            requests.put(
                generator_pb2.GeneratorRequest(
                    open=generator_pb2.OpenSession(session_id=f"direct-{i}", sampling=sampling)
                )
            )
            call = stub.Session(iter(requests.get, None))  # stays open: no half-close
            calls.append(call)
            if i < 2:
                assert next(call).WhichOneof("response") == "opened"
        with pytest.raises(grpc.RpcError) as err:
            next(calls[2])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()
        channel.close()
