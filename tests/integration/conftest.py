"""Real service processes on loopback, shared by the integration tests."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.cli.launcher import Cluster, ClusterConfig


def start_cluster(tmp_path_factory, **overrides) -> Cluster:
    config = ClusterConfig(model="mock", embedder_model="mock",
                           log_dir=tmp_path_factory.mktemp("logs"),
                           assets_dir=str(tmp_path_factory.getbasetemp() / "assets"),
                           ready_timeout_s=240)
    config = dataclasses.replace(config, **overrides).with_free_ports()
    cluster = Cluster(config)
    cluster.__enter__()
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


MRT = str(Path(sys.executable).parent / "mrt")


def run_mrt_up(ports: ClusterConfig, *options: str, env: dict[str, str] | None = None,
               timeout_s: float = 600) -> tuple[subprocess.Popen, list[str]]:
    """Start `mrt up` on ``ports`` as a user would and read its output until the cluster is
    ready (or the command ends, or ``timeout_s`` passes): the process and the lines read."""
    up = subprocess.Popen(
        [MRT, "up", "--gateway-port", str(ports.gateway_port),
         "--embedder-port", str(ports.embedder_port), "--generator-port", str(ports.generator_port),
         "--gateway-metrics-port", str(ports.gateway_metrics_port),
         "--embedder-metrics-port", str(ports.embedder_metrics_port),
         "--generator-metrics-port", str(ports.generator_metrics_port),
         "--web-port", str(ports.web_port or 0), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    deadline = time.time() + timeout_s
    for line in up.stdout:
        output.append(line)
        if "Ctrl-C stops the cluster" in line or time.time() > deadline:
            break
    return up, output
