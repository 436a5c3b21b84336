"""Sessions survive a lost, a hung and a draining generator, and their audio proves it.

The `mock` engine's audio depends on the session's seed, context and chunk index, so a resumed
session sounds exactly like one that never moved only if it resumed from its last snapshot.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from bench.mock_reference import mock_session_audio
from bench.player import Player
from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, scrape, start_cluster, wait_for_open_sessions
from tests.mock_audio import assert_same_audio
from tests.streaming_client import Listener

IDLE_RELEASE_S = 2
# What a listener may hear of silence in total while its generator hangs.
MAX_SILENCE_S = 2.0
Action = music_pb2.PlaybackControl


@pytest.fixture(scope="module")
def two_generators(tmp_path_factory):
    cluster = start_cluster(
        tmp_path_factory, generators=2, env={"MRT_IDLE_RELEASE_S": str(IDLE_RELEASE_S)}
    )
    yield cluster
    cluster.stop()


def generators_holding_sessions(cluster) -> dict[int, float]:
    """Generator index -> sessions it holds, for those holding any."""
    held = {
        i: metric(scrape(g.metrics_url), "mrt_generator_active_sessions")
        for i, g in enumerate(cluster.generators)
    }
    return {i: n for i, n in held.items() if n > 0}


def seeded_listener(cluster, seed: int) -> Listener:
    return Listener(cluster.gateway_address, seed=seed, encoding=music_pb2.PCM_F32LE)


def assert_sounds_like_one_generator(listener: Listener, seed: int) -> None:
    """Contiguous, and every chunk is what one generator that never failed would have made."""
    listener.assert_continuous()
    assert_same_audio(listener.audio(), mock_session_audio(seed, len(listener.chunks)))


def silence_heard_s(listener: Listener) -> float:
    """Seconds a player would have sat with an empty buffer (playback starts at the first chunk)."""
    player = Player()
    for arrival_s, chunk in zip(listener.arrivals_s, listener.chunks):
        player.receive(arrival_s, chunk.duration_seconds)
    return player.stalled_s


def same_audio(received, expected) -> bool:
    return len(received) == len(expected) and all(
        (got == want).all() for got, want in zip(received, expected)
    )


def test_kill_9_of_the_generator_holding_a_session_loses_nothing(two_generators):
    listener = seeded_listener(two_generators, seed=11)
    holding = []
    try:
        listener.wait_for_chunks(2)
        holding = list(generators_holding_sessions(two_generators))
        assert len(holding) == 1
        victim = two_generators.generator_process(holding[0])
        victim.kill()  # SIGKILL: no drain, no goodbye
        received = len(listener.chunks)
        listener.wait_for_chunks(received + 3, timeout_s=30)
        assert_sounds_like_one_generator(listener, seed=11)
        assert listener.warnings and {w.code for w in listener.warnings} == {"SESSION_MIGRATED"}
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert metric(gateway, "mrt_gateway_sessions_migrated_total", reason="generator_lost") >= 1
    finally:
        listener.finish()
        for index in holding:
            two_generators.restart_generator(index)


def test_sigterm_to_every_generator_in_turn_loses_no_session(two_generators):
    time.sleep(2)  # the gateway sees both generators healthy again
    listeners = [seeded_listener(two_generators, seed=20 + i) for i in range(3)]
    try:
        for listener in listeners:
            listener.wait_for_chunks(2)
        for index in range(len(two_generators.generators)):
            two_generators.restart_generator(index)  # SIGTERM -> drain -> exit, then start again
            time.sleep(2)  # the restarted generator is polled healthy before the next one goes
            for listener in listeners:
                listener.wait_for_chunks(len(listener.chunks) + 1, timeout_s=30)
        for i, listener in enumerate(listeners):
            listener.wait_for_chunks(len(listener.chunks) + 2, timeout_s=30)
            assert_sounds_like_one_generator(listener, seed=20 + i)
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert metric(gateway, "mrt_gateway_sessions_migrated_total", reason="drain") >= 1
    finally:
        for listener in listeners:
            listener.finish()


def test_a_hung_generator_costs_its_listeners_no_more_than_2_s_of_silence(two_generators):
    listeners = [seeded_listener(two_generators, seed=30 + i) for i in range(4)]
    try:
        for listener in listeners:
            listener.wait_for_chunks(2)
        held = generators_holding_sessions(two_generators)
        victim_index = max(held, key=held.get)
        victim = two_generators.generator_process(victim_index)
        os.kill(victim.pid, signal.SIGSTOP)  # hung: connections stay open, nothing answers
        try:
            for listener in listeners:  # 4 chunks = 8 s of a hung generator
                listener.wait_for_chunks(len(listener.chunks) + 4, timeout_s=30)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        for listener in listeners:
            listener.wait_for_chunks(len(listener.chunks) + 2, timeout_s=30)
        # Nothing is duplicated when the hung generator wakes up: 4 sessions, 4 on generators.
        wait_for_open_sessions(two_generators, gateway=4, generators_total=4)
        for i, listener in enumerate(listeners):
            assert_sounds_like_one_generator(listener, seed=30 + i)
            assert silence_heard_s(listener) <= MAX_SILENCE_S
        # Every session on the hung generator was told (a busy machine may move others too).
        migrated = [lst for lst in listeners if lst.warnings]
        assert len(migrated) >= held[victim_index]
        assert all(w.code == "SESSION_MIGRATED" for lst in migrated for w in lst.warnings)
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert (
            metric(gateway, "mrt_gateway_sessions_migrated_total", reason="chunk_timeout")
            >= held[victim_index]
        )
    finally:
        for listener in listeners:
            listener.finish()


def test_a_prompt_update_sent_during_a_failover_is_heard(two_generators):
    listener = seeded_listener(two_generators, seed=40)
    try:
        listener.wait_for_chunks(2)
        (victim_index,) = generators_holding_sessions(two_generators)
        victim = two_generators.generator_process(victim_index)
        listener.wait_for_chunks(len(listener.chunks) + 1)  # just released: a new demand is out
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            listener.client.prompts(music_pb2.WeightedPrompt(text="sent during the failover"))
            deadline = time.time() + 30
            while not listener.warnings and time.time() < deadline:
                time.sleep(0.05)
            listener.wait_for_chunks(len(listener.chunks) + 2)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        statuses = [m for kind, m in listener.events if kind == "prompt_status"]
        assert [(s.accepted, s.version) for s in statuses] == [(True, 1)]
        after = listener.chunks_after_warning("SESSION_MIGRATED")
        assert after and [c.prompt_version for c in after] == [1] * len(after)
        listener.assert_continuous()
    finally:
        listener.finish()


def test_stop_then_play_starts_afresh_and_reset_forgets_the_context(two_generators):
    stopped, reset = (
        seeded_listener(two_generators, seed=50),
        seeded_listener(two_generators, seed=51),
    )
    try:
        for listener in (stopped, reset):
            listener.wait_for_chunks(2)
        stop_sent_at = len(stopped.chunks)
        stopped.client.playback(Action.STOP)
        stopped.client.playback(Action.PLAY)
        reset_sent_at = len(reset.chunks)
        reset.client.playback(Action.RESET_CONTEXT)
        for listener in (stopped, reset):
            listener.wait_for_chunks(len(listener.chunks) + 3)
            listener.assert_continuous()
        # STOP: what was playing, then exactly a fresh session's first chunks (the chunk it
        # took effect before is one of the next two: one may have been on its way).
        audio = stopped.audio()
        assert any(
            same_audio(
                audio,
                mock_session_audio(50, restart) + mock_session_audio(50, len(audio) - restart),
            )
            for restart in range(stop_sent_at, stop_sent_at + 3)
        ), "not a fresh restart"
        # RESET_CONTEXT: the same session, its context forgotten before one chunk.
        audio = reset.audio()
        assert not same_audio(audio, mock_session_audio(51, len(audio)))
        assert any(
            same_audio(audio, mock_session_audio(51, len(audio), reset_before=reset_at))
            for reset_at in range(reset_sent_at, reset_sent_at + 3)
        ), "not a reset"
    finally:
        stopped.finish()
        reset.finish()


def test_a_paused_session_gives_its_slot_back_and_resumes_contiguous(two_generators):
    listener = seeded_listener(two_generators, seed=60)
    try:
        listener.wait_for_chunks(2)
        listener.client.playback(Action.PAUSE)
        # After --idle-release-s the generator holds nothing; the gateway keeps the session.
        wait_for_open_sessions(
            two_generators, gateway=1, generators_total=0, timeout_s=IDLE_RELEASE_S + 15
        )
        paused_at = len(listener.chunks)
        listener.client.playback(Action.PLAY)
        listener.wait_for_chunks(paused_at + 3)
        wait_for_open_sessions(two_generators, gateway=1, generators_total=1)
        assert_sounds_like_one_generator(listener, seed=60)
        gateway = scrape(two_generators.metrics_urls["gateway"])
        assert metric(gateway, "mrt_gateway_idle_sessions_released_total") >= 1
    finally:
        listener.finish()
