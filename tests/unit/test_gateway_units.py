"""Gateway pieces that need no running services: prompts, config, encoding, placement."""

import asyncio
import math
import time
import types

import grpc
import numpy as np
import pytest

from services.common.proto.mrt.v1 import generator_pb2, music_pb2
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.common.snapshots import snapshot_to_state, state_to_snapshot
from services.gateway.generation_config import merge_config
from services.gateway.generator_pool import GeneratorPool, NoCapacity, NoGenerator
from services.gateway.prompts import PromptError, PromptLimits, mix_embeddings, resolve_prompts


class FakeEmbedder:
    def __init__(self):
        self.requests = []

    async def embed(self, request):
        self.requests.append(request)
        value = float(len(request.text or request.audio))
        return np.full(768, value, np.float32)


def text(t, weight=None):
    prompt = music_pb2.WeightedPrompt(text=t)
    if weight is not None:
        prompt.weight = weight
    return prompt


def test_mix_is_the_weighted_mean_and_zero_weights_are_ignored():
    e1, e2 = np.ones(768, np.float32), np.full(768, 3.0, np.float32)
    np.testing.assert_allclose(mix_embeddings([e1, e2], [0.75, 0.25]), np.full(768, 1.5))
    assert mix_embeddings([e1], [0.0]) is None
    assert mix_embeddings([], []) is None


def test_resolve_prompts_mixes_text_and_embedding_and_skips_weight_zero():
    embedder = FakeEmbedder()
    prompts = [
        text("ab", 1.0),
        text("ignored", 0.0),
        music_pb2.WeightedPrompt(embedding=music_pb2.Embedding(values=[5.0] * 768), weight=3.0),
    ]
    mixed = asyncio.run(resolve_prompts(prompts, embedder, PromptLimits()))
    np.testing.assert_allclose(mixed, np.full(768, (2.0 * 1 + 5.0 * 3) / 4))
    assert [r.text for r in embedder.requests] == ["ab"]  # weight 0 never reaches the embedder


def test_unset_weight_means_one():
    mixed = asyncio.run(resolve_prompts([text("abcd")], FakeEmbedder(), PromptLimits()))
    np.testing.assert_allclose(mixed, np.full(768, 4.0))


@pytest.mark.parametrize(
    "prompt, needle",
    [
        (text("x", -1.0), "weight"),
        (text("x", math.nan), "weight"),
        (text("x", math.inf), "weight"),
        (music_pb2.WeightedPrompt(embedding=music_pb2.Embedding(values=[0.0] * 767)), "768"),
        (
            music_pb2.WeightedPrompt(embedding=music_pb2.Embedding(values=[math.nan] * 768)),
            "finite",
        ),
        (text("y" * 513), "limit is 512"),
        (text("   "), "empty"),
        (music_pb2.WeightedPrompt(audio=b""), "audio is empty"),
        (music_pb2.WeightedPrompt(audio=b"x" * 11), "limit is 10"),
        (music_pb2.WeightedPrompt(weight=1.0), "set one of"),
    ],
)
def test_invalid_prompts_are_refused_with_a_reason_naming_the_prompt(prompt, needle):
    embedder = FakeEmbedder()
    with pytest.raises(PromptError) as err:
        asyncio.run(
            resolve_prompts([text("fine"), prompt], embedder, PromptLimits(max_audio_bytes=10))
        )
    assert err.value.errors[0].startswith("prompts[1]: ")
    assert needle in err.value.errors[0]
    assert embedder.requests == []  # nothing resolved when any prompt is bad


def test_config_updates_merge_and_out_of_range_values_are_refused():
    settings = SamplingSettings(seed=3)
    merged = merge_config(settings, music_pb2.GenerationConfig(temperature=0.5, top_k=0))
    assert (merged.temperature, merged.top_k, merged.guidance, merged.seed) == (0.5, 0, 5.0, 3)
    for bad in [
        music_pb2.GenerationConfig(top_k=1025),
        music_pb2.GenerationConfig(top_k=-1),
        music_pb2.GenerationConfig(temperature=4.5),
        music_pb2.GenerationConfig(temperature=math.nan),
        music_pb2.GenerationConfig(guidance=-0.1),
        music_pb2.GenerationConfig(guidance=11),
    ]:
        with pytest.raises(ValueError):
            merge_config(settings, bad)
    assert settings.temperature == pytest.approx(1.1)  # the original is untouched


def test_snapshots_round_trip_and_bad_ones_are_refused():
    state = SessionState.fresh()
    state.context_tokens[-50:] = 7
    state.crossfade_tail[:] = 0.25
    state.chunk_index = 9
    back = snapshot_to_state(state_to_snapshot(state))
    np.testing.assert_array_equal(back.context_tokens, state.context_tokens)
    np.testing.assert_array_equal(back.crossfade_tail, state.crossfade_tail)
    assert back.chunk_index == 9
    snapshot = state_to_snapshot(state)
    assert len(snapshot.SerializeToString()) < 32_000
    with pytest.raises(ValueError):
        snapshot_to_state(generator_pb2.SessionSnapshot(context_tokens=b"123"))
    bad = state_to_snapshot(state)
    bad.context_tokens = np.full((250, 16), 5000, "<i4").tobytes()
    with pytest.raises(ValueError, match="codes"):
        snapshot_to_state(bad)


class FakeStub:
    def __init__(self, loads, address):
        self.loads, self.address = loads, address

    async def GetLoad(self, request, timeout):
        load = self.loads.get(self.address)
        if load is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "down")
        return load


def make_pool(loads, targets, resolver=None):
    pool = GeneratorPool(
        targets,
        poll_interval_s=1,
        rpc_timeout_s=1,
        max_message_bytes=1 << 20,
        **({"resolver": resolver} if resolver else {}),
    )

    def connect(address):
        from services.gateway.generator_pool import GeneratorEndpoint

        return GeneratorEndpoint(address, channel=_NullChannel(), stub=FakeStub(loads, address))

    pool._connect = connect
    return pool


class _NullChannel:
    async def close(self):
        pass


def load(free, active=0, model="tiny", draining=False):
    return generator_pb2.LoadReport(
        model=model,
        free_slots=free,
        active_sessions=active,
        capacity_sessions=free + active,
        draining=draining,
    )


def test_placement_prefers_the_generator_with_most_headroom_and_counts_placements():
    loads = {"a:1": load(2, 3), "b:1": load(3, 1), "c:1": load(9, model="mock")}
    pool = make_pool(loads, ["a:1", "b:1", "c:1"])
    asyncio.run(pool.refresh())
    first = pool.candidates("tiny")[0]
    assert first.address == "b:1"
    pool.placed(first)
    pool.placed(first)  # b now has 1 free slot left, a has 2
    assert pool.candidates("tiny")[0].address == "a:1"


def test_placement_errors_distinguish_full_from_absent():
    loads = {"a:1": load(0, 4), "b:1": load(5, draining=True)}
    pool = make_pool(loads, ["a:1", "b:1", "down:1"])
    asyncio.run(pool.refresh())
    with pytest.raises(NoCapacity):
        pool.candidates("tiny")
    with pytest.raises(NoGenerator):
        pool.candidates("large")


def test_dns_targets_follow_addresses_coming_and_going():
    answers = [["10.0.0.1:50053", "10.0.0.2:50053"], ["10.0.0.2:50053", "10.0.0.3:50053"]]
    loads = {a: load(4) for a in ["10.0.0.1:50053", "10.0.0.2:50053", "10.0.0.3:50053"]}
    resolved = []

    async def resolver(host, port):
        resolved.append((host, port))
        return answers[min(len(resolved) - 1, 1)]

    pool = make_pool(loads, ["dns:///generator-headless.mrt.svc:50053"], resolver)
    asyncio.run(pool.refresh())
    assert sorted(pool.endpoints) == ["10.0.0.1:50053", "10.0.0.2:50053"]
    asyncio.run(pool.refresh())
    assert sorted(pool.endpoints) == ["10.0.0.2:50053", "10.0.0.3:50053"]
    assert resolved[0] == ("generator-headless.mrt.svc", 50053)


class RecordingLink:
    """Stands in for a generator link: records the requests sent to the generator."""

    def __init__(self):
        self.sent: list[generator_pb2.GeneratorRequest] = []
        self.endpoint = types.SimpleNamespace(address="generator-0", leaving=False)

    async def send(self, request):
        self.sent.append(request)


def test_a_session_keeps_three_chunks_demanded_or_in_hand_each_due_at_its_release():
    from services.gateway.audio_encoding import PcmEncoder
    from services.gateway.listener import CHUNKS_AHEAD, ListenerSession, SessionSettings

    async def scenario():
        settings = SessionSettings(
            buffer_ahead_seconds=2.0,
            open_timeout_s=1.0,
            slow_client_timeout_s=1.0,
            prompt_limits=PromptLimits(),
        )
        session = ListenerSession(
            session_id="s",
            model="sim",
            encoder=PcmEncoder(music_pb2.PCM_S16LE),
            settings=settings,
            pool=None,
            embedder=FakeEmbedder(),
            seed=0,
        )
        link = session.link = RecordingLink()
        session.playing = True
        before = time.time()
        await session._step()
        deadlines = [r.demand.deadline_unix_s for r in link.sent]
        assert len(deadlines) == CHUNKS_AHEAD == 3
        # Not playing yet: as if the first chunk were needed now, 2 s of buffer ahead.
        assert deadlines[0] == pytest.approx(before - 2.0, abs=0.5)
        assert np.diff(deadlines) == pytest.approx([2.0, 2.0], abs=0.05)
        await session._step()
        assert len(link.sent) == 3  # nothing more until a chunk arrives
        audio = np.zeros((96000, 2), "<f4").tobytes()
        session.received.append(generator_pb2.GeneratedChunk(chunk_index=0, audio=audio))
        session._received_demanded_chunk()
        await session._step()  # the chunk is released at once (it starts playback)
        assert session.outbound.get_nowait().chunk.sequence == 0
        assert len(link.sent) == 4
        anchor_wall, _ = session.anchor
        assert link.sent[3].demand.deadline_unix_s == pytest.approx(anchor_wall + 6.0 - 2.0)

    asyncio.run(scenario())
