"""A session moving between generators, with stand-in generator streams (no processes): audio
already received keeps flowing during the move, updates sent during it reach the new
generator before its first demand, and generators leaving DNS are drained, not cut."""

import asyncio

import grpc
import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import generator_pb2, music_pb2
from services.gateway.audio_encoding import PcmEncoder
from services.gateway.generator_link import LinkError
from services.gateway.generator_pool import (
    MISSED_DEADLINES_UNHEALTHY,
    GeneratorEndpoint,
    GeneratorPool,
)
from services.gateway.listener import ListenerSession, SessionSettings
from services.gateway.prompts import PromptLimits

CHUNK_FRAMES = 4800  # 0.1 s chunks keep the listener's timeline short
WAIT_S = 5.0  # bound on any wait for something that should happen at once


class FakeEmbedder:
    async def embed(self, request):
        return np.full(768, 0.5, np.float32)


class FakeLink:
    """A generator's session stream: answers each demand with a chunk at once; fails after
    ``fail_after`` chunks; its open waits for ``gate``."""

    def __init__(
        self,
        endpoint,
        gate: asyncio.Event,
        fail_after: int | None,
        fixed_chunk_frames: int | None = None,
    ):
        self.endpoint, self.gate, self.fail_after = endpoint, gate, fail_after
        # A generator that predates chunk_frames: always this length, whatever was asked.
        self.fixed_chunk_frames = fixed_chunk_frames
        endpoint.links += 1
        self.opened_with: generator_pb2.OpenSession | None = None
        self.sent: list[generator_pb2.GeneratorRequest] = []
        self.ready: asyncio.Queue = asyncio.Queue()
        self.delivered = 0
        self.closed = False
        self.next_index = 0
        self.style_version = 0

    async def open(self, request, timeout_s):
        self.opened_with = request
        self.style_version = request.style.version
        self.next_index = request.resume_from.chunk_index
        await self.gate.wait()
        frames = self.fixed_chunk_frames or request.chunk_frames or facts.CHUNK_FRAMES
        return generator_pb2.SessionOpened(
            session_id=request.session_id, chunk_seconds=frames / facts.FRAME_RATE_HZ
        )

    async def send(self, request):
        self.sent.append(request)
        kind = request.WhichOneof("request")
        if kind == "style":
            self.style_version = request.style.version
        elif kind == "demand":
            self.ready.put_nowait(
                generator_pb2.GeneratedChunk(
                    chunk_index=self.next_index,
                    audio=np.zeros((CHUNK_FRAMES, 2), "<f4").tobytes(),
                    snapshot=generator_pb2.SessionSnapshot(chunk_index=self.next_index + 1),
                    style_version=self.style_version,
                )
            )
            self.next_index += 1
            await asyncio.sleep(0.01)  # the chunk may well arrive before the send returns

    async def read_chunk(self):
        if self.delivered == self.fail_after:
            raise LinkError(grpc.StatusCode.UNAVAILABLE, "connection reset")
        chunk = await self.ready.get()
        self.delivered += 1
        return chunk

    def close(self):
        if not self.closed:
            self.closed = True
            self.endpoint.links -= 1

    def kinds(self) -> list[str]:
        return [r.WhichOneof("request") for r in self.sent]


class Generators:
    """Two stand-in generators, a and b; records the links opened on each."""

    def __init__(
        self,
        fail_after: dict[str, int] | None = None,
        fixed_chunk_frames: dict[str, int] | None = None,
    ):
        self.pool = GeneratorPool([], poll_interval_s=1, rpc_timeout_s=1, max_message_bytes=1 << 20)
        self.gates = {}
        self.links: dict[str, list[FakeLink]] = {}
        self.fail_after = fail_after or {}
        self.fixed_chunk_frames = fixed_chunk_frames or {}
        for address, free in (("a:1", 9), ("b:1", 5)):  # a first: it has more room
            self.pool.endpoints[address] = GeneratorEndpoint(
                address,
                channel=None,
                stub=None,
                healthy=True,
                load=generator_pb2.LoadReport(model="mock", free_slots=free),
            )
            self.gates[address] = asyncio.Event()
            self.gates[address].set()
            self.links[address] = []

    def open_link(self, endpoint):
        link = FakeLink(
            endpoint,
            self.gates[endpoint.address],
            self.fail_after.get(endpoint.address),
            self.fixed_chunk_frames.get(endpoint.address),
        )
        self.links[endpoint.address].append(link)
        return link


def make_session(generators: Generators, chunk_frames: int = facts.CHUNK_FRAMES) -> ListenerSession:
    settings = SessionSettings(
        buffer_ahead_seconds=0.0,
        open_timeout_s=WAIT_S,
        slow_client_timeout_s=WAIT_S,
        prompt_limits=PromptLimits(),
        chunk_timeout_s=WAIT_S,
        reconnect_interval_s=0.05,
    )
    return ListenerSession(
        session_id="s",
        model="mock",
        encoder=PcmEncoder(music_pb2.PCM_F32LE),
        settings=settings,
        pool=generators.pool,
        embedder=FakeEmbedder(),
        seed=1,
        chunk_frames=chunk_frames,
        open_link=generators.open_link,
    )


async def next_message(session: ListenerSession) -> music_pb2.StreamResponse:
    return await asyncio.wait_for(session.outbound.get(), WAIT_S)


async def until(condition) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT_S)


def test_audio_received_keeps_flowing_while_the_session_moves_and_updates_reach_the_new_generator():
    async def scenario():
        generators = Generators(fail_after={"a:1": 3})
        generators.gates["b:1"].clear()  # b opens the session only when the test says so
        session = make_session(generators)
        await session.connect()
        await session.handle(
            music_pb2.StreamRequest(
                playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
            )
        )
        pump = asyncio.create_task(session.pump())
        try:
            # a delivered chunks 0..2 and failed; b is still opening the session.
            await until(lambda: generators.links["b:1"])
            sequences = []
            while len(sequences) < 3:  # all three are released, on their timeline
                message = await next_message(session)
                if message.WhichOneof("response") == "chunk":
                    sequences.append(message.chunk.sequence)
            assert sequences == [0, 1, 2] and not generators.gates["b:1"].is_set()
            # Updates while b opens: a prompt, a config and a reset.
            await session.handle(
                music_pb2.StreamRequest(
                    prompts=music_pb2.PromptUpdate(
                        prompts=[music_pb2.WeightedPrompt(text="during the move")]
                    )
                )
            )
            await session.handle(
                music_pb2.StreamRequest(config=music_pb2.GenerationConfig(temperature=0.5))
            )
            await session.handle(
                music_pb2.StreamRequest(
                    playback=music_pb2.PlaybackControl(
                        action=music_pb2.PlaybackControl.RESET_CONTEXT
                    )
                )
            )
            generators.gates["b:1"].set()
            kinds = []
            while len(kinds) < 4:
                message = await next_message(session)
                kinds.append(message.WhichOneof("response"))
                if kinds[-1] == "warning":
                    assert message.warning.code == "SESSION_MIGRATED"
                elif kinds[-1] == "chunk":
                    assert message.chunk.sequence == 3 + kinds.count("chunk") - 1
                    assert message.chunk.prompt_version == 1
            assert kinds[:2] == ["prompt_status", "warning"]
            (b,) = generators.links["b:1"]
            assert b.opened_with.resume_from.chunk_index == 3  # from a's last snapshot
            assert b.opened_with.style.version == 0
            assert b.kinds()[:4] == ["style", "sampling", "reset", "demand"]
            assert b.sent[0].style.version == 1 and b.sent[1].sampling.version == 1
            assert generators.links["a:1"][0].closed
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_a_moved_session_keeps_its_chunk_length():
    async def scenario():
        generators = Generators(fail_after={"a:1": 2})
        session = make_session(generators, chunk_frames=10)
        await session.connect()
        await session.handle(
            music_pb2.StreamRequest(
                playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
            )
        )
        pump = asyncio.create_task(session.pump())
        try:
            await until(lambda: generators.links["b:1"])  # a failed after 2 chunks
            (a,), (b,) = generators.links["a:1"], generators.links["b:1"]
            assert a.opened_with.chunk_frames == b.opened_with.chunk_frames == 10
            assert b.opened_with.resume_from.chunk_index == 2
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_a_generator_making_another_chunk_length_is_passed_over_but_stays_healthy():
    async def scenario():
        # a predates chunk_frames: it would make 2 s chunks for a session that asked for 0.4 s.
        generators = Generators(fixed_chunk_frames={"a:1": facts.CHUNK_FRAMES})
        session = make_session(generators, chunk_frames=10)
        await session.connect()
        try:
            assert session.link.endpoint.address == "b:1"
            assert generators.links["a:1"][0].closed
            assert generators.pool.endpoints["a:1"].healthy  # fine for 2 s sessions
        finally:
            await session.close()

    asyncio.run(scenario())


def test_a_generator_leaving_dns_is_drained_at_a_chunk_boundary_and_closed_once_unused():
    async def scenario():
        generators = Generators()
        closed = []

        class Channel:
            async def close(self):
                closed.append(True)

        generators.pool.endpoints["a:1"].channel = Channel()
        session = make_session(generators)
        await session.connect()
        await session.handle(
            music_pb2.StreamRequest(
                playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
            )
        )
        pump = asyncio.create_task(session.pump())
        try:
            assert (await next_message(session)).chunk.sequence == 0
            a = generators.pool.endpoints["a:1"]
            a.leaving = True  # what a refresh does when a left the DNS answer
            await generators.pool._close_unused_leaving()
            assert not closed  # the session still streams from a
            kinds = []
            while "warning" not in kinds or kinds[-1] != "chunk":
                kinds.append((await next_message(session)).WhichOneof("response"))
            (b,) = generators.links["b:1"]
            assert generators.links["a:1"][0].closed and a.links == 0
            assert b.opened_with.HasField("resume_from")
            await generators.pool._close_unused_leaving()
            assert closed == [True] and "a:1" not in generators.pool.endpoints
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_a_generator_missing_deadlines_takes_no_sessions_until_it_answers_again():
    pool = Generators().pool
    a = pool.endpoints["a:1"]
    for _ in range(MISSED_DEADLINES_UNHEALTHY - 1):
        pool.missed_deadline(a)
    assert [e.address for e in pool.candidates("mock")] == ["a:1", "b:1"]
    pool.missed_deadline(a)
    assert [e.address for e in pool.candidates("mock")] == ["b:1"]
    pool.delivered(a)
    assert a.missed_deadlines == 0


@pytest.mark.parametrize("released", [True, False])
def test_an_idle_session_gives_its_slot_back_and_play_resumes_from_its_snapshot(released):
    async def scenario():
        generators = Generators()
        session = make_session(generators)
        session.settings = SessionSettings(
            **{**session.settings.__dict__, "idle_release_s": 0.05 if released else WAIT_S}
        )
        await session.connect()
        Action = music_pb2.PlaybackControl
        await session.handle(music_pb2.StreamRequest(playback=Action(action=Action.PLAY)))
        pump = asyncio.create_task(session.pump())
        try:
            assert (await next_message(session)).chunk.sequence == 0
            await session.handle(music_pb2.StreamRequest(playback=Action(action=Action.PAUSE)))
            (a,) = generators.links["a:1"]
            if released:
                await until(lambda: a.closed)
            await session.handle(music_pb2.StreamRequest(playback=Action(action=Action.PLAY)))
            sequences = [(await next_message(session)).chunk.sequence for _ in range(3)]
            assert sequences == [1, 2, 3]
            links = [link for group in generators.links.values() for link in group]
            assert len(links) == (2 if released else 1)
            if released:  # placed again, resumed after the chunks already received
                assert links[1].opened_with.resume_from.chunk_index >= 2
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_a_session_never_played_gives_its_slot_back_and_play_places_it_afresh():
    async def scenario():
        generators = Generators()
        session = make_session(generators)
        session.settings = SessionSettings(**{**session.settings.__dict__, "idle_release_s": 0.05})
        await session.connect()
        pump = asyncio.create_task(session.pump())
        try:
            (first,) = generators.links["a:1"]
            await until(lambda: first.closed)
            Action = music_pb2.PlaybackControl
            await session.handle(music_pb2.StreamRequest(playback=Action(action=Action.PLAY)))
            assert (await next_message(session)).chunk.sequence == 0
            second = generators.links["a:1"][1]
            assert not second.opened_with.HasField("resume_from") and first.kinds() == []
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_a_chunk_that_arrives_before_its_demand_is_sent_does_not_stall_the_session():
    async def scenario():
        generators = Generators()
        session = make_session(generators)
        await session.connect()
        await session.handle(
            music_pb2.StreamRequest(
                playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
            )
        )
        pump = asyncio.create_task(session.pump())
        try:
            sequences = [(await next_message(session)).chunk.sequence for _ in range(5)]
            assert sequences == [0, 1, 2, 3, 4]
            assert generators.links["b:1"] == []  # no move: a:1 was never late
        finally:
            pump.cancel()
            await session.close()

    asyncio.run(scenario())


def test_live_input_is_refused_with_a_warning_in_a_session_of_short_chunks():
    async def scenario():
        session = make_session(Generators(), chunk_frames=10)
        session.audio_input_supported = True  # a model that takes audio input
        await session.handle(
            music_pb2.StreamRequest(
                audio_input=music_pb2.AudioInput(
                    data=np.zeros(4800, "<i2").tobytes(),
                    encoding=music_pb2.PCM_S16LE,
                    sample_rate=48000,
                    channels=1,
                )
            )
        )
        warning = (await next_message(session)).warning
        assert warning.code == "UNSUPPORTED"
        assert "needs 50-frame chunks; this session has 10" in warning.message
        assert session.injector is None  # nothing will be mixed into its context
        await session.close()

    asyncio.run(scenario())
