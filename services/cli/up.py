"""``mrt up``: run embedder, generator(s), gateway and web service on loopback, restarting any
that dies, until Ctrl-C (``make run``)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from services.cli.launcher import Cluster, ClusterConfig, ClusterError, ClusterTLS
from services.cli.options import add_env_option
from services.cli.supervision import Supervisor
from services.common.security import optional_path

_DEFAULTS = ClusterConfig()
DEFAULT_WEB_PORT = 8080
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a local cluster until Ctrl-C",
        description="Start the embedder, the generator(s), the gateway and the web service "
        "(Lyria RealTime WebSocket endpoint and browser player) as separate processes "
        "on loopback, wait until each is healthy, restart any that dies (with "
        "back-off, like Kubernetes) while the others keep serving, and stop them "
        "all on Ctrl-C / SIGTERM.",
    )
    add_env_option(
        parser, "--host", default=_DEFAULTS.host, help="address the services are reached on"
    )
    add_env_option(
        parser, "--gateway-port", type=int, default=_DEFAULTS.gateway_port, help="public gRPC port"
    )
    add_env_option(
        parser,
        "--embedder-port",
        type=int,
        default=_DEFAULTS.embedder_port,
        help="embedder gRPC port",
    )
    add_env_option(
        parser,
        "--generator-port",
        type=int,
        default=_DEFAULTS.generator_port,
        help="first generator's gRPC port; generator i listens on this + i",
    )
    add_env_option(
        parser,
        "--gateway-metrics-port",
        type=int,
        default=_DEFAULTS.gateway_metrics_port,
        help="gateway Prometheus port",
    )
    add_env_option(
        parser,
        "--embedder-metrics-port",
        type=int,
        default=_DEFAULTS.embedder_metrics_port,
        help="embedder Prometheus port",
    )
    add_env_option(
        parser,
        "--generator-metrics-port",
        type=int,
        default=_DEFAULTS.generator_metrics_port,
        help="first generator's Prometheus port; generator i uses this + i",
    )
    add_env_option(
        parser,
        "--web-port",
        type=int,
        default=DEFAULT_WEB_PORT,
        help="web service HTTP port: player page, Lyria WebSocket endpoint, /metrics "
        "(0: no web service)",
    )
    add_env_option(
        parser,
        "--generators",
        type=int,
        default=_DEFAULTS.generators,
        help="number of generator processes",
    )
    add_env_option(parser, "--model", default=_DEFAULTS.model, help="generator model")
    add_env_option(
        parser, "--embedder-model", default=_DEFAULTS.embedder_model, help="style (MusicCoCa) model"
    )
    add_env_option(parser, "--assets-dir", help="model assets directory")
    add_env_option(
        parser,
        "--max-batch-size",
        type=int,
        help="sessions per generator batch (generator's default if unset)",
    )
    add_env_option(
        parser,
        "--buffer-ahead-seconds",
        type=float,
        help="how far ahead of real time the gateway sends audio",
    )
    add_env_option(
        parser,
        "--log-dir",
        type=Path,
        help="write each service's output to <dir>/<service>.log instead of the console",
    )
    add_env_option(
        parser,
        "--ready-timeout-s",
        type=float,
        default=_DEFAULTS.ready_timeout_s,
        help="how long each service may take to become healthy",
    )
    tls = parser.add_argument_group(
        "TLS", "one certificate for every service; it must name --host (e.g. IP:127.0.0.1)"
    )
    add_env_option(
        tls,
        "--tls-cert-file",
        type=optional_path,
        help="PEM certificate (chain) every service serves; with --tls-key-file "
        "enables TLS on all ports",
    )
    add_env_option(
        tls, "--tls-key-file", type=optional_path, help="PEM private key of --tls-cert-file"
    )
    add_env_option(
        tls,
        "--tls-ca-file",
        type=optional_path,
        help="PEM CA that signed --tls-cert-file, trusted by the gateway for its "
        "backends and by the health checks (default: the certificate itself)",
    )
    add_env_option(
        tls,
        "--tls-client-ca-file",
        type=optional_path,
        help="PEM CA bundle; every port then requires client certificates it signed "
        "(mTLS), and the gateway presents --tls-cert-file to its backends",
    )
    parser.set_defaults(run=run)


def tls_from_args(args: argparse.Namespace) -> ClusterTLS | None:
    """The cluster's TLS settings; ValueError for an incomplete combination."""
    if args.tls_cert_file is None and args.tls_key_file is None:
        if args.tls_ca_file is not None or args.tls_client_ca_file is not None:
            raise ValueError(
                "--tls-ca-file and --tls-client-ca-file need --tls-cert-file and --tls-key-file"
            )
        return None
    if args.tls_cert_file is None or args.tls_key_file is None:
        raise ValueError("--tls-cert-file and --tls-key-file must be given together")
    return ClusterTLS(
        cert_file=args.tls_cert_file,
        key_file=args.tls_key_file,
        ca_file=args.tls_ca_file,
        client_ca_file=args.tls_client_ca_file,
    )


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        host=args.host,
        gateway_port=args.gateway_port,
        embedder_port=args.embedder_port,
        generator_port=args.generator_port,
        gateway_metrics_port=args.gateway_metrics_port,
        embedder_metrics_port=args.embedder_metrics_port,
        generator_metrics_port=args.generator_metrics_port,
        web_port=args.web_port or None,
        generators=args.generators,
        model=args.model,
        embedder_model=args.embedder_model,
        assets_dir=args.assets_dir,
        max_batch_size=args.max_batch_size,
        buffer_ahead_seconds=args.buffer_ahead_seconds,
        log_dir=args.log_dir,
        ready_timeout_s=args.ready_timeout_s,
        tls=tls_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        cluster = Cluster(config)
    except ValueError as err:
        print(f"mrt up: {err}", file=sys.stderr)
        return 2
    with _signals_interrupt():
        try:
            print(
                f"mrt up: starting {', '.join(p.name for p in cluster.services)} "
                f"(model {config.model})",
                file=sys.stderr,
                flush=True,
            )
            cluster.start()
            cluster.wait_ready()
            print(_describe_endpoints(cluster), flush=True)
            Supervisor(cluster.services, log=_say).run()
        except ClusterError as err:
            print(f"mrt up: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("mrt up: stopping", file=sys.stderr, flush=True)
            return 0
        finally:
            _ignore_stop_signals()  # a second Ctrl-C must not cut the shutdown short
            cluster.stop()


def _say(message: str) -> None:
    print(f"mrt up: {message}", file=sys.stderr, flush=True)


def _describe_endpoints(cluster: Cluster) -> str:
    width = max(len(p.name) for p in cluster.services)
    lines = ["mrt cluster ready:"]
    for process in [cluster.gateway, cluster.embedder, *cluster.generators]:
        lines.append(
            f"  {process.name:<{width}}  grpc {process.address:<21}  metrics {process.metrics_url}"
        )
    has_web = cluster.config.web_port is not None
    if has_web:
        lines.append(
            f"  {cluster.web.name:<{width}}  http {cluster.web.address:<21}  "
            f"metrics {cluster.web.metrics_url}"
        )
    tls = cluster.config.tls
    tls_option = f" --tls-ca {tls.trusted_ca_file}" if tls else ""
    lines.append(
        f"Try: mrt stream --address {cluster.gateway_address}{tls_option} "
        f'--prompt "synthwave" --seconds 20 --out synthwave.wav'
    )
    if has_web:
        lines.append(
            f"Player: open {cluster.web_url} in a browser (Lyria RealTime SDKs: "
            f"base URL {cluster.web_url})"
        )
    lines.append("Ctrl-C stops the cluster.")
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP like Ctrl-C while the cluster runs; restore handlers after."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
