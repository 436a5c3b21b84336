"""Resume tokens: a session outlives its stream (memory://) and its gateway (a shared Redis).

Real processes: mock services, real gateways, a real ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time

import grpc
import numpy as np
import pytest
import soundfile

from bench.mock_reference import mock_session_audio
from bench.player import Player
from services.cli.launcher import ServiceProcess
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


# --- two gateways sharing a real Redis ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, nothing persisted."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: run scripts/ci_system_deps.sh"
    import redis
    port = _free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.time() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory, redis_url):
    """A mock cluster whose gateway shares a Redis store with a second gateway process."""
    cluster = start_cluster(tmp_path_factory)
    store_flags = ["--session-store", redis_url, "--drain-grace-s", "20"]
    first = cluster.gateway
    first.stop()  # restarted below with the shared store (flags survive restarts, unlike env)
    first.spec = dataclasses.replace(first.spec, argv=(*first.spec.argv, *store_flags))
    argv = list(first.spec.argv)
    port, metrics_port = _free_port(), _free_port()
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--metrics-port") + 1] = str(metrics_port)
    second = ServiceProcess(dataclasses.replace(first.spec, name="gateway-b", port=port,
                                                metrics_port=metrics_port, argv=tuple(argv)),
                            log_dir=cluster.config.log_dir)
    for gateway in (first, second):
        _restart(gateway)
    gateways = [cluster.gateway, second]
    yield cluster, gateways
    second.stop()
    cluster.stop()


def _restart(gateway: ServiceProcess) -> None:
    gateway.start()
    deadline = time.time() + 120
    while not gateway.check_health():
        assert time.time() < deadline and gateway.is_running(), gateway.log_tail()
        time.sleep(0.2)


class _ArrivalRecorder:
    """Wraps a stub: keeps each chunk with its arrival time, whichever stream brought it."""

    def __init__(self, stub):
        self._stub = stub
        self.arrivals: list[tuple[float, music_pb2.AudioChunk]] = []

    def Stream(self, requests, **kwargs):
        call = self._stub.Stream(requests, **kwargs)
        recorder = self

        class Call:
            def __iter__(self):
                for response in call:
                    if response.WhichOneof("response") == "chunk":
                        recorder.arrivals.append((time.time(), response.chunk))
                    yield response

            def cancel(self):
                call.cancel()
        return Call()


def _stream_in_background(gateways, seconds: float, out_path, seed: int):
    """`mrt stream`'s own recording loop against both gateways (round robin), in a thread."""
    import threading

    from services.cli.connection import CHANNEL_OPTIONS
    from services.cli.stream import stream_to_file
    from services.common.proto.mrt.v1 import music_pb2_grpc
    target = "ipv4:" + ",".join(g.address for g in gateways)
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = _ArrivalRecorder(music_pb2_grpc.MusicGenerationStub(channel))
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = stream_to_file(
                stub, seconds=seconds, out_path=out_path,
                setup=music_pb2.SessionSetup(encoding=music_pb2.PCM_S16LE),
                config=music_pb2.GenerationConfig(seed=seed), progress_out=open(os.devnull, "w"))
        except Exception as err:  # asserted on by the test
            outcome["error"] = err
        finally:
            channel.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stub, outcome


def _serving_gateway(gateways) -> int:
    deadline = time.time() + 20
    while time.time() < deadline:
        open_now = [metric(scrape(g.metrics_url), "mrt_gateway_active_sessions") for g in gateways]
        if sum(open_now) == 1:
            return open_now.index(1)
        time.sleep(0.1)
    raise AssertionError(f"expected one open session, gateways have {open_now}")


def _assert_file_is_the_reference(out_path, seed: int, chunks: int) -> None:
    """The WAV holds exactly the first ``chunks`` chunks a never-interrupted session makes."""
    audio, rate = soundfile.read(out_path, dtype="float32")
    expected = np.concatenate(mock_session_audio(seed, chunks))
    assert rate == 48000 and audio.shape == expected.shape
    assert np.abs(audio - expected).max() <= 2 / 32767  # s16 quantization only


def _silence_s(arrivals) -> float:
    player = Player()
    for arrival_s, chunk in arrivals:
        player.receive(arrival_s, chunk.duration_seconds)
    return player.stalled_s


@pytest.mark.parametrize("how", ["kill_9", "sigterm"])
def test_a_listener_moves_to_the_other_gateway_without_gap_or_repeat(two_gateways, tmp_path, how):
    cluster, gateways = two_gateways
    seed, chunks = 31, 7
    out_path = tmp_path / "out.wav"
    thread, stub, outcome = _stream_in_background(gateways, 2.0 * chunks, out_path, seed)
    index = _serving_gateway(gateways)
    victim = gateways[index]
    deadline = time.time() + 30
    while len(stub.arrivals) < 2 and time.time() < deadline:
        time.sleep(0.05)
    if how == "kill_9":
        victim.kill()
    else:
        victim.terminate()
    thread.join(timeout=60)
    try:
        assert "error" not in outcome, outcome.get("error")
        summary = outcome["summary"]
        assert summary.reconnects >= 1 and summary.chunks == chunks
        sequences = [chunk.sequence for _, chunk in stub.arrivals]
        assert sorted(set(sequences)) == list(range(chunks))  # each chunk arrived, in order...
        _assert_file_is_the_reference(out_path, seed, chunks)  # ...and was written once
        first_arrivals = {}
        for arrival_s, chunk in stub.arrivals:  # a chunk asked for again plays once, when first here
            first_arrivals.setdefault(chunk.sequence, (arrival_s, chunk))
        silence_s = _silence_s(sorted(first_arrivals.values(), key=lambda a: a[1].sequence))
        if how == "kill_9":
            assert silence_s <= 2.0  # at most one buffer (--buffer-ahead-seconds) of silence
            assert victim.wait(0) is not None
        else:
            assert silence_s == 0.0
            assert victim.wait(30) == 0  # it exited by itself once its client had moved
        survivor = gateways[1 - index]
        reason = "stream_lost" if how == "kill_9" else "drain"
        assert metric(scrape(survivor.metrics_url), "mrt_gateway_sessions_resumed_total",
                      reason=reason) >= 1
    finally:
        victim.stop()
        _restart(victim)
