"""The launcher's command lines and port assignment (no processes started)."""

import dataclasses
import sys
from pathlib import Path

import pytest

from services.cli.launcher import Cluster, ClusterConfig, ClusterTLS
from services.cli.main import build_parser
from services.cli.up import config_from_args


def _argv_by_name(config):
    return {spec.name: list(spec.argv) for spec in config.service_specs()}


def test_default_command_lines():
    argv = _argv_by_name(ClusterConfig())
    py = sys.executable
    assert argv == {
        "embedder": [
            py,
            "-m",
            "services.embedder",
            "--port",
            "50052",
            "--metrics-port",
            "9092",
            "--model",
            "tiny",
        ],
        "generator-0": [
            py,
            "-m",
            "services.generator",
            "--port",
            "50053",
            "--metrics-port",
            "9093",
            "--model",
            "tiny",
            "--generator-id",
            "generator-0",
        ],
        "gateway": [
            py,
            "-m",
            "services.gateway",
            "--port",
            "50051",
            "--metrics-port",
            "9091",
            "--embedder-address",
            "127.0.0.1:50052",
            "--generator-addresses",
            "127.0.0.1:50053",
        ],
    }


def test_optional_flags_are_passed_only_when_set():
    config = ClusterConfig(
        assets_dir="/srv/assets",
        max_batch_size=8,
        buffer_ahead_seconds=1.5,
        model="base",
        embedder_model="musiccoca",
    )
    argv = _argv_by_name(config)
    assert argv["embedder"][-4:] == ["--model", "musiccoca", "--assets-dir", "/srv/assets"]
    assert argv["generator-0"][7:] == [
        "--model",
        "base",
        "--assets-dir",
        "/srv/assets",
        "--max-batch-size",
        "8",
        "--generator-id",
        "generator-0",
    ]
    assert argv["gateway"][-2:] == ["--buffer-ahead-seconds", "1.5"]


def test_n_generators_get_consecutive_ports_and_metrics_ports():
    config = ClusterConfig(generators=3)
    specs = config.service_specs()
    assert [s.name for s in specs] == [
        "embedder",
        "generator-0",
        "generator-1",
        "generator-2",
        "gateway",
    ]
    generators = [s for s in specs if s.role == "generator"]
    assert [s.port for s in generators] == [50053, 50054, 50055]
    assert [s.metrics_port for s in generators] == [9093, 9094, 9095]
    assert [s.metrics_url for s in generators] == [
        "http://127.0.0.1:9093/metrics",
        "http://127.0.0.1:9094/metrics",
        "http://127.0.0.1:9095/metrics",
    ]
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
        "gateway": "http://127.0.0.2:9091/metrics",
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        # generator-1 would take the gateway's gRPC port
        (
            dict(generators=2, generator_port=50050),
            "port 50051 is used by both generator-1 and gateway",
        ),
        # generator metrics 9090, 9091: the second collides with the gateway's metrics
        (
            dict(generators=2, generator_metrics_port=9090),
            "port 9091 is used by both generator-1 metrics and gateway metrics",
        ),
        (
            dict(embedder_metrics_port=50053),
            "port 50053 is used by both embedder metrics and generator-0",
        ),
        (dict(generators=0), "at least one generator"),
        (dict(gateway_port=70000), "outside 1..65535"),
    ],
)
def test_clashing_or_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**changes).service_specs()


def test_with_free_ports_gives_distinct_consecutive_ports():
    config = ClusterConfig(generators=3).with_free_ports()
    config.validate()
    assert config.generator_ports() == [config.generator_port + i for i in range(3)]
    ports = [
        config.gateway_port,
        config.embedder_port,
        *config.generator_ports(),
        config.gateway_metrics_port,
        config.embedder_metrics_port,
        *config.generator_metrics_ports(),
    ]
    assert len(set(ports)) == len(ports) == 10
    assert dataclasses.replace(config, gateway_port=50051) != config


def test_up_options_and_their_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MRT_GENERATORS", "2")
    monkeypatch.setenv("MRT_MODEL", "base")
    monkeypatch.setenv("MRT_BUFFER_AHEAD_SECONDS", "0.5")
    args = build_parser().parse_args(
        ["up", "--model", "large", "--generator-port", "6000", "--log-dir", str(tmp_path)]
    )
    config = config_from_args(args)
    assert config.generators == 2  # from the environment, converted to int
    assert config.model == "large"  # the flag wins over MRT_MODEL
    assert config.buffer_ahead_seconds == 0.5
    assert config.generator_ports() == [6000, 6001]
    assert config.log_dir == tmp_path
    assert config.max_batch_size is None and config.assets_dir is None


def _flag(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_tls_gives_every_service_the_certificate_and_the_gateway_the_ca():
    tls = ClusterTLS(
        cert_file=Path("/pki/server.crt"),
        key_file=Path("/pki/server.key"),
        ca_file=Path("/pki/ca.crt"),
    )
    argv = _argv_by_name(ClusterConfig(generators=2, tls=tls))
    for name in ("embedder", "generator-0", "generator-1", "gateway"):
        assert _flag(argv[name], "--tls-cert-file") == "/pki/server.crt"
        assert _flag(argv[name], "--tls-key-file") == "/pki/server.key"
        assert _flag(argv[name], "--tls-client-ca-file") is None
    assert _flag(argv["gateway"], "--internal-tls-ca-file") == "/pki/ca.crt"
    assert _flag(argv["gateway"], "--internal-tls-cert-file") is None
    assert _flag(argv["embedder"], "--internal-tls-ca-file") is None


def test_mutual_tls_makes_every_port_require_and_the_gateway_present_a_certificate():
    tls = ClusterTLS(
        cert_file=Path("self.crt"), key_file=Path("self.key"), client_ca_file=Path("clients.crt")
    )
    argv = _argv_by_name(ClusterConfig(tls=tls))
    for name in ("embedder", "generator-0", "gateway"):
        assert _flag(argv[name], "--tls-client-ca-file") == "clients.crt"
    # A self-signed certificate is its own CA.
    assert _flag(argv["gateway"], "--internal-tls-ca-file") == "self.crt"
    assert _flag(argv["gateway"], "--internal-tls-cert-file") == "self.crt"
    assert _flag(argv["gateway"], "--internal-tls-key-file") == "self.key"


def test_up_tls_options_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("MRT_TLS_KEY_FILE", "/pki/server.key")
    args = build_parser().parse_args(["up", "--tls-cert-file", "/pki/server.crt"])
    assert config_from_args(args).tls == ClusterTLS(
        cert_file=Path("/pki/server.crt"), key_file=Path("/pki/server.key")
    )
    monkeypatch.delenv("MRT_TLS_KEY_FILE")
    assert config_from_args(build_parser().parse_args(["up"])).tls is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tls-cert-file", "a.crt"], "must be given together"),
        (["--tls-ca-file", "ca.crt"], "need --tls-cert-file"),
        (["--tls-client-ca-file", "ca.crt"], "need --tls-cert-file"),
    ],
)
def test_up_refuses_incomplete_tls_options(argv, message, capsys):
    from services.cli.main import main

    assert main(["up", *argv]) == 2
    assert message in capsys.readouterr().err


def test_up_refuses_an_unreadable_certificate(tmp_path, capsys):
    from services.cli.main import main

    assert (
        main(
            [
                "up",
                "--tls-cert-file",
                str(tmp_path / "missing.crt"),
                "--tls-key-file",
                str(tmp_path / "missing.key"),
            ]
        )
        == 2
    )
    assert "cannot read" in capsys.readouterr().err


def test_the_web_service_serves_metrics_on_its_own_port_and_reaches_the_gateway():
    config = ClusterConfig(web_port=8080)
    web = config.service_specs()[-1]
    assert web.name == "web" and web.port == web.metrics_port == 8080
    assert list(web.argv[1:]) == [
        "-m",
        "services.web",
        "--port",
        "8080",
        "--gateway-address",
        "127.0.0.1:50051",
    ]
    assert web.metrics_url == "http://127.0.0.1:8080/metrics"
    assert Cluster(config).web_url == "http://127.0.0.1:8080/"
    assert "web" not in _argv_by_name(ClusterConfig())  # only when asked for


def test_with_tls_the_web_service_serves_https_and_trusts_the_clusters_ca():
    tls = ClusterTLS(
        cert_file=Path("/pki/server.crt"),
        key_file=Path("/pki/server.key"),
        ca_file=Path("/pki/ca.crt"),
    )
    config = ClusterConfig(web_port=8443, tls=tls)
    argv = _argv_by_name(config)["web"]
    assert _flag(argv, "--tls-cert-file") == "/pki/server.crt"
    assert _flag(argv, "--internal-tls-ca-file") == "/pki/ca.crt"
    assert config.service_specs()[-1].metrics_url == "https://127.0.0.1:8443/metrics"


def test_the_web_port_is_checked_like_the_others_and_mrt_up_sets_it():
    with pytest.raises(ValueError, match="port 9091 is used by both gateway metrics and web"):
        ClusterConfig(web_port=9091).service_specs()
    config = ClusterConfig(web_port=8080).with_free_ports()
    assert config.web_port not in (8080, config.gateway_port, config.gateway_metrics_port)
    assert config_from_args(build_parser().parse_args(["up"])).web_port == 8080
    assert config_from_args(build_parser().parse_args(["up", "--web-port", "0"])).web_port is None
