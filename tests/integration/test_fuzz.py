"""Property-based fuzzing: random request sequences and random audio never break a service."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from tests.integration.conftest import wait_for_open_sessions
from tests.streaming_client import StreamClient

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
prompts = st.one_of(
    st.builds(music_pb2.WeightedPrompt, text=st.text(max_size=600), weight=floats),
    st.builds(music_pb2.WeightedPrompt, audio=st.binary(max_size=2048), weight=floats),
    st.builds(
        lambda values, w: music_pb2.WeightedPrompt(
            embedding=music_pb2.Embedding(values=values), weight=w
        ),
        st.lists(floats, max_size=800),
        floats,
    ),
    st.just(music_pb2.WeightedPrompt()),
)
requests = st.one_of(
    st.builds(
        lambda m, e: music_pb2.StreamRequest(setup=music_pb2.SessionSetup(model=m, encoding=e)),
        st.sampled_from(["", "mock", "tiny", "nope"]),
        st.integers(0, 3),
    ),
    st.builds(
        lambda ps: music_pb2.StreamRequest(prompts=music_pb2.PromptUpdate(prompts=ps)),
        st.lists(prompts, max_size=4),
    ),
    st.builds(
        lambda t, k, g, s: music_pb2.StreamRequest(
            config=music_pb2.GenerationConfig(temperature=t, top_k=k, guidance=g, seed=s)
        ),
        floats,
        st.integers(-2000, 2000),
        floats,
        st.integers(-(2**63), 2**63 - 1),
    ),
    st.builds(
        lambda a: music_pb2.StreamRequest(playback=music_pb2.PlaybackControl(action=a)),
        st.integers(0, 6),
    ),
    st.builds(
        lambda p, u: music_pb2.StreamRequest(
            report=music_pb2.ClientReport(played_seconds=p, underruns=u)
        ),
        st.floats(allow_nan=True),
        st.integers(0, 2**32 - 1),
    ),
    st.just(music_pb2.StreamRequest()),
)
STOP = music_pb2.StreamRequest(
    playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.STOP)
)
SETUP = music_pb2.StreamRequest(setup=music_pb2.SessionSetup())


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequence=st.lists(requests, max_size=6), with_setup=st.booleans())
def test_random_request_sequences_always_end(mock_cluster, sequence, with_setup):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        for request in ([SETUP] if with_setup else []) + sequence + [STOP]:
            client._requests.put(request)
        client.half_close()
        # Whatever was sent, the stream ends (OK or an error status), promptly.
        code = client.status(timeout_s=30)
        assert code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAVAILABLE,
        ), code
    finally:
        client.close()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=4096))
def test_random_bytes_as_audio_are_refused_cleanly(mock_cluster, data):
    channel = grpc.insecure_channel(mock_cluster.gateway_address)
    try:
        stub = music_pb2_grpc.MusicGenerationStub(channel)
        try:
            response = stub.EmbedStyle(music_pb2.EmbedStyleRequest(audio=data), timeout=20)
            assert len(response.embedding) == 768  # a rare valid file is fine too
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    finally:
        channel.close()


def test_clients_cancelling_at_any_moment_leave_no_session_behind(mock_cluster):
    clients = [StreamClient(mock_cluster.gateway_address) for _ in range(6)]
    for i, client in enumerate(clients):
        client.setup()
        client.playback(music_pb2.PlaybackControl.PLAY)
        if i % 2:
            client.chunks(1)
    for client in clients:  # cancel mid-placement, mid-generation, mid-pacing
        client.close()
    wait_for_open_sessions(mock_cluster, gateway=0, generators_total=0)


def test_after_fuzzing_every_service_is_up_and_no_session_is_stuck(mock_cluster):
    mock_cluster.check_running()
    wait_for_open_sessions(mock_cluster, gateway=0, generators_total=0)
    for process in mock_cluster.services:
        assert process.check_health(), process.name
