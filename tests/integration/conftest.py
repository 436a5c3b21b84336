"""Real service processes on loopback, shared by the integration tests."""

from __future__ import annotations

import dataclasses
import urllib.request

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
