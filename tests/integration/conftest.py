"""Real service processes on loopback, shared by the integration tests."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.cli.launcher import Cluster, ClusterConfig


def start_cluster(tmp_path_factory, env: dict[str, str] | None = None, **overrides) -> Cluster:
    """A cluster of `mock` services; ``env`` (e.g. ``MRT_*`` flags) is set for its processes."""
    config = ClusterConfig(
        model="mock",
        embedder_model="mock",
        log_dir=tmp_path_factory.mktemp("logs"),
        assets_dir=str(tmp_path_factory.getbasetemp() / "assets"),
        ready_timeout_s=240,
    )
    config = dataclasses.replace(config, **overrides).with_free_ports()
    cluster = Cluster(config)
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        cluster.__enter__()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return cluster


@pytest.fixture(scope="module")
def mock_cluster(tmp_path_factory):
    """Embedder, one generator and the gateway serving the `mock` models."""
    cluster = start_cluster(tmp_path_factory)
    yield cluster
    cluster.stop()


def scrape(url: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments dropped)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def open_sessions(cluster: Cluster) -> tuple[float, list[float]]:
    """Sessions open now: on the gateway, and on each generator."""
    gateway = metric(scrape(cluster.metrics_urls["gateway"]), "mrt_gateway_active_sessions")
    return gateway, [
        metric(scrape(g.metrics_url), "mrt_generator_active_sessions") for g in cluster.generators
    ]


def wait_for_open_sessions(
    cluster: Cluster, gateway: int, generators_total: int, timeout_s: float = 20
) -> None:
    """Wait until the gateway has ``gateway`` sessions open and the generators together
    ``generators_total``; fails with the counts last seen."""
    deadline = time.time() + timeout_s
    while True:
        seen_gateway, seen_generators = open_sessions(cluster)
        if seen_gateway == gateway and sum(seen_generators) == generators_total:
            return
        if time.time() > deadline:
            pytest.fail(
                f"expected {gateway} sessions on the gateway and {generators_total} on "
                f"the generators; have {seen_gateway:g} and {seen_generators}"
            )
        time.sleep(0.2)


MRT = str(Path(sys.executable).parent / "mrt")


def run_mrt_up(
    ports: ClusterConfig, *options: str, env: dict[str, str] | None = None, timeout_s: float = 600
) -> tuple[subprocess.Popen, list[str]]:
    """Start `mrt up` on ``ports`` as a user would and read its output until the cluster is
    ready (or the command ends, or ``timeout_s`` passes): the process and the lines read."""
    up = subprocess.Popen(
        [
            MRT,
            "up",
            "--gateway-port",
            str(ports.gateway_port),
            "--embedder-port",
            str(ports.embedder_port),
            "--generator-port",
            str(ports.generator_port),
            "--gateway-metrics-port",
            str(ports.gateway_metrics_port),
            "--embedder-metrics-port",
            str(ports.embedder_metrics_port),
            "--generator-metrics-port",
            str(ports.generator_metrics_port),
            "--web-port",
            str(ports.web_port or 0),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output = []
    deadline = time.time() + timeout_s
    for line in up.stdout:
        output.append(line)
        if "Ctrl-C stops the cluster" in line or time.time() > deadline:
            break
    return up, output
