"""A generator serves each session at its own chunk length (OpenSession.chunk_frames)."""

from __future__ import annotations

import queue
import time

import grpc
import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc

SAMPLING = generator_pb2.Sampling(temperature=1.0, top_k=40, guidance=5.0, seed=3)


def open_session(stub, session_id: str, chunk_frames: int):
    """The session's call and its request queue (kept open: no half-close)."""
    requests: queue.Queue = queue.Queue()
    requests.put(
        generator_pb2.GeneratorRequest(
            open=generator_pb2.OpenSession(
                session_id=session_id, sampling=SAMPLING, chunk_frames=chunk_frames
            )
        )
    )
    return stub.Session(iter(requests.get, None), timeout=30), requests


@pytest.fixture
def stub(mock_cluster):
    channel = grpc.insecure_channel(mock_cluster.generator_addresses[0])
    yield generator_pb2_grpc.GeneratorStub(channel)
    channel.close()


@pytest.mark.parametrize("chunk_frames", [4, 51, -1])
def test_a_chunk_length_out_of_range_is_refused(stub, chunk_frames):
    call, _ = open_session(stub, f"bad-{chunk_frames}", chunk_frames)
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_frames must be in [5, 50]" in err.value.details()


def test_each_session_gets_chunks_of_its_own_length(stub):
    sessions = {frames: open_session(stub, f"frames-{frames}", frames) for frames in (0, 10)}
    try:
        for frames, (call, requests) in sessions.items():
            opened = next(call).opened
            expected_frames = frames or facts.CHUNK_FRAMES
            assert opened.chunk_seconds == pytest.approx(expected_frames * 0.04)
            for _ in range(2):
                requests.put(
                    generator_pb2.GeneratorRequest(
                        demand=generator_pb2.ChunkDemand(deadline_unix_s=time.time())
                    )
                )
            chunks = [next(call).chunk for _ in range(2)]
            assert [c.chunk_index for c in chunks] == [0, 1]
            for chunk in chunks:
                samples = expected_frames * facts.SAMPLES_PER_FRAME * facts.CHANNELS
                assert len(chunk.audio) == samples * 4
            context = np.frombuffer(chunks[1].snapshot.context_tokens, "<i4").reshape(250, 16)
            generated = 2 * expected_frames  # the context advanced by the chunk's frames, twice
            assert np.all(context[-generated:] >= 0) and np.all(context[:-generated] == -1)
    finally:
        for call, _ in sessions.values():
            call.cancel()
