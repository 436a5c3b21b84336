"""A client that never reads is cut off; well-behaved sessions keep their pace."""

from __future__ import annotations

import time

import grpc
import psutil

from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import Listener

PLAY = music_pb2.PlaybackControl.PLAY


def test_a_client_that_never_reads_is_cut_off_and_others_hear_no_underrun(
    tmp_path_factory, monkeypatch
):
    monkeypatch.setenv("MRT_SLOW_CLIENT_TIMEOUT_S", "2")
    cluster = start_cluster(tmp_path_factory)
    gateway_url = cluster.metrics_urls["gateway"]
    listeners = []
    # Without BDP probing the client's receive window stays small, so a client that never
    # reads stalls the server's writes within a chunk, as a stuck or malicious one would.
    channel = grpc.insecure_channel(cluster.gateway_address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        listeners = [Listener(cluster.gateway_address, f"steady {i}") for i in range(3)]
        for listener in listeners:
            listener.wait_for_chunks(1)
        underruns_before = metric(scrape(gateway_url), "mrt_gateway_buffer_underruns_total")
        requests = [
            music_pb2.StreamRequest(setup=music_pb2.SessionSetup(encoding=music_pb2.PCM_F32LE)),
            music_pb2.StreamRequest(playback=music_pb2.PlaybackControl(action=PLAY)),
        ]

        def requests_forever():
            yield from requests
            while True:
                time.sleep(1)
                yield music_pb2.StreamRequest(report=music_pb2.ClientReport())

        # Start the call and never ask for a response.
        call = music_pb2_grpc.MusicGenerationStub(channel).Stream(requests_forever())
        gateway = psutil.Process(cluster.gateway.pid)
        rss = []
        deadline = time.time() + 60
        while time.time() < deadline:
            rss.append(gateway.memory_info().rss)
            samples = scrape(gateway_url)
            if metric(samples, "mrt_gateway_sessions_ended_total", outcome="slow_client") >= 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the client that never reads was not cut off")
        call.cancel()
        for listener in listeners:
            listener.wait_for_chunks(len(listener.chunks) + 1)
            listener.assert_continuous()
        assert metric(scrape(gateway_url), "mrt_gateway_buffer_underruns_total") == underruns_before
        assert max(rss) - rss[0] < 100 * 1024 * 1024  # bounded: a few chunks, not a growing queue
    finally:
        for listener in listeners:
            listener.finish()
        channel.close()
        cluster.stop()
