"""Sessions survive a lost generator and a rolling restart of every generator."""

from __future__ import annotations

import threading
import time

import pytest

from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import StreamClient

PLAY = music_pb2.PlaybackControl.PLAY


@pytest.fixture(scope="module")
def two_generators(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, generators=2)
    yield cluster
    cluster.stop()


def generator_holding_sessions(cluster) -> list[int]:
    return [i for i, g in enumerate(cluster.generators)
            if metric(scrape(g.metrics_url), "mrt_generator_active_sessions") > 0]


class Listener:
    """Streams in the background and keeps every message."""

    def __init__(self, address: str, prompt: str):
        self.client = StreamClient(address)
        self.client.setup()
        self.client.prompts(music_pb2.WeightedPrompt(text=prompt))
        self.client.playback(PLAY)
        self.chunks: list[music_pb2.AudioChunk] = []
        self.warnings: list[music_pb2.Warning] = []
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
                    self.chunks.append(message.chunk)
                elif kind == "warning":
                    self.warnings.append(message.warning)
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

    def assert_continuous(self) -> None:
        assert self.failure is None, self.failure
        assert [c.sequence for c in self.chunks] == list(range(len(self.chunks)))
        assert [c.start_seconds for c in self.chunks] == [2.0 * i for i in range(len(self.chunks))]


def test_kill_9_of_the_generator_holding_a_session_loses_nothing(two_generators):
    listener = Listener(two_generators.gateway_address, "failover funk")
    try:
        listener.wait_for_chunks(2)
        holding = generator_holding_sessions(two_generators)
        assert len(holding) == 1
        victim = two_generators.generator_process(holding[0])
        victim.kill()  # SIGKILL: no drain, no goodbye
        received = len(listener.chunks)
        listener.wait_for_chunks(received + 3, timeout_s=30)
        listener.assert_continuous()
        assert any(w.code == "SESSION_MIGRATED" for w in listener.warnings)
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert metric(gateway, "mrt_gateway_sessions_migrated_total", reason="generator_lost") >= 1
    finally:
        listener.finish()
        two_generators.restart_generator(holding[0])


def test_sigterm_to_every_generator_in_turn_loses_no_session(two_generators):
    time.sleep(2)  # the gateway sees both generators healthy again
    listeners = [Listener(two_generators.gateway_address, f"rolling {i}") for i in range(3)]
    try:
        for listener in listeners:
            listener.wait_for_chunks(2)
        for index in range(len(two_generators.generators)):
            two_generators.restart_generator(index)  # SIGTERM -> drain -> exit, then start again
            time.sleep(2)  # the restarted generator is polled healthy before the next one goes
            for listener in listeners:
                listener.wait_for_chunks(len(listener.chunks) + 1, timeout_s=30)
        for listener in listeners:
            listener.wait_for_chunks(len(listener.chunks) + 2, timeout_s=30)
            listener.assert_continuous()
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert metric(gateway, "mrt_gateway_sessions_migrated_total", reason="drain") >= 1
    finally:
        for listener in listeners:
            listener.finish()
