"""Ogg Opus sessions through real processes: one stream per session, decodable by ffmpeg,
the same music as the PCM of the same session settings."""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2
from tests.audio_decoding import ffmpeg_decode, spectral_similarity
from tests.integration.conftest import MRT
from tests.streaming_client import StreamClient, chunk_audio

PLAY, PAUSE = music_pb2.PlaybackControl.PLAY, music_pb2.PlaybackControl.PAUSE


def _record(
    address: str,
    encoding: int,
    chunks: int,
    *,
    pause_after: int | None = None,
    opus_bitrate: int = 0,
) -> tuple[music_pb2.SessionStarted, list[music_pb2.AudioChunk]]:
    client = StreamClient(address)
    try:
        started = client.setup(encoding=encoding, opus_bitrate=opus_bitrate)
        client.prompts(music_pb2.WeightedPrompt(text="bossa nova"))
        client.send(config=music_pb2.GenerationConfig(seed=1234))
        client.playback(PLAY)
        received: list[music_pb2.AudioChunk] = []
        if pause_after is not None:
            received += [chunk for _, chunk in client.chunks(pause_after)]
            client.playback(PAUSE)
            client.playback(PLAY)
        received += [chunk for _, chunk in client.chunks(chunks - len(received))]
        return started, received
    finally:
        client.close()


def test_an_opus_session_is_one_stream_of_the_same_music_as_pcm(mock_cluster):
    started, opus_chunks = _record(mock_cluster.gateway_address, music_pb2.OGG_OPUS, 3)
    assert started.encoding == music_pb2.OGG_OPUS and started.opus_bitrate == 128_000
    _, pcm_chunks = _record(mock_cluster.gateway_address, music_pb2.PCM_S16LE, 3)
    assert [c.sequence for c in opus_chunks] == [0, 1, 2]
    assert [c.duration_seconds for c in opus_chunks] == [facts.CHUNK_SECONDS] * 3
    pcm = np.concatenate([chunk_audio(c) for c in pcm_chunks])
    decoded = ffmpeg_decode(b"".join(c.data for c in opus_chunks))
    assert abs(len(decoded) - len(pcm)) <= facts.SAMPLES_PER_FRAME
    assert spectral_similarity(decoded, pcm) > 0.9


def test_a_pause_leaves_the_opus_stream_contiguous(mock_cluster):
    _, chunks = _record(mock_cluster.gateway_address, music_pb2.OGG_OPUS, 3, pause_after=1)
    decoded = ffmpeg_decode(b"".join(c.data for c in chunks))
    assert abs(len(decoded) - 3 * facts.CHUNK_SAMPLES) <= facts.SAMPLES_PER_FRAME


@pytest.mark.parametrize(
    "setup",
    [
        music_pb2.SessionSetup(encoding=music_pb2.OGG_OPUS, opus_bitrate=1_000),
        music_pb2.SessionSetup(encoding=music_pb2.PCM_S16LE, opus_bitrate=64_000),
    ],
)
def test_an_opus_bitrate_the_session_cannot_use_is_invalid_argument(mock_cluster, setup):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        client.send(setup=setup)
        assert client.status() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        client.close()


def test_mrt_stream_writes_an_opus_file(mock_cluster, tmp_path):
    out = tmp_path / "x.opus"
    subprocess.run(
        [
            MRT,
            "stream",
            "--address",
            mock_cluster.gateway_address,
            "--prompt",
            "dub",
            "--seconds",
            "4",
            "--encoding",
            "ogg_opus",
            "--opus-bitrate",
            "64000",
            "--out",
            str(out),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    decoded = ffmpeg_decode(out.read_bytes())
    assert abs(len(decoded) - 2 * facts.CHUNK_SAMPLES) <= facts.SAMPLES_PER_FRAME
    assert np.abs(decoded).max() > 0.01
