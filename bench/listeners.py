"""Real listeners: gRPC streaming clients of the public API, each with a modelled player.

A `ListenerScript` says when a listener connects, how long it listens after PLAY, what it
sends meanwhile (pause, play, prompts, config) and how it hangs up. `listen` plays one script
over its own channel (its own connection, as separate listeners would have) and returns what
that listener heard. `ListenerPool` runs many scripts concurrently in one process (asyncio),
or spread over several worker processes when one client process cannot keep up; each process
reports the CPU it used, so the report can show whether the client side was the bottleneck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import time
from collections.abc import Sequence

import grpc
import psutil

from bench.player import ChunkTiming, Player
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

Action = music_pb2.PlaybackControl
BYTES_PER_SAMPLE = {music_pb2.PCM_S16LE: 2, music_pb2.PCM_F32LE: 4}
# Each listener gets its own connection, as separate clients would.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
]
_END = object()


def playback(action: int) -> music_pb2.StreamRequest:
    return music_pb2.StreamRequest(playback=music_pb2.PlaybackControl(action=action))


@dataclasses.dataclass(frozen=True)
class ScriptedRequest:
    at_s: float  # seconds after the first PLAY
    request: music_pb2.StreamRequest


@dataclasses.dataclass(frozen=True)
class ListenerScript:
    listen_s: float  # from the first PLAY until hanging up
    start_delay_s: float = 0.0  # before connecting
    requests: tuple[ScriptedRequest, ...] = ()
    stop_politely: bool = False  # STOP and half-close (the stream ends OK) instead of cancelling
    model: str = ""
    encoding: int = music_pb2.PCM_S16LE
    open_timeout_s: float = 30.0


@dataclasses.dataclass
class ListenerResult:
    outcome: str = "ok"  # ok | refused (RESOURCE_EXHAUSTED) | error
    error: str = ""  # the status code (or what went wrong) when outcome is error
    open_s: float | None = None  # setup sent -> `started` received
    time_to_first_audio_s: float | None = None  # first PLAY sent -> first chunk received
    chunks: int = 0
    underruns: int = 0
    stalled_s: float = 0.0
    lateness_s: list[float] = dataclasses.field(default_factory=list)
    warnings: int = 0  # Warning messages, and PromptStatus refusals


def chunk_seconds(chunk: music_pb2.AudioChunk, started: music_pb2.SessionStarted) -> float:
    """The audio a chunk holds, from its byte length (what the player really gets)."""
    frame_bytes = BYTES_PER_SAMPLE[started.encoding] * started.channels
    return len(chunk.data) / frame_bytes / started.sample_rate


async def listen(address: str, script: ListenerScript) -> ListenerResult:
    """Play ``script`` against the gateway at ``address``; never raises for RPC failures."""
    await asyncio.sleep(script.start_delay_s)
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        return await _ListenerRun(music_pb2_grpc.MusicGenerationStub(channel), script).run()


class _ListenerRun:
    def __init__(self, stub: music_pb2_grpc.MusicGenerationStub, script: ListenerScript):
        self.script = script
        self.loop = asyncio.get_running_loop()
        self.outgoing: asyncio.Queue[music_pb2.StreamRequest | None] = asyncio.Queue()
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.call = stub.Stream(self._requests())
        self.player = Player()
        self.result = ListenerResult()

    async def _requests(self):
        while (request := await self.outgoing.get()) is not None:
            yield request

    async def _read(self) -> None:
        """Stamp each response with its arrival time; the stream's end or error comes last."""
        try:
            async for response in self.call:
                self.incoming.put_nowait((self.loop.time(), response))
            self.incoming.put_nowait((self.loop.time(), _END))
        except grpc.aio.AioRpcError as err:
            self.incoming.put_nowait((self.loop.time(), err))

    async def _next(self, until: float):
        """The next (arrival time, response); None at the time limit or the stream's end."""
        try:
            arrived, item = await asyncio.wait_for(
                self.incoming.get(), max(0.0, until - self.loop.time())
            )
        except TimeoutError:
            return None
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return None if item is _END else (arrived, item)

    async def run(self) -> ListenerResult:
        reader = asyncio.create_task(self._read())
        sender: asyncio.Task | None = None
        try:
            self.outgoing.put_nowait(
                music_pb2.StreamRequest(
                    setup=music_pb2.SessionSetup(
                        model=self.script.model, encoding=self.script.encoding
                    )
                )
            )
            opened_at = self.loop.time()
            started = await self._expect_started(opened_at + self.script.open_timeout_s)
            if started is None:
                return self._fail("no `started` within the open timeout")
            self.result.open_s = self.loop.time() - opened_at
            play_at = self.loop.time()
            self.outgoing.put_nowait(playback(Action.PLAY))
            sender = asyncio.create_task(self._send_scripted(play_at))
            await self._receive(started, play_at, until=play_at + self.script.listen_s)
            self._record(self.player.finish(self.loop.time()))
            if self.script.stop_politely:
                await self._stop_politely()
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.result.outcome = "refused"
            else:
                self._fail(err.code().name)
        finally:
            if sender is not None:
                sender.cancel()
            self.call.cancel()  # hang up (before ending the request stream: no half-close)
            self.outgoing.put_nowait(None)
            reader.cancel()
        self.result.underruns = self.player.underruns
        self.result.stalled_s = self.player.stalled_s
        return self.result

    def _fail(self, why: str) -> ListenerResult:
        self.result.outcome, self.result.error = "error", why
        return self.result

    async def _expect_started(self, until: float) -> music_pb2.SessionStarted | None:
        while (item := await self._next(until)) is not None:
            _, response = item
            if response.WhichOneof("response") == "started":
                return response.started
        return None

    async def _receive(
        self, started: music_pb2.SessionStarted, play_at: float, until: float
    ) -> None:
        while (item := await self._next(until)) is not None:
            arrived, response = item
            kind = response.WhichOneof("response")
            if kind == "chunk":
                if self.result.time_to_first_audio_s is None:
                    self.result.time_to_first_audio_s = arrived - play_at
                self.result.chunks += 1
                self._record(self.player.receive(arrived, chunk_seconds(response.chunk, started)))
            elif kind == "warning" or (
                kind == "prompt_status" and not response.prompt_status.accepted
            ):
                self.result.warnings += 1
        if self.loop.time() < until:  # the server ended the stream early
            self._fail("stream ended early")

    def _record(self, timing: ChunkTiming | None) -> None:
        if timing is not None:
            self.result.lateness_s.append(timing.lateness_s)

    async def _send_scripted(self, play_at: float) -> None:
        for scripted in sorted(self.script.requests, key=lambda r: r.at_s):
            await asyncio.sleep(max(0.0, play_at + scripted.at_s - self.loop.time()))
            request = scripted.request
            if request.WhichOneof("request") == "playback":
                if request.playback.action in (Action.PAUSE, Action.STOP):
                    self.player.pause()
                elif request.playback.action == Action.PLAY:
                    self.player.resume()
            self.outgoing.put_nowait(request)

    async def _stop_politely(self, timeout_s: float = 10.0) -> None:
        """STOP and half-close, then read until the server ends the stream."""
        self.outgoing.put_nowait(playback(Action.STOP))
        self.outgoing.put_nowait(None)
        until = self.loop.time() + timeout_s
        while await self._next(until) is not None:
            pass
        if self.loop.time() >= until:
            self._fail("stream did not end after STOP and half-close")


@dataclasses.dataclass(frozen=True)
class ClientUsage:
    """The CPU one client process used while its listeners ran."""

    cpu_cores: float  # CPU seconds per wall second (1.0 = one core saturated)
    wall_s: float


def run_listeners(
    address: str, scripts: Sequence[ListenerScript]
) -> tuple[list[ListenerResult], ClientUsage]:
    """Run ``scripts`` concurrently in this process (blocking); also what it cost this process."""
    process = psutil.Process()
    cpu_before, wall_before = _cpu_seconds(process), time.monotonic()

    async def run_all() -> list[ListenerResult]:
        return list(await asyncio.gather(*(listen(address, s) for s in scripts)))

    results = asyncio.run(run_all())
    wall_s = time.monotonic() - wall_before
    return results, ClientUsage(
        cpu_cores=(_cpu_seconds(process) - cpu_before) / max(wall_s, 1e-9), wall_s=wall_s
    )


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class ListenerPool:
    """Runs listener scripts in this process, or split over ``processes`` worker processes.

    Workers are started once (spawned, so no gRPC state is forked) and reused by every run."""

    def __init__(self, address: str, processes: int = 1):
        self.address = address
        self.processes = processes
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if processes > 1:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn")
            )
            # Start every worker now so the first trial does not pay their start-up.
            list(self._executor.map(_occupy_worker, [0.2] * processes))

    def run(
        self, scripts: Sequence[ListenerScript]
    ) -> tuple[list[ListenerResult], list[ClientUsage]]:
        """Every script's result (in order) and each client process's CPU use."""
        if self._executor is None:
            results, usage = run_listeners(self.address, scripts)
            return results, [usage]
        shares = [list(scripts[i :: self.processes]) for i in range(self.processes)]
        futures = [self._executor.submit(run_listeners, self.address, share) for share in shares]
        outcomes = [future.result() for future in futures]
        results: list[ListenerResult | None] = [None] * len(scripts)
        for worker, (worker_results, _) in enumerate(outcomes):
            results[worker :: self.processes] = worker_results
        return results, [usage for _, usage in outcomes]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()

    def __enter__(self) -> ListenerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _occupy_worker(seconds: float) -> None:
    """A task that keeps a worker busy briefly, so each worker gets one and starts."""
    time.sleep(seconds)
