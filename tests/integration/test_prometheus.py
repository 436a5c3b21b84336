"""A real Prometheus scrapes the local cluster; the dashboard's queries return data."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.common.proto.mrt.v1 import music_pb2
from tests.streaming_client import StreamClient

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = (
    ROOT / "deploy" / "k8s" / "components" / "monitoring" / "dashboards" / "mrt-overview.json"
)
# Series that legitimately stay empty in a calm run: nothing migrated, nothing drained away.
KNOWN_EMPTY = ("mrt_gateway_sessions_migrated_total",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(base_url: str, expr: str) -> list:
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def prometheus(mock_cluster, tmp_path_factory):
    """Prometheus with the project's standalone config, pointed at this cluster's ports."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    urls = mock_cluster.metrics_urls
    targets = {
        "gateway": [urls["gateway"]],
        "embedder": [urls["embedder"]],
        "generator": [u for name, u in urls.items() if name.startswith("generator")],
    }
    for job in config["scrape_configs"]:
        job["static_configs"] = [
            {"targets": [u.split("//")[1].split("/")[0] for u in targets[job["job_name"]]]}
        ]
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("w"),
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base_url}/-/ready", timeout=2)
                break
            except OSError as err:
                if time.time() > deadline:
                    raise AssertionError((workdir / "prometheus.log").read_text()[-2000:]) from err
                time.sleep(0.3)
        while len(query(base_url, "up == 1")) < len(mock_cluster.services):
            assert time.time() < deadline, "Prometheus did not scrape every service"
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_prometheus_sees_sessions_chunks_and_latency(mock_cluster, prometheus):
    client = StreamClient(mock_cluster.gateway_address)
    try:
        client.setup()
        client.prompts(music_pb2.WeightedPrompt(text="observed"))
        client.playback(music_pb2.PlaybackControl.PLAY)
        client.chunks(3)
        time.sleep(1.5)  # the next scrape
        assert query(prometheus, "mrt_gateway_active_sessions")[0]["value"][1] == "1"
    finally:
        client.close()
    time.sleep(4)  # a few more scrapes, so rates cover the whole stream
    up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus, "up")}
    assert up == {"gateway": "1", "embedder": "1", "generator": "1"}
    chunks = query(prometheus, "max_over_time(mrt_gateway_chunks_sent_total[5m])")
    assert float(chunks[0]["value"][1]) >= 3
    latency = query(prometheus, "mrt_generator_chunk_generation_seconds_count")
    assert float(latency[0]["value"][1]) >= 3
    started = query(prometheus, "sum(mrt_gateway_sessions_started_total)")
    assert float(started[0]["value"][1]) >= 1

    panels = json.loads(DASHBOARD.read_text())["panels"]
    expressions = [target["expr"] for panel in panels for target in panel.get("targets", [])]
    assert expressions
    empty = []
    for expr in expressions:
        concrete = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
        if not query(prometheus, concrete) and not any(name in expr for name in KNOWN_EMPTY):
            empty.append(expr)
    assert not empty, f"dashboard queries with no data: {empty}"
