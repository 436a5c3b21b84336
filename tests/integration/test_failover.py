"""Sessions survive a lost generator and a rolling restart of every generator."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import metric, scrape, start_cluster
from tests.streaming_client import Listener


@pytest.fixture(scope="module")
def two_generators(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory, generators=2)
    yield cluster
    cluster.stop()


def generator_holding_sessions(cluster) -> list[int]:
    return [i for i, g in enumerate(cluster.generators)
            if metric(scrape(g.metrics_url), "mrt_generator_active_sessions") > 0]


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
