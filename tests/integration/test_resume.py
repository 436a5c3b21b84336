"""Resume tokens: a session outlives its stream (memory://) and its gateway (a shared Redis).

Real processes: mock services, real gateways, a real ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time

import grpc
import pytest

from services.cli.launcher import ServiceProcess, _free_port_blocks
from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import StreamClient

PLAY = music_pb2.PlaybackControl.PLAY


def _resume(address: str, token: str, from_sequence: int, metadata: tuple = ()) -> StreamClient:
    client = StreamClient(address, metadata=metadata)
    client.send(setup=music_pb2.SessionSetup(resume_token=token, resume_from_sequence=from_sequence))
    return client


def _sequences_and_starts(chunks: list[music_pb2.AudioChunk]) -> tuple[list[int], list[float]]:
    return [c.sequence for c in chunks], [c.start_seconds for c in chunks]


def test_a_client_that_lost_its_stream_resumes_where_it_left(mock_cluster):
    first = StreamClient(mock_cluster.gateway_address)
    started = first.setup()
    assert started.resume_token and not started.resumed
    first.prompts(music_pb2.WeightedPrompt(text="slow piano"))
    first.playback(PLAY)
    before = [chunk for _, chunk in first.chunks(3)]
    first.close()  # the connection is lost; the gateway lives on

    second = _resume(mock_cluster.gateway_address, started.resume_token, before[-1].sequence + 1)
    resumed = second.expect("started").started
    assert resumed.session_id == started.session_id and resumed.resumed
    after = [chunk for _, chunk in second.chunks(2)]  # playing already: no PLAY needed
    second.close()
    sequences, starts = _sequences_and_starts(before + after)
    assert sequences == [0, 1, 2, 3, 4]
    assert starts == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert after[0].prompt_version == before[-1].prompt_version == 1  # the prompts came along

    samples = scrape(mock_cluster.metrics_urls["gateway"])
    assert metric(samples, "mrt_gateway_sessions_resumed_total", reason="stream_lost") >= 1
    log_text = mock_cluster.gateway.log_path.read_text()
    assert started.resume_token not in log_text


def test_a_client_may_ask_again_for_a_chunk_it_missed(mock_cluster):
    first = StreamClient(mock_cluster.gateway_address)
    started = first.setup()
    first.playback(PLAY)
    received = [chunk for _, chunk in first.chunks(3)]
    first.close()
    # Chunk 2 was sent, but say it never arrived: the session continues from chunk 2.
    second = _resume(mock_cluster.gateway_address, started.resume_token, 2)
    second.expect("started")
    again = [chunk for _, chunk in second.chunks(1)]
    second.close()
    assert (again[0].sequence, again[0].start_seconds) == (2, received[2].start_seconds)


@pytest.mark.parametrize("token, sequence, code", [
    ("not-a-token", 0, grpc.StatusCode.NOT_FOUND),
    (None, 99, grpc.StatusCode.OUT_OF_RANGE),  # None: a real token, at a chunk never made
])
def test_unknown_tokens_and_unknown_chunks_are_refused(mock_cluster, token, sequence, code):
    if token is None:
        owner = StreamClient(mock_cluster.gateway_address)
        token = owner.setup().resume_token
    client = _resume(mock_cluster.gateway_address, token, sequence)
    assert client.status() == code
    client.close()


def test_a_session_ended_by_its_client_cannot_be_resumed(mock_cluster):
    client = StreamClient(mock_cluster.gateway_address)
    token = client.setup().resume_token
    client.half_close()  # never played, client done: the session ends normally
    assert client.status() == grpc.StatusCode.OK
    again = _resume(mock_cluster.gateway_address, token, 0)
    assert again.status() == grpc.StatusCode.NOT_FOUND
    again.close()


def test_an_expired_token_is_refused(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, env={"MRT_SESSION_TTL_S": "1"})
    try:
        client = StreamClient(cluster.gateway_address)
        token = client.setup().resume_token  # not playing: nothing refreshes the record
        client.close()
        time.sleep(2.0)  # past the 1 s TTL (the store's own clock, in another process)
        again = _resume(cluster.gateway_address, token, 0)
        code = again.status()
        again.close()
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        cluster.stop()
