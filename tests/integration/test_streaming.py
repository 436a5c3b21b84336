"""The public Stream API against real processes: chunks, pacing, prompts, playback, isolation."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import soundfile

from services.cli import main as mrt
from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, scrape
from tests.streaming_client import StreamClient, chunk_audio

PLAY, PAUSE, STOP, RESET = (
    music_pb2.PlaybackControl.PLAY,
    music_pb2.PlaybackControl.PAUSE,
    music_pb2.PlaybackControl.STOP,
    music_pb2.PlaybackControl.RESET_CONTEXT,
)


def text(t: str, weight: float = 1.0) -> music_pb2.WeightedPrompt:
    return music_pb2.WeightedPrompt(text=t, weight=weight)


@pytest.fixture
def client(mock_cluster):
    c = StreamClient(mock_cluster.gateway_address)
    yield c
    c.close()


def test_five_contiguous_two_second_stereo_chunks(client):
    started = client.setup()
    assert (started.sample_rate, started.channels, started.chunk_seconds) == (48000, 2, 2.0)
    assert started.session_id and started.model == "mock"
    client.prompts(text("synthwave"))
    client.playback(PLAY)
    chunks = [c for _, c in client.chunks(5)]
    assert [c.sequence for c in chunks] == [0, 1, 2, 3, 4]
    assert [c.start_seconds for c in chunks] == [0.0, 2.0, 4.0, 6.0, 8.0]
    for c in chunks:
        assert c.duration_seconds == 2.0
        assert len(c.data) == 96000 * 2 * 2  # int16 stereo
        audio = chunk_audio(c)
        assert np.abs(audio).max() > 0.01  # not silence


def test_ten_frame_chunks_are_four_tenths_of_a_second_contiguous_and_paced(client):
    started = client.setup(chunk_frames=10)
    assert started.chunk_seconds == pytest.approx(0.4)
    assert started.buffer_ahead_seconds == pytest.approx(0.4)  # one chunk, as for 2 s chunks
    client.playback(PLAY)
    received = client.chunks(6)
    chunks = [c for _, c in received]
    assert [c.sequence for c in chunks] == [0, 1, 2, 3, 4, 5]
    assert [c.start_seconds for c in chunks] == pytest.approx([0.4 * n for n in range(6)])
    for c in chunks:
        assert c.duration_seconds == pytest.approx(0.4)
        assert len(c.data) == 19200 * 2 * 2  # 10 frames of 1920 samples, int16 stereo
        assert np.abs(chunk_audio(c)).max() > 0.01
    arrivals = [t for t, _ in received]
    for n, arrived in enumerate(arrivals):  # paced at 0.4 s per chunk, not faster
        assert arrived >= arrivals[0] + 0.4 * n - started.buffer_ahead_seconds - 0.1, n


def test_mrt_stream_records_short_chunks(mock_cluster, tmp_path):
    out = tmp_path / "short.wav"
    argv = ["stream", "--address", mock_cluster.gateway_address, "--out", str(out)]
    assert mrt.main([*argv, "--chunk-frames", "10", "--seconds", "1"]) == 0
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (3 * 19200, 2)  # 1 s: three whole 0.4 s chunks


def test_float_encoding_is_honoured(mock_cluster):
    c = StreamClient(mock_cluster.gateway_address)
    try:
        assert c.setup(encoding=music_pb2.PCM_F32LE).encoding == music_pb2.PCM_F32LE
        c.playback(PLAY)
        ((_, chunk),) = c.chunks(1)
        audio = chunk_audio(chunk, music_pb2.PCM_F32LE)
        assert audio.shape == (96000, 2) and np.all(np.abs(audio) <= 1.0)
    finally:
        c.close()


def test_chunks_are_paced_to_real_time_one_chunk_ahead(client):
    started = client.setup()
    client.playback(PLAY)
    arrivals = [t for t, _ in client.chunks(5)]
    ahead_s = started.buffer_ahead_seconds
    for n, arrived in enumerate(arrivals):
        # Never earlier than the listener's need minus the buffer (small network tolerance).
        assert arrived >= arrivals[0] + 2.0 * n - ahead_s - 0.1, n
    # And real time overall: 5 chunks take about 3 chunk periods after the first.
    assert arrivals[4] - arrivals[0] >= 2.0 * 4 - ahead_s - 0.1


def test_a_prompt_change_applies_from_the_next_generated_chunk(client):
    client.setup()
    client.prompts(text("ambient"))
    first_status = client.expect("prompt_status").prompt_status
    assert first_status.accepted and first_status.version == 1
    client.playback(PLAY)
    before = [c for _, c in client.chunks(2)]
    assert all(c.prompt_version == 1 for c in before)
    client.prompts(text("drum and bass"))
    status = client.expect("prompt_status").prompt_status
    assert status.accepted and status.version == 2
    after = [c for _, c in client.chunks(4)]
    versions = [c.prompt_version for c in after]
    # Chunks already generated keep the old style; every later one has the new one.
    assert versions == sorted(versions) and versions[-1] == 2
    assert versions.count(1) <= 2
    new = [c for c in after if c.prompt_version == 2]
    old = before + [c for c in after if c.prompt_version == 1]
    assert not np.array_equal(chunk_audio(new[0])[1920:], chunk_audio(old[-1])[1920:])


def test_pause_stops_chunks_and_play_resumes_them(client):
    client.setup()
    client.playback(PLAY)
    client.chunks(2)
    client.playback(PAUSE)
    paused_at = time.time()
    # Anything already sent may still arrive just after PAUSE; then nothing for a while.
    arrivals = []
    try:
        while True:
            client.expect("chunk", timeout_s=5.0)
            arrivals.append(time.time())
    except TimeoutError:
        pass
    assert all(t - paused_at < 1.0 for t in arrivals)
    client.playback(PLAY)
    resumed = [c for _, c in client.chunks(2)]
    sequences = [
        m.chunk.sequence for _, m in client.received if m.WhichOneof("response") == "chunk"
    ]
    assert sequences == list(range(len(sequences)))  # contiguous across the pause
    assert resumed[-1].sequence == len(sequences) - 1


def test_stop_ends_playback_and_play_starts_afresh(client):
    client.setup()
    client.playback(PLAY)
    client.chunks(2)
    client.playback(STOP)
    with pytest.raises(TimeoutError):
        client.expect("chunk", timeout_s=4.0)
    client.playback(PLAY)
    client.chunks(1)
    sequences = [
        m.chunk.sequence for _, m in client.received if m.WhichOneof("response") == "chunk"
    ]
    assert sequences == list(range(len(sequences)))


def test_half_close_while_playing_keeps_streaming(client):
    client.setup()
    client.playback(PLAY)
    client.half_close()
    assert len(client.chunks(2)) == 2


def test_half_close_after_stop_ends_the_stream_ok(client):
    client.setup()
    client.playback(PLAY)
    client.chunks(1)
    client.playback(STOP)
    client.half_close()
    assert client.status(timeout_s=10) == grpc.StatusCode.OK


def test_reset_context_keeps_playing(client):
    client.setup()
    client.playback(PLAY)
    client.chunks(2)
    client.playback(RESET)
    more = client.chunks(3)
    assert [c.sequence for _, c in more] == [2, 3, 4]


def test_two_sessions_are_independent(mock_cluster):
    a, b = StreamClient(mock_cluster.gateway_address), StreamClient(mock_cluster.gateway_address)
    try:
        a.setup(), b.setup()
        # Fixed seeds: the sessions' music is deterministic, so "different" cannot be luck.
        a.send(config=music_pb2.GenerationConfig(seed=1))
        b.send(config=music_pb2.GenerationConfig(seed=2))
        a.prompts(text("jazz piano"))
        b.prompts(text("heavy metal guitar"))
        a.playback(PLAY), b.playback(PLAY)
        chunks_a = [c for _, c in a.chunks(3)]
        chunks_b = [c for _, c in b.chunks(1)]
        b.playback(PAUSE)  # pausing b must not disturb a
        chunks_a += [c for _, c in a.chunks(2)]
        assert [c.sequence for c in chunks_a] == [0, 1, 2, 3, 4]
        assert a.received[0][1].started.session_id != b.received[0][1].started.session_id
        assert not np.array_equal(chunks_a[0].data, chunks_b[0].data)
    finally:
        a.close(), b.close()


def test_metrics_move_during_a_stream(mock_cluster, client):
    urls = mock_cluster.metrics_urls
    before = {name: scrape(url) for name, url in urls.items()}
    client.setup()
    client.prompts(text("metrics"))
    client.playback(PLAY)
    client.chunks(2)
    during = {name: scrape(url) for name, url in urls.items()}
    assert metric(during["gateway"], "mrt_gateway_active_sessions") >= 1
    assert (
        metric(during["gateway"], "mrt_gateway_chunks_sent_total")
        >= metric(before["gateway"], "mrt_gateway_chunks_sent_total") + 2
    )
    assert metric(during["gateway"], "mrt_gateway_time_to_first_audio_seconds_count") > metric(
        before["gateway"], "mrt_gateway_time_to_first_audio_seconds_count"
    )
    assert metric(during["gateway"], "mrt_gateway_rpc_requests_total", method="Stream") >= metric(
        before["gateway"], "mrt_gateway_rpc_requests_total", method="Stream"
    )
    generator = during["generator-0"]
    assert metric(generator, "mrt_generator_active_sessions") >= 1
    assert metric(generator, "mrt_generator_chunks_generated_total") > metric(
        before["generator-0"], "mrt_generator_chunks_generated_total"
    )
    assert metric(generator, "mrt_generator_batch_size_count") > 0
    assert metric(generator, "mrt_generator_real_time_factor") > 0
    assert metric(generator, "mrt_generator_capacity_sessions") >= 1
    embedder = during["embedder"]
    assert metric(embedder, "mrt_embedder_cache_misses_total", source="text") + metric(
        embedder, "mrt_embedder_cache_hits_total", source="text"
    ) > metric(before["embedder"], "mrt_embedder_cache_misses_total", source="text") + metric(
        before["embedder"], "mrt_embedder_cache_hits_total", source="text"
    )
    assert metric(embedder, "mrt_embedder_rpc_requests_total", method="Embed", code="OK") >= 1
