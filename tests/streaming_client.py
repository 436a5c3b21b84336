"""A blocking test client for the public Stream RPC: send messages, receive with timeouts."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np

from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

_END = object()


class StreamClient:
    def __init__(self, address: str, *, metadata: tuple = (), channel: grpc.Channel | None = None):
        self.channel = channel or grpc.insecure_channel(address)
        self.stub = music_pb2_grpc.MusicGenerationStub(self.channel)
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.call = self.stub.Stream(self._request_iter(), metadata=metadata)
        self.received: list[tuple[float, music_pb2.StreamResponse]] = []  # (arrival time, message)
        self.error: grpc.RpcError | None = None
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _request_iter(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put((time.time(), response))
        except grpc.RpcError as err:
            self._responses.put((time.time(), err))
            return
        self._responses.put((time.time(), _END))

    # --- sending ---------------------------------------------------------------------------------
    def send(self, **fields) -> None:
        self._requests.put(music_pb2.StreamRequest(**fields))

    def setup(
        self,
        model: str = "",
        encoding: int = music_pb2.PCM_S16LE,
        opus_bitrate: int = 0,
        chunk_frames: int = 0,
    ) -> music_pb2.SessionStarted:
        self.send(
            setup=music_pb2.SessionSetup(
                model=model, encoding=encoding, opus_bitrate=opus_bitrate, chunk_frames=chunk_frames
            )
        )
        return self.expect("started").started

    def prompts(self, *prompts: music_pb2.WeightedPrompt) -> None:
        self.send(prompts=music_pb2.PromptUpdate(prompts=list(prompts)))

    def playback(self, action: int) -> None:
        self.send(playback=music_pb2.PlaybackControl(action=action))

    def half_close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(None)

    # --- receiving -------------------------------------------------------------------------------
    def recv(self, timeout_s: float = 30.0) -> music_pb2.StreamResponse | None:
        """The next message; None when the stream ended OK; raises the RpcError it ended with."""
        try:
            arrived, item = self._responses.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"nothing received within {timeout_s} s") from None
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, grpc.RpcError):
            self.error = item
            raise item
        self.received.append((arrived, item))
        return item

    def expect(self, kind: str, timeout_s: float = 30.0) -> music_pb2.StreamResponse:
        """Skip other message kinds until one of ``kind`` arrives."""
        deadline = time.time() + timeout_s
        while True:
            message = self.recv(max(0.01, deadline - time.time()))
            if message is None:
                raise AssertionError(f"stream ended while waiting for {kind}")
            if message.WhichOneof("response") == kind:
                return message

    def chunks(
        self, count: int, timeout_s: float = 30.0
    ) -> list[tuple[float, music_pb2.AudioChunk]]:
        out = []
        for _ in range(count):
            self.expect("chunk", timeout_s)
            out.append((self.received[-1][0], self.received[-1][1].chunk))
        return out

    def status(self, timeout_s: float = 30.0) -> grpc.StatusCode:
        """Read until the stream ends; its final status code."""
        try:
            while self.recv(timeout_s) is not None:
                pass
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    def close(self) -> None:
        self.cancel()
        self.channel.close()


def chunk_audio(chunk: music_pb2.AudioChunk, encoding: int = music_pb2.PCM_S16LE) -> np.ndarray:
    """float32[frames, 2] from a chunk's bytes."""
    if encoding == music_pb2.PCM_F32LE:
        return np.frombuffer(chunk.data, "<f4").reshape(-1, 2)
    return np.frombuffer(chunk.data, "<i2").reshape(-1, 2).astype(np.float32) / 32767.0


class Listener:
    """Streams in the background and keeps every message, in order, with its arrival time.

    ``prompt`` None streams unconditioned; ``seed`` fixes the session's seed (so its audio can
    be predicted); ``encoding`` PCM_F32LE gives the generator's samples exactly."""

    def __init__(
        self,
        address: str,
        prompt: str | None = None,
        *,
        seed: int | None = None,
        encoding: int = music_pb2.PCM_S16LE,
    ):
        self.encoding = encoding
        self.client = StreamClient(address)
        self.started = self.client.setup(encoding=encoding)
        if seed is not None:
            self.client.send(config=music_pb2.GenerationConfig(seed=seed))
        if prompt is not None:
            self.client.prompts(music_pb2.WeightedPrompt(text=prompt))
        self.client.playback(music_pb2.PlaybackControl.PLAY)
        self.chunks: list[music_pb2.AudioChunk] = []
        self.arrivals_s: list[float] = []  # when each chunk arrived (time.time())
        self.warnings: list[music_pb2.Warning] = []
        self.events: list[tuple[str, object]] = []  # ("chunk" | "warning" | "prompt_status", msg)
        self.failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self.client.recv(timeout_s=15)
                kind = message.WhichOneof("response") if message else None
                if kind == "chunk":
                    self.arrivals_s.append(self.client.received[-1][0])
                    self.chunks.append(message.chunk)
                elif kind == "warning":
                    self.warnings.append(message.warning)
                if kind is not None:
                    self.events.append((kind, getattr(message, kind)))
        except Exception as err:  # asserted on by the tests
            if not self._stop.is_set():
                self.failure = err

    def wait_for_chunks(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.time() + timeout_s
        while len(self.chunks) < count and self.failure is None:
            if time.time() > deadline:
                raise AssertionError(f"only {len(self.chunks)} of {count} chunks")
            time.sleep(0.05)
        assert self.failure is None, self.failure

    def finish(self) -> None:
        self._stop.set()
        self.client.close()
        self._thread.join(timeout=20)

    def audio(self) -> list[np.ndarray]:
        """Each chunk's samples, float32[frames, 2]."""
        return [chunk_audio(c, self.encoding) for c in self.chunks]

    def chunks_after_warning(self, code: str) -> list[music_pb2.AudioChunk]:
        """The chunks that arrived after the first warning with ``code``."""
        kinds = [(kind, message) for kind, message in self.events]
        first = next(i for i, (kind, m) in enumerate(kinds) if kind == "warning" and m.code == code)
        return [m for kind, m in kinds[first:] if kind == "chunk"]

    def assert_continuous(self) -> None:
        assert self.failure is None, self.failure
        assert [c.sequence for c in self.chunks] == list(range(len(self.chunks)))
        assert [c.start_seconds for c in self.chunks] == [2.0 * i for i in range(len(self.chunks))]
