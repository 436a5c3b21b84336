"""Bad input gets a clear answer, the services stay up, and other sessions lose nothing."""

from __future__ import annotations

import io
import math
import time

import grpc
import numpy as np
import pytest
import soundfile

from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import Listener, StreamClient

PLAY = music_pb2.PlaybackControl.PLAY


@pytest.fixture(scope="module")
def witness(mock_cluster):
    w = Listener(mock_cluster.gateway_address, "witness")
    yield w
    w.finish()
    assert w.failure is None, w.failure
    assert [c.sequence for c in w.chunks] == list(range(len(w.chunks)))
    assert len(w.chunks) >= 3


def ended_with(address: str, *messages: music_pb2.StreamRequest) -> grpc.RpcError:
    channel = grpc.insecure_channel(address)
    stub = music_pb2_grpc.MusicGenerationStub(channel)
    try:
        for _ in stub.Stream(iter(messages), timeout=20):
            pass
    except grpc.RpcError as err:
        return err
    finally:
        channel.close()
    raise AssertionError("the stream ended without an error")


SETUP = music_pb2.StreamRequest(setup=music_pb2.SessionSetup())


@pytest.mark.parametrize(
    "messages, needle",
    [
        (
            [music_pb2.StreamRequest(playback=music_pb2.PlaybackControl(action=PLAY))],
            "first message must be `setup`",
        ),
        ([music_pb2.StreamRequest()], "first message must be `setup`"),
        (
            [music_pb2.StreamRequest(setup=music_pb2.SessionSetup(model="nonexistent"))],
            "unknown model 'nonexistent'",
        ),
        ([SETUP, SETUP], "only be sent once"),
        *[
            (
                [music_pb2.StreamRequest(setup=music_pb2.SessionSetup(chunk_frames=n))],
                "chunk_frames",
            )
            for n in (4, 51, -1)
        ],
        ([SETUP, music_pb2.StreamRequest()], "empty StreamRequest"),
        ([], "closed before `setup`"),
    ],
)
def test_malformed_streams_end_with_invalid_argument(mock_cluster, witness, messages, needle):
    err = ended_with(mock_cluster.gateway_address, *messages)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.details()


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def embedding(values) -> music_pb2.WeightedPrompt:
    return music_pb2.WeightedPrompt(embedding=music_pb2.Embedding(values=values))


@pytest.mark.parametrize(
    "prompt, needle",
    [
        (music_pb2.WeightedPrompt(text="rock", weight=-1.0), "weight"),
        (music_pb2.WeightedPrompt(text="rock", weight=math.nan), "weight"),
        (music_pb2.WeightedPrompt(text="rock", weight=math.inf), "weight"),
        (embedding([0.1] * 100), "768"),
        (embedding([math.nan] * 768), "finite"),
        (music_pb2.WeightedPrompt(text="x" * 5000), "limit"),
        (music_pb2.WeightedPrompt(audio=b"this is not audio at all" * 10), "audio"),
        (music_pb2.WeightedPrompt(audio=b""), "empty"),
        (music_pb2.WeightedPrompt(audio=b"\0" * (11 * 1024 * 1024)), "limit"),
        (music_pb2.WeightedPrompt(audio=wav_bytes()[:200]), "audio"),
    ],
)
def test_bad_prompts_are_refused_and_the_music_keeps_playing(mock_cluster, witness, prompt, needle):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        client.setup()
        client.prompts(music_pb2.WeightedPrompt(text="good prompt"))
        assert client.expect("prompt_status").prompt_status.accepted
        client.playback(PLAY)
        client.chunks(1)
        client.prompts(prompt)
        status = client.expect("prompt_status", timeout_s=20).prompt_status
        assert not status.accepted and status.version == 1
        assert needle in status.message
        later = client.chunks(2)
        assert all(c.prompt_version == 1 for _, c in later)  # previous prompts kept
    finally:
        client.close()


@pytest.mark.parametrize(
    "config, needle",
    [
        (music_pb2.GenerationConfig(top_k=5000), "top_k"),
        (music_pb2.GenerationConfig(top_k=-3), "top_k"),
        (music_pb2.GenerationConfig(temperature=9.0), "temperature"),
        (music_pb2.GenerationConfig(temperature=math.nan), "temperature"),
        (music_pb2.GenerationConfig(guidance=-2.0), "guidance"),
        (music_pb2.GenerationConfig(guidance=100.0), "guidance"),
    ],
)
def test_out_of_range_config_is_refused_with_a_warning(mock_cluster, witness, config, needle):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        client.setup()
        client.playback(PLAY)
        client.chunks(1)
        client.send(config=config)
        warning = client.expect("warning").warning
        assert warning.code == "INVALID_CONFIG" and needle in warning.message
        assert all(c.config_version == 0 for _, c in client.chunks(2))
    finally:
        client.close()


def test_a_good_audio_prompt_is_accepted(mock_cluster, witness):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        client.setup()
        client.prompts(
            music_pb2.WeightedPrompt(audio=wav_bytes(), weight=0.5),
            music_pb2.WeightedPrompt(text="lofi", weight=0.5),
        )
        status = client.expect("prompt_status").prompt_status
        assert status.accepted, status.message
    finally:
        client.close()


def test_a_client_that_disconnects_mid_stream_is_cleaned_up(mock_cluster, witness):
    gateway_url = mock_cluster.metrics_urls["gateway"]
    before = metric(scrape(gateway_url), "mrt_gateway_sessions_ended_total")
    client = StreamClient(mock_cluster.gateway_address)
    client.setup()
    client.playback(PLAY)
    client.chunks(1)
    client.cancel()
    deadline = time.time() + 10
    while time.time() < deadline:
        if metric(scrape(gateway_url), "mrt_gateway_sessions_ended_total") > before:
            break
        time.sleep(0.1)
    samples = scrape(gateway_url)
    assert metric(samples, "mrt_gateway_sessions_ended_total", outcome="cancelled") >= 1


def test_embed_style_refuses_bad_audio_and_serves_text(mock_cluster):
    channel = grpc.insecure_channel(mock_cluster.gateway_address)
    stub = music_pb2_grpc.MusicGenerationStub(channel)
    try:
        response = stub.EmbedStyle(music_pb2.EmbedStyleRequest(text="bossa nova"), timeout=20)
        assert len(response.embedding) == 768
        with pytest.raises(grpc.RpcError) as err:
            stub.EmbedStyle(music_pb2.EmbedStyleRequest(audio=b"garbage" * 100), timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        models = stub.ListModels(music_pb2.ListModelsRequest(), timeout=5)
        by_name = {m.name: m for m in models.models}
        assert by_name["mock"].loaded and by_name["mock"].sample_rate == 48000
        assert not by_name["large"].loaded
    finally:
        channel.close()


def test_backends_down_answer_unavailable_quickly(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory)
    try:
        for generator in cluster.generators:
            generator.kill()
        cluster.embedder.kill()
        time.sleep(2.5)  # the gateway's next load poll notices
        started = time.time()
        err = ended_with(cluster.gateway_address, SETUP)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        channel = grpc.insecure_channel(cluster.gateway_address)
        with pytest.raises(grpc.RpcError) as embed_err:
            music_pb2_grpc.MusicGenerationStub(channel).EmbedStyle(
                music_pb2.EmbedStyleRequest(text="x"), timeout=30
            )
        channel.close()
        assert embed_err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.time() - started < 15
    finally:
        cluster.stop()
