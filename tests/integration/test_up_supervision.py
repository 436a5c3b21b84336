"""`mrt up` as a user runs it keeps the music playing when a generator is killed: the sessions
move to the other generator, and `mrt up` restarts the killed one, which takes new sessions."""

from __future__ import annotations

import os
import signal
import time

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.mock_reference import mock_session_audio
from services.cli.launcher import ClusterConfig
from services.common.proto.mrt.v1 import music_pb2
from tests.integration.conftest import metric, run_mrt_up, scrape
from tests.mock_audio import assert_same_audio
from tests.streaming_client import Listener


def _generator_pid(up: psutil.Process, port: int) -> int | None:
    for child in up.children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if (
            "services.generator" in argv
            and str(port) in argv
            and child.is_running()
            and child.status() != psutil.STATUS_ZOMBIE
        ):
            return child.pid
    return None


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_mrt_up_restarts_a_killed_generator_while_its_sessions_play_on(tmp_path, tmp_path_factory):
    ports = ClusterConfig(generators=2).with_free_ports()
    up, output = run_mrt_up(
        ports,
        "--generators",
        "2",
        "--model",
        "mock",
        "--embedder-model",
        "mock",
        "--log-dir",
        str(tmp_path / "logs"),
        # The same capacity on both generators: a new session goes to the one with fewer.
        env=dict(
            os.environ,
            MRT_ASSETS_DIR=str(tmp_path_factory.getbasetemp() / "assets"),
            MRT_CAPACITY_SESSIONS="8",
        ),
    )
    gateway = f"127.0.0.1:{ports.gateway_port}"
    metrics = [f"http://127.0.0.1:{ports.generator_metrics_port + i}/metrics" for i in range(2)]
    listeners: list[Listener] = []
    children = psutil.Process(up.pid).children(recursive=True)
    try:
        assert any("mrt cluster ready" in line for line in output), "".join(output)
        listeners = [Listener(gateway, seed=70 + i, encoding=music_pb2.PCM_F32LE) for i in range(4)]
        for listener in listeners:
            listener.wait_for_chunks(2)
        held = [metric(scrape(url), "mrt_generator_active_sessions") for url in metrics]
        victim = held.index(max(held))
        victim_port = ports.generator_port + victim
        first_pid = _generator_pid(psutil.Process(up.pid), victim_port)
        os.kill(first_pid, signal.SIGKILL)

        for listener in listeners:  # every session plays on, on the other generator
            listener.wait_for_chunks(len(listener.chunks) + 3)
        for i, listener in enumerate(listeners):
            listener.assert_continuous()
            assert_same_audio(listener.audio(), mock_session_audio(70 + i, len(listener.chunks)))
        assert sum(1 for lst in listeners if lst.warnings) >= held[victim]
        assert all(w.code == "SESSION_MIGRATED" for lst in listeners for w in lst.warnings)

        # mrt up restarted the killed generator; it takes the next session.
        _wait_for(
            lambda: _generator_pid(psutil.Process(up.pid), victim_port) not in (None, first_pid),
            "the killed generator to be restarted",
        )
        _wait_for(lambda: _serving(f"127.0.0.1:{victim_port}"), "the restarted generator to serve")
        _wait_for(
            lambda: (
                metric(
                    scrape(f"http://127.0.0.1:{ports.gateway_metrics_port}/metrics"),
                    "mrt_gateway_generators",
                    state="healthy",
                )
                == 2
            ),
            "the gateway to see the restarted generator",
        )
        newcomer = Listener(gateway, seed=80)
        listeners.append(newcomer)
        newcomer.wait_for_chunks(2)
        assert metric(scrape(metrics[victim]), "mrt_generator_active_sessions") == 1
        children = psutil.Process(up.pid).children(recursive=True)
    finally:
        for listener in listeners:
            listener.finish()
        up.send_signal(signal.SIGINT)  # Ctrl-C stops everything cleanly
        assert up.wait(timeout=60) == 0
    rest = up.stdout.read()
    name = f"generator-{victim}"
    assert f"mrt up: {name} exited unexpectedly with signal SIGKILL; restarting it in 1 s" in rest
    assert f"mrt up: {name} is serving again" in rest
    assert "mrt up: stopping" in rest
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
