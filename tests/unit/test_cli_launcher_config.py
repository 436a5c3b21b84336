"""The launcher's command lines and port assignment (no processes started)."""

import dataclasses
import sys

import pytest

from services.cli.launcher import Cluster, ClusterConfig
from services.cli.main import build_parser
from services.cli.up import config_from_args


def _argv_by_name(config):
    return {spec.name: list(spec.argv) for spec in config.service_specs()}


def test_default_command_lines():
    argv = _argv_by_name(ClusterConfig())
    py = sys.executable
    assert argv == {
        "embedder": [py, "-m", "services.embedder", "--port", "50052", "--metrics-port", "9092",
                     "--model", "tiny"],
        "generator-0": [py, "-m", "services.generator", "--port", "50053", "--metrics-port",
                        "9093", "--model", "tiny", "--generator-id", "generator-0"],
        "gateway": [py, "-m", "services.gateway", "--port", "50051", "--metrics-port", "9091",
                    "--embedder-address", "127.0.0.1:50052",
                    "--generator-addresses", "127.0.0.1:50053"],
    }


def test_optional_flags_are_passed_only_when_set():
    config = ClusterConfig(assets_dir="/srv/assets", max_batch_size=8, buffer_ahead_seconds=1.5,
                           model="base", embedder_model="musiccoca")
    argv = _argv_by_name(config)
    assert argv["embedder"][-4:] == ["--model", "musiccoca", "--assets-dir", "/srv/assets"]
    assert argv["generator-0"][7:] == ["--model", "base", "--assets-dir", "/srv/assets",
                                       "--max-batch-size", "8", "--generator-id", "generator-0"]
    assert argv["gateway"][-2:] == ["--buffer-ahead-seconds", "1.5"]


def test_n_generators_get_consecutive_ports_and_metrics_ports():
    config = ClusterConfig(generators=3)
    specs = config.service_specs()
    assert [s.name for s in specs] == ["embedder", "generator-0", "generator-1", "generator-2",
                                       "gateway"]
    generators = [s for s in specs if s.role == "generator"]
    assert [s.port for s in generators] == [50053, 50054, 50055]
    assert [s.metrics_port for s in generators] == [9093, 9094, 9095]
    assert [s.metrics_url for s in generators] == [
        "http://127.0.0.1:9093/metrics", "http://127.0.0.1:9094/metrics",
        "http://127.0.0.1:9095/metrics"]
    gateway_argv = list(specs[-1].argv)
    addresses = gateway_argv[gateway_argv.index("--generator-addresses") + 1]
    assert addresses == "127.0.0.1:50053,127.0.0.1:50054,127.0.0.1:50055"
    ids = [list(s.argv)[list(s.argv).index("--generator-id") + 1] for s in generators]
    assert ids == ["generator-0", "generator-1", "generator-2"]


def test_cluster_knows_addresses_and_metrics_urls():
    cluster = Cluster(ClusterConfig(generators=2, host="127.0.0.2"))
    assert cluster.gateway_address == "127.0.0.2:50051"
    assert cluster.embedder_address == "127.0.0.2:50052"
    assert cluster.generator_addresses == ["127.0.0.2:50053", "127.0.0.2:50054"]
    assert cluster.generator_process(1).name == "generator-1"
    assert cluster.metrics_urls == {
        "embedder": "http://127.0.0.2:9092/metrics",
        "generator-0": "http://127.0.0.2:9093/metrics",
        "generator-1": "http://127.0.0.2:9094/metrics",
        "gateway": "http://127.0.0.2:9091/metrics"}


@pytest.mark.parametrize("changes, message", [
    # generator-1 would take the gateway's gRPC port
    (dict(generators=2, generator_port=50050),
     "port 50051 is used by both generator-1 and gateway"),
    # generator metrics 9090, 9091: the second collides with the gateway's metrics
    (dict(generators=2, generator_metrics_port=9090),
     "port 9091 is used by both generator-1 metrics and gateway metrics"),
    (dict(embedder_metrics_port=50053),
     "port 50053 is used by both embedder metrics and generator-0"),
    (dict(generators=0), "at least one generator"),
    (dict(gateway_port=70000), "outside 1..65535"),
])
def test_clashing_or_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**changes).service_specs()


def test_with_free_ports_gives_distinct_consecutive_ports():
    config = ClusterConfig(generators=3).with_free_ports()
    config.validate()
    assert config.generator_ports() == [config.generator_port + i for i in range(3)]
    ports = [config.gateway_port, config.embedder_port, *config.generator_ports(),
             config.gateway_metrics_port, config.embedder_metrics_port,
             *config.generator_metrics_ports()]
    assert len(set(ports)) == len(ports) == 10
    assert dataclasses.replace(config, gateway_port=50051) != config


def test_up_options_and_their_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MRT_GENERATORS", "2")
    monkeypatch.setenv("MRT_MODEL", "base")
    monkeypatch.setenv("MRT_BUFFER_AHEAD_SECONDS", "0.5")
    args = build_parser().parse_args(
        ["up", "--model", "large", "--generator-port", "6000", "--log-dir", str(tmp_path)])
    config = config_from_args(args)
    assert config.generators == 2  # from the environment, converted to int
    assert config.model == "large"  # the flag wins over MRT_MODEL
    assert config.buffer_ahead_seconds == 0.5
    assert config.generator_ports() == [6000, 6001]
    assert config.log_dir == tmp_path
    assert config.max_batch_size is None and config.assets_dir is None
