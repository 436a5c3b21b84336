"""The cluster under test: a local one started through the launcher, or one already running.

`BenchTarget` is all a benchmark needs to know about it: where the gateway listens, the
generator's gRPC and metrics addresses, and the service processes to sample (only known for
a cluster started here).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from pathlib import Path

import grpc

from bench import prometheus
from services.cli.launcher import GENERATOR, Cluster, ClusterConfig, ServiceSpec
from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc

# What the generator logs once its warm-up has measured batch times (see its batch runner).
_WARMUP_LINE = re.compile(r"warm-up done: .*predicted capacity (\d+) sessions")


@dataclasses.dataclass(frozen=True)
class BenchTarget:
    gateway_address: str
    generator_address: str | None = None
    generator_metrics_url: str | None = None
    gateway_metrics_url: str | None = None
    pids: dict[str, int] = dataclasses.field(default_factory=dict)  # service name -> pid
    generator_log: Path | None = None


@dataclasses.dataclass(frozen=True)
class LocalClusterOptions:
    model: str
    embedder_model: str
    max_batch_size: int | None = None  # None: the generator's default
    capacity_sessions: int | None = None  # None: the generator measures its own
    buffer_ahead_seconds: float | None = None
    assets_dir: str | None = None
    generator_flags: tuple[str, ...] = ()  # e.g. ("--dtype", "bfloat16")
    ready_timeout_s: float = 600.0


def start_local_cluster(options: LocalClusterOptions, log_dir: Path | None = None) -> Cluster:
    """Start embedder, one generator and gateway on free loopback ports; wait until ready."""
    config = ClusterConfig(
        model=options.model,
        embedder_model=options.embedder_model,
        max_batch_size=options.max_batch_size,
        buffer_ahead_seconds=options.buffer_ahead_seconds,
        assets_dir=options.assets_dir,
        ready_timeout_s=options.ready_timeout_s,
        log_dir=log_dir or Path(tempfile.mkdtemp(prefix="mrt-bench-logs-")),
    ).with_free_ports()
    extra = list(options.generator_flags)
    if options.capacity_sessions is not None:
        extra += ["--capacity-sessions", str(options.capacity_sessions)]
    specs = [
        with_extra_flags(spec, extra) if spec.role == GENERATOR else spec
        for spec in config.service_specs()
    ]
    cluster = Cluster(config, specs=specs)
    cluster.__enter__()
    return cluster


def with_extra_flags(spec: ServiceSpec, flags: list[str]) -> ServiceSpec:
    """The same service with more command-line flags (later flags win in argparse)."""
    return dataclasses.replace(spec, argv=spec.argv + tuple(flags))


def target_of(cluster: Cluster) -> BenchTarget:
    generator = cluster.generator_process(0)
    return BenchTarget(
        gateway_address=cluster.gateway_address,
        generator_address=generator.address,
        generator_metrics_url=generator.metrics_url,
        gateway_metrics_url=cluster.gateway.metrics_url,
        pids={p.name: p.pid for p in cluster.services if p.pid is not None},
        generator_log=generator.log_path,
    )


def get_load(generator_address: str, timeout_s: float = 5.0) -> generator_pb2.LoadReport:
    with grpc.insecure_channel(generator_address) as channel:
        return generator_pb2_grpc.GeneratorStub(channel).GetLoad(
            generator_pb2.GetLoadRequest(), timeout=timeout_s
        )


def active_sessions(target: BenchTarget) -> tuple[float | None, int | None]:
    """Sessions open now on the gateway and on the generator (None where not reachable)."""
    gateway = (
        prometheus.value(
            prometheus.scrape(target.gateway_metrics_url), "mrt_gateway_active_sessions"
        )
        if target.gateway_metrics_url
        else None
    )
    generator = (
        get_load(target.generator_address).active_sessions if target.generator_address else None
    )
    return gateway, generator


def chunks_generated(target: BenchTarget) -> float | None:
    if not target.generator_metrics_url:
        return None
    return prometheus.value(
        prometheus.scrape(target.generator_metrics_url), "mrt_generator_chunks_generated_total"
    )


def settle(
    target: BenchTarget, timeout_s: float = 60.0, quiet_s: float = 3.0, poll_s: float = 0.5
) -> tuple[float | None, int | None]:
    """Wait until the last trial is over for the services too: no session on the gateway and
    no chunk generated for ``quiet_s`` (longer than a chunk period). Returns the sessions
    still open then; any left on the generator after their listeners hung up are leaked,
    which the benchmark reports."""
    deadline = time.monotonic() + timeout_s
    last_chunks, quiet_since = chunks_generated(target), time.monotonic()
    while True:
        gateway, generator = active_sessions(target)
        chunks = chunks_generated(target)
        if chunks != last_chunks:
            last_chunks, quiet_since = chunks, time.monotonic()
        quiet = time.monotonic() - quiet_since >= quiet_s
        if (not gateway and (quiet or generator == 0)) or time.monotonic() >= deadline:
            return gateway, generator
        time.sleep(poll_s)


def startup_capacity_prediction(generator_log_text: str) -> int | None:
    """The capacity the generator predicted from its warm-up batch times, from its log.

    Needed when ``--capacity-sessions`` overrides the prediction: the generator then reports
    the override, not what it measured."""
    match = _WARMUP_LINE.search(generator_log_text)
    return None if match is None else int(match[1])
