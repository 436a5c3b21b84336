"""Resume tokens: a session outlives its stream (memory://) and its gateway (a shared Redis).

Real processes: mock services, real gateways, a real ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from bench.rolling import (
    RecordingListener,
    restart_until_serving,
    shared_store_gateways,
    start_redis,
)
from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import StreamClient

PLAY = music_pb2.PlaybackControl.PLAY


def _resume(address: str, token: str, from_sequence: int, metadata: tuple = ()) -> StreamClient:
    client = StreamClient(address, metadata=metadata)
    client.send(
        setup=music_pb2.SessionSetup(resume_token=token, resume_from_sequence=from_sequence)
    )
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


def test_a_resumed_session_keeps_its_chunk_length(mock_cluster):
    first = StreamClient(mock_cluster.gateway_address)
    started = first.setup(chunk_frames=10)
    first.playback(PLAY)
    before = [chunk for _, chunk in first.chunks(2)]
    first.close()
    second = _resume(mock_cluster.gateway_address, started.resume_token, 2)
    resumed = second.expect("started").started
    after = [chunk for _, chunk in second.chunks(2)]
    second.close()
    assert resumed.chunk_seconds == pytest.approx(0.4)
    sequences, starts = _sequences_and_starts(before + after)
    assert sequences == [0, 1, 2, 3]
    assert starts == pytest.approx([0.0, 0.4, 0.8, 1.2])
    assert all(c.duration_seconds == pytest.approx(0.4) for c in after)


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


@pytest.mark.parametrize(
    "token, sequence, code",
    [
        ("not-a-token", 0, grpc.StatusCode.NOT_FOUND),
        (None, 99, grpc.StatusCode.OUT_OF_RANGE),  # None: a real token, at a chunk never made
    ],
)
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


# --- two gateways sharing a real Redis ------------------------------------------------------------
@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory):
    """A mock cluster whose gateway shares a real Redis store with a second gateway process."""
    redis_process, store_url = start_redis(tmp_path_factory.mktemp("redis"))
    cluster = start_cluster(tmp_path_factory)
    gateways = []
    try:
        gateways = shared_store_gateways(cluster, store_url, count=2, drain_grace_s=20)
        yield cluster, gateways
    finally:
        for extra in gateways[1:]:
            extra.stop()
        cluster.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)


def _serving_gateway(gateways) -> int:
    deadline = time.time() + 20
    while time.time() < deadline:
        open_now = [metric(scrape(g.metrics_url), "mrt_gateway_active_sessions") for g in gateways]
        if sum(open_now) == 1:
            return open_now.index(1)
        time.sleep(0.1)
    raise AssertionError(f"expected one open session, gateways have {open_now}")


@pytest.mark.parametrize("how", ["kill_9", "sigterm"])
def test_a_listener_moves_to_the_other_gateway_without_gap_or_repeat(two_gateways, tmp_path, how):
    _, gateways = two_gateways
    seed, chunks = 31, 7
    listener = RecordingListener(
        seed=seed,
        seconds=2.0 * chunks,
        out_path=tmp_path / "out.wav",
        addresses=[g.address for g in gateways],
    )
    index = _serving_gateway(gateways)
    victim = gateways[index]
    deadline = time.time() + 30
    while len(listener.stub.arrivals) < 2 and time.time() < deadline:
        time.sleep(0.05)
    if how == "kill_9":
        victim.kill()
    else:
        victim.terminate()
    listener.thread.join(timeout=60)
    try:
        assert listener.error is None, listener.error
        assert listener.summary.reconnects >= 1 and listener.summary.chunks == chunks
        sequences = [chunk.sequence for _, chunk in listener.stub.arrivals]
        assert sorted(set(sequences)) == list(range(chunks))  # every chunk arrived...
        assert listener.file_is_the_reference()  # ...and was written once, in order
        silence_s = listener.stub.silence_s()
        if how == "kill_9":
            assert silence_s <= 2.0  # at most one buffer (--buffer-ahead-seconds) of silence
            assert victim.wait(0) is not None
        else:
            assert silence_s == 0.0
            assert victim.wait(30) == 0  # it exited by itself once its client had moved
        survivor = gateways[1 - index]
        reason = "stream_lost" if how == "kill_9" else "drain"
        assert (
            metric(
                scrape(survivor.metrics_url), "mrt_gateway_sessions_resumed_total", reason=reason
            )
            >= 1
        )
    finally:
        victim.stop()
        restart_until_serving(victim)


def test_without_a_reachable_store_sessions_play_on_without_resume(tmp_path_factory):
    with socket.socket() as sock:  # a port nobody listens on: the store is "down"
        sock.bind(("127.0.0.1", 0))
        dead_store = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    cluster = start_cluster(
        tmp_path_factory,
        env={"MRT_SESSION_STORE": dead_store, "MRT_SESSION_STORE_TIMEOUT_S": "0.2"},
    )
    try:
        client = StreamClient(cluster.gateway_address)
        started = client.setup()
        assert started.resume_token == ""  # no token that could not work
        client.playback(PLAY)
        warning = client.expect("warning").warning
        assert warning.code == "RESUME_UNAVAILABLE"
        chunks = [chunk for _, chunk in client.chunks(2)]
        assert [c.sequence for c in chunks] == [0, 1]
        client.close()
        samples = scrape(cluster.metrics_urls["gateway"])
        assert metric(samples, "mrt_gateway_session_store_errors_total", op="save") >= 1
    finally:
        cluster.stop()
