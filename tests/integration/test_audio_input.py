"""Live audio input and initial_audio through the real services with the `tiny` model."""

from __future__ import annotations

import io
import subprocess
import time

import numpy as np
import pytest
import soundfile

from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import MRT, metric, scrape, start_cluster
from tests.streaming_client import StreamClient, chunk_audio

SR = 48_000
PLAY = music_pb2.PlaybackControl.PLAY


@pytest.fixture(scope="module")
def tiny_cluster(tmp_path_factory):
    """Two tiny generators (one is killed mid-jam), the mock embedder and the gateway."""
    cluster = start_cluster(
        tmp_path_factory, model="tiny", embedder_model="mock", max_batch_size=2, generators=2
    )
    yield cluster
    cluster.stop()


def chord_wav(seconds: float, hz=(220.0, 330.0)) -> bytes:
    t = np.arange(round(seconds * SR)) / SR
    audio = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in hz], axis=1)
    out = io.BytesIO()
    soundfile.write(out, audio, SR, format="WAV", subtype="PCM_16")
    return out.getvalue()


def chord_pcm(seconds: float) -> bytes:
    t = np.arange(round(seconds * SR)) / SR
    audio = np.stack([0.3 * np.sin(2 * np.pi * 262 * t), 0.3 * np.sin(2 * np.pi * 392 * t)], 1)
    return np.round(audio * 32767).astype("<i2").tobytes()


def open_session(
    cluster, seed: int, initial_audio: bytes = b""
) -> tuple[StreamClient, music_pb2.SessionStarted]:
    client = StreamClient(cluster.gateway_address)
    client.send(setup=music_pb2.SessionSetup(initial_audio=initial_audio))
    started = client.expect("started").started
    client.send(config=music_pb2.GenerationConfig(seed=seed))
    return client, started


def play(client: StreamClient, chunks: int) -> list[np.ndarray]:
    client.playback(PLAY)
    return [chunk_audio(chunk) for _, chunk in client.chunks(chunks, timeout_s=120)]


def test_initial_audio_seeds_the_context_the_same_way_twice(tiny_cluster):
    """The same clip, prompts and seed give the same audio; without the clip it differs."""
    clip = chord_wav(4.0)
    runs = []
    for initial_audio in (clip, clip, b""):
        client, started = open_session(tiny_cluster, seed=5, initial_audio=initial_audio)
        assert started.audio_input_supported
        client.prompts(music_pb2.WeightedPrompt(text="slow dub"))
        assert client.expect("prompt_status").prompt_status.accepted
        runs.append(play(client, 2))
        client.close()
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])  # the clip changed the music


def test_live_input_changes_the_following_chunks_then_the_model_goes_on_alone(tiny_cluster):
    gateway_metrics = f"http://127.0.0.1:{tiny_cluster.config.gateway_metrics_port}/metrics"
    before = scrape(gateway_metrics)
    embedder_metrics = f"http://127.0.0.1:{tiny_cluster.config.embedder_metrics_port}/metrics"
    embeds_before = metric(
        scrape(embedder_metrics), "mrt_embedder_embed_seconds_count", source="audio"
    )
    alone, _ = open_session(tiny_cluster, seed=8)
    jam, _ = open_session(tiny_cluster, seed=8)
    jam.send(config=music_pb2.GenerationConfig(input_style_weight=0.5))  # and as a style prompt
    # Four seconds of input from timeline position 0, sent ahead of time (as a file can be).
    jam.send(
        audio_input=music_pb2.AudioInput(
            data=chord_pcm(4.0),
            encoding=music_pb2.PCM_S16LE,
            sample_rate=SR,
            channels=2,
            start_seconds=0.0,
        )
    )
    alone.playback(PLAY)
    jam.playback(PLAY)
    alone_audio, jam_audio = (
        [chunk_audio(c) for _, c in client.chunks(6, timeout_s=120)] for client in (alone, jam)
    )
    alone.close()
    assert all(not np.array_equal(a, b) for a, b in zip(alone_audio, jam_audio))
    after = scrape(gateway_metrics)
    # Mixes go with the chunks whose 66-frame window holds input: those at 0, 2, 4 and 6 s.
    assert (
        metric(after, "mrt_gateway_audio_injections_total")
        - metric(before, "mrt_gateway_audio_injections_total")
        == 4
    )
    assert metric(after, "mrt_gateway_audio_input_received_seconds_total") - metric(
        before, "mrt_gateway_audio_input_received_seconds_total"
    ) == pytest.approx(4.0)

    # The live input was embedded as a style prompt along the way.
    assert (
        metric(scrape(embedder_metrics), "mrt_embedder_embed_seconds_count", source="audio")
        > embeds_before
    )

    # Bad input gets a warning each, and the session keeps playing.
    bad = [
        music_pb2.AudioInput(
            data=b"\0" * 8, encoding=music_pb2.PCM_S16LE, sample_rate=1000, channels=2
        ),
        music_pb2.AudioInput(
            data=b"\0" * 8, encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=5
        ),
        music_pb2.AudioInput(
            data=b"\0" * (2 * 1024 * 1024), encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
        ),
    ]
    for message in bad:
        jam.send(audio_input=message)
    warnings = [jam.expect("warning", timeout_s=60).warning for _ in bad]
    assert [w.code for w in warnings] == ["INVALID_AUDIO_INPUT"] * 3
    assert "sample_rate" in warnings[0].message and "channels" in warnings[1].message
    assert "limit" in warnings[2].message
    # 20 s at once, faster than real time: the buffer keeps the newest, the rest is counted.
    for piece in range(4):  # 5 s each, from timeline position 40 s on
        jam.send(
            audio_input=music_pb2.AudioInput(
                data=chord_pcm(5.0),
                encoding=music_pb2.PCM_S16LE,
                sample_rate=SR,
                channels=2,
                **({"start_seconds": 40.0} if piece == 0 else {}),
            )
        )
    assert jam.expect("warning", timeout_s=60).warning.code == "AUDIO_INPUT_DROPPED"
    jam.chunks(1, timeout_s=60)
    dropped = metric(scrape(gateway_metrics), "mrt_gateway_audio_input_dropped_seconds_total") - (
        metric(before, "mrt_gateway_audio_input_dropped_seconds_total")
    )
    assert dropped == pytest.approx(4.0, abs=0.01)  # 20 s into a 16 s buffer
    jam.close()


def test_a_model_without_audio_input_refuses_it_with_warnings(mock_cluster):
    client = StreamClient(mock_cluster.gateway_address)
    client.send(setup=music_pb2.SessionSetup(initial_audio=chord_wav(1.0)))
    assert not client.expect("started").started.audio_input_supported
    assert client.expect("warning").warning.code == "UNSUPPORTED"
    client.send(
        audio_input=music_pb2.AudioInput(
            data=chord_pcm(0.5), encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
        )
    )
    assert client.expect("warning").warning.code == "UNSUPPORTED"
    client.playback(PLAY)
    client.chunks(1)
    client.close()


def test_undecodable_initial_audio_is_answered_and_the_session_plays(mock_cluster):
    client = StreamClient(mock_cluster.gateway_address)
    client.send(setup=music_pb2.SessionSetup(initial_audio=b"RIFF....WAVEnot really"))
    client.expect("started")
    warning = client.expect("warning").warning
    assert warning.code == "INVALID_INITIAL_AUDIO" and "decoded" in warning.message
    client.playback(PLAY)
    client.chunks(1)
    client.close()


def test_mrt_stream_plays_along_with_a_file_from_a_clip(tiny_cluster, tmp_path):
    gateway_metrics = f"http://127.0.0.1:{tiny_cluster.config.gateway_metrics_port}/metrics"
    before = scrape(gateway_metrics)
    (tmp_path / "clip.wav").write_bytes(chord_wav(3.0, hz=(147.0, 220.0)))
    (tmp_path / "live.wav").write_bytes(chord_wav(6.0))
    out = tmp_path / "jam.wav"
    run = subprocess.run(
        [
            MRT,
            "stream",
            "--address",
            tiny_cluster.gateway_address,
            "--seconds",
            "6",
            "--initial-audio",
            str(tmp_path / "clip.wav"),
            "--input-audio",
            str(tmp_path / "live.wav"),
            "--input-gap-ms",
            "200",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == SR and audio.shape == (3 * 96_000, 2)
    after = scrape(gateway_metrics)
    assert metric(after, "mrt_gateway_audio_input_received_seconds_total") > metric(
        before, "mrt_gateway_audio_input_received_seconds_total"
    )
    assert metric(after, "mrt_gateway_audio_injections_total") > metric(
        before, "mrt_gateway_audio_injections_total"
    )


def test_a_jam_moved_to_another_generator_keeps_its_context_and_its_mixing(tiny_cluster):
    """The snapshot carries the injected context and the gateway keeps mixing, so a jam whose
    generator is killed sounds exactly like the same jam left alone."""

    def start_jam() -> StreamClient:
        client, _ = open_session(tiny_cluster, seed=21)
        for piece in range(2):  # 8 s of input from position 0, in two messages under the limit
            client.send(
                audio_input=music_pb2.AudioInput(
                    data=chord_pcm(4.0),
                    encoding=music_pb2.PCM_S16LE,
                    sample_rate=SR,
                    channels=2,
                    **({"start_seconds": 0.0} if piece == 0 else {}),
                )
            )
        client.playback(PLAY)
        return client

    reference = start_jam()
    expected = [chunk_audio(chunk) for _, chunk in reference.chunks(5, timeout_s=120)]
    reference.close()
    jam = start_jam()
    received = [chunk_audio(chunk) for _, chunk in jam.chunks(2, timeout_s=120)]
    holding = []
    deadline = time.time() + 30
    while len(holding) != 1 and time.time() < deadline:  # the reference's session has ended
        holding = [
            i
            for i, g in enumerate(tiny_cluster.generators)
            if metric(scrape(g.metrics_url), "mrt_generator_active_sessions") > 0
        ]
    assert len(holding) == 1
    try:
        tiny_cluster.generator_process(holding[0]).kill()  # SIGKILL, mid-jam
        received += [chunk_audio(chunk) for _, chunk in jam.chunks(3, timeout_s=120)]
        assert any(
            message.WhichOneof("response") == "warning"
            and message.warning.code == "SESSION_MIGRATED"
            for _, message in jam.received
        )
        for got, want in zip(received, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        jam.close()
        tiny_cluster.restart_generator(holding[0])


def test_the_generator_writes_a_mix_s_encoding_over_the_last_58_context_frames(
    tiny_cluster, tmp_path_factory
):
    """Through the generator's own API: the snapshot after an injected chunk holds the tiny
    codec's encoding of the mix (computed in TensorFlow here) where upstream writes it."""
    import queue

    import grpc

    from services.common.assets import AssetStore
    from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc
    from services.generator.model import tiny_assets
    from tests.codec_reference import tensorflow_codes

    requests: queue.Queue = queue.Queue()
    channel = grpc.insecure_channel(tiny_cluster.generators[0].spec.address)
    responses = generator_pb2_grpc.GeneratorStub(channel).Session(iter(requests.get, None))
    try:
        requests.put(
            generator_pb2.GeneratorRequest(
                open=generator_pb2.OpenSession(
                    session_id="mix-check",
                    sampling=generator_pb2.Sampling(
                        temperature=1.1, top_k=40, guidance=5.0, seed=4
                    ),
                )
            )
        )
        assert next(responses).opened.audio_input_supported

        def chunk_after(*updates) -> np.ndarray:
            for update in updates:
                requests.put(update)
            requests.put(
                generator_pb2.GeneratorRequest(
                    demand=generator_pb2.ChunkDemand(deadline_unix_s=time.time())
                )
            )
            snapshot = next(responses).chunk.snapshot
            return np.frombuffer(snapshot.context_tokens, "<i4").reshape(250, 16)

        before = chunk_after()
        t = np.arange(126_720) / SR
        mix = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], 1)
        after = chunk_after(
            generator_pb2.GeneratorRequest(
                inject=generator_pb2.InjectAudio(mix=mix.astype("<f4").tobytes())
            )
        )
    finally:
        requests.put(None)
        channel.close()
    store = tiny_assets.ensure_tiny_assets(AssetStore(tmp_path_factory.getbasetemp() / "assets"))
    expected = tensorflow_codes(store, mix)[8:]  # 66 frames encoded, the first 8 thrown away
    np.testing.assert_array_equal(after[-50 - 58 : -50], expected)  # then moved by the new chunk
    np.testing.assert_array_equal(after[: -50 - 58], before[50:-58])  # the rest untouched
