"""Resume tokens: a session outlives its stream (memory://) and its gateway (a shared Redis).

Real processes: mock services, real gateways, a real ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from bench.rolling import (
    RecordingListener,
    restart_until_serving,
    shared_store_gateways,
    start_redis,
    wav_is_mock_session,
)
from services.cli.launcher import ServiceProcess
from services.common.proto.mrt.v1 import music_pb2
from services.gateway.session_store import MemorySessionStore, RedisSessionStore, SessionRecord
from tests.integration.conftest import (
    metric,
    open_sessions,
    scrape,
    start_cluster,
    wait_for_open_sessions,
)
from tests.streaming_client import StreamClient

PLAY, PAUSE = music_pb2.PlaybackControl.PLAY, music_pb2.PlaybackControl.PAUSE
NODE_STREAM = Path(__file__).resolve().parents[2] / "clients/node/bin/mrt-stream.mjs"
WAV_HEADER_BYTES, CHUNK_BYTES = 44, 2 * 48000 * 2 * 2  # 2 s of 48 kHz stereo int16


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


def test_streams_cancelled_before_playing_stay_resumable(mock_cluster):
    """A cancel reaches the gateway before or after the end of the request stream (which looks
    like a half-close), by chance: of a few sessions, some see each order."""
    gateway_open, generators_open = open_sessions(mock_cluster)
    cancelled = []
    for _ in range(5):
        client = StreamClient(mock_cluster.gateway_address)
        cancelled.append(client.setup())
        client.close()
    for started in cancelled:
        again = _resume(mock_cluster.gateway_address, started.resume_token, 0)
        resumed = again.expect("started").started
        again.close()
        assert resumed.session_id == started.session_id and resumed.resumed
    # Every stream was counted closed, also one whose cancel arrived while it was closing.
    wait_for_open_sessions(mock_cluster, gateway_open, sum(generators_open))


@pytest.mark.parametrize("end", ["cancel", "half_close"])  # a clean end by the client is kept too
def test_a_paused_session_whose_stream_ended_continues_on_resume(mock_cluster, end):
    first = StreamClient(mock_cluster.gateway_address)
    started = first.setup()
    first.playback(PLAY)
    received = [chunk for _, chunk in first.chunks(1)]
    first.playback(PAUSE)
    if end == "half_close":
        first.half_close()
        assert first.status() == grpc.StatusCode.OK
    first.close()  # cancels the call (a no-op once it ended) and closes the connection

    second = _resume(mock_cluster.gateway_address, started.resume_token, 1)
    resumed = second.expect("started").started
    assert resumed.session_id == started.session_id and resumed.resumed
    second.playback(PLAY)
    after = [chunk for _, chunk in second.chunks(2)]
    second.close()
    sequences, starts = _sequences_and_starts(received + after)
    assert sequences == [0, 1, 2]  # it continues where it stopped
    assert starts == [0.0, 2.0, 4.0]


def test_an_expired_token_is_refused(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, env={"MRT_SESSION_TTL_S": "2"})
    try:
        client = StreamClient(cluster.gateway_address)
        token = client.setup().resume_token
        client.playback(PLAY)
        client.chunks(1)
        client.close()  # the stream is cut: its session stays resumable...
        again = _resume(cluster.gateway_address, token, 1)
        assert again.expect("started").started.resumed
        again.close()
        time.sleep(3.0)  # ...until its 2 s TTL has passed (the gateway's clock: another process)
        late = _resume(cluster.gateway_address, token, 1)
        code = late.status()
        late.close()
        assert code == grpc.StatusCode.NOT_FOUND
        samples = scrape(cluster.metrics_urls["gateway"])
        assert metric(samples, "mrt_gateway_session_resume_failures_total", reason="unknown") == 1
    finally:
        cluster.stop()


# --- two gateways sharing a real Redis ------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port."""
    redis_process, store_url = start_redis(tmp_path_factory.mktemp("redis"))
    yield store_url
    redis_process.terminate()
    redis_process.wait(timeout=10)


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory, redis_url):
    """A mock cluster whose gateway shares a real Redis store with a second gateway process."""
    cluster = start_cluster(tmp_path_factory)
    gateways = []
    try:
        gateways = shared_store_gateways(cluster, redis_url, count=2, drain_grace_s=20)
        yield cluster, gateways
    finally:
        for extra in gateways[1:]:
            extra.stop()
        cluster.stop()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_of_two_resumes_of_one_session_at_once_only_the_first_claims_it(redis_url, kind):
    async def claims() -> list[bool]:
        store = (
            MemorySessionStore(ttl_s=10.0)
            if kind == "memory"
            else RedisSessionStore(redis_url, ttl_s=10.0)
        )
        key = f"claim-{kind}-{time.monotonic_ns()}"

        def record(epoch: int) -> SessionRecord:
            return SessionRecord("s", "mock", music_pb2.PCM_S16LE, 0, "", epoch=epoch)

        try:
            await store.save(key, record(0))  # the stream the client left
            return [
                await store.save(key, record(1), claim=True),  # a resume: takes the session
                await store.save(key, record(1), claim=True),  # another, at the same moment
                await store.save(key, record(1)),  # the winner's own next write
                await store.save(key, record(0)),  # the stream that was left
                await store.save(key, record(2), claim=True),  # a later resume takes over
            ]
        finally:
            await store.close()

    assert asyncio.run(claims()) == [True, False, True, False, True]


def _serving_gateway(gateways) -> int:
    deadline = time.time() + 20
    while time.time() < deadline:
        open_now = [metric(scrape(g.metrics_url), "mrt_gateway_active_sessions") for g in gateways]
        if sum(open_now) == 1:
            return open_now.index(1)
        time.sleep(0.1)
    raise AssertionError(f"expected one open session, gateways have {open_now}")


def _cut_the_serving_gateway(
    gateways: list[ServiceProcess], how: str, two_chunks_arrived: Callable[[], bool]
) -> int:
    """Once the listener has two chunks, kill -9 (or SIGTERM) the gateway it streams from;
    returns that gateway's index."""
    index = _serving_gateway(gateways)
    deadline = time.time() + 30
    while not two_chunks_arrived() and time.time() < deadline:
        time.sleep(0.05)
    if how == "kill_9":
        gateways[index].kill()
    else:
        gateways[index].terminate()
    return index


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
    index = _cut_the_serving_gateway(gateways, how, lambda: len(listener.stub.arrivals) >= 2)
    victim = gateways[index]
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


@pytest.mark.parametrize("how", ["kill_9", "sigterm"])
def test_the_node_client_moves_to_the_other_gateway_without_gap_or_repeat(
    two_gateways, tmp_path, how
):
    _, gateways = two_gateways
    node = shutil.which("node")
    assert node, "Node.js is needed (see README)"
    seed, chunks = 37, 5
    out = tmp_path / "node.wav"
    client = subprocess.Popen(
        [
            node,
            str(NODE_STREAM),
            "--address",
            "ipv4:" + ",".join(g.address for g in gateways),
            "--seed",
            str(seed),
            "--seconds",
            str(2 * chunks),
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    index = None
    try:
        index = _cut_the_serving_gateway(
            gateways,
            how,
            lambda: out.exists() and out.stat().st_size >= WAV_HEADER_BYTES + 2 * CHUNK_BYTES,
        )
        _, stderr = client.communicate(timeout=60)
        assert client.returncode == 0, stderr
        assert f"wrote {2 * chunks:.2f} s ({chunks} chunks)" in stderr, stderr
        moved = "stream lost (UNAVAILABLE)" if how == "kill_9" else "asked the client to move"
        assert moved in stderr and "resumed at chunk" in stderr, stderr
        assert wav_is_mock_session(out, seed, chunks)  # no chunk missing, repeated or reordered
        if how == "sigterm":
            assert gateways[index].wait(30) == 0  # it exited by itself once its client had moved
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        if index is not None:
            gateways[index].stop()
            restart_until_serving(gateways[index])


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
