"""Runs a local cluster (embedder, generators, gateway, and optionally the web service) as child
processes on loopback.

`mrt up`, the integration tests and the load benchmark all start clusters through `Cluster`:

    with Cluster(ClusterConfig(generators=2).with_free_ports()) as cluster:
        stub = MusicGenerationStub(grpc.insecure_channel(cluster.gateway_address))
        cluster.generator_process(1).kill()       # a generator pod dies
        cluster.restart_generator(1)              # ... and comes back

No child outlives the launcher: `stop()` sends SIGTERM to each child's process group, then
SIGKILL after a grace period; each child also asks the kernel (PR_SET_PDEATHSIG) to kill it
when the launcher dies, even by SIGKILL. Children run in their own sessions, so a Ctrl-C in the
terminal reaches only the launcher, which then stops them all, gateway first.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import services
from services.common.security import load_channel_credentials

EMBEDDER, GENERATOR, GATEWAY, WEB = "embedder", "generator", "gateway", "web"
_SERVICE_MODULES = {
    EMBEDDER: "services.embedder",
    GENERATOR: "services.generator",
    GATEWAY: "services.gateway",
    WEB: "services.web",
}
_PROJECT_ROOT = Path(services.__file__).resolve().parent.parent
_LOG_TAIL_LINES = 200
_HEALTH_POLL_INTERVAL_S = 0.2
# Health checks retry a service that is still starting: keep gRPC's reconnect backoff short so
# a service is seen as ready within a fraction of a second of it becoming ready.
_HEALTH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# Ports handed out by with_free_ports(): below Linux's ephemeral range (32768+), so they do not
# collide with the source ports of outgoing connections.
_FREE_PORT_RANGE = (20_000, 32_000)


class ClusterError(RuntimeError):
    """A service of the cluster failed; names the service and carries the end of its log."""

    def __init__(self, service: str, message: str, log_tail: str = ""):
        text = f"{service}: {message}"
        if log_tail:
            text += f"\n--- last lines of {service}'s output ---\n{log_tail}"
        super().__init__(text)
        self.service = service
        self.log_tail = log_tail


class ServiceExitedError(ClusterError):
    """A service process exited while it was expected to run."""

    def __init__(self, service: str, returncode: int, log_tail: str = ""):
        super().__init__(
            service, f"exited unexpectedly with {describe_returncode(returncode)}", log_tail
        )
        self.returncode = returncode


class ServiceNotReadyError(ClusterError):
    """A service did not answer its health check with SERVING in time."""


def describe_returncode(returncode: int) -> str:
    """'exit code 3' or 'signal SIGKILL'."""
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """One service process: its name, where it listens, and the command that starts it."""

    name: str  # "embedder", "generator-0", "gateway", "web"
    role: str  # EMBEDDER, GENERATOR, GATEWAY or WEB
    host: str
    port: int
    metrics_port: int  # the web service serves /metrics on its own (HTTP) port
    argv: tuple[str, ...]
    http_scheme: str = "http"  # of the metrics endpoint (and the web service's port)

    @property
    def address(self) -> str:
        return _host_port(self.host, self.port)

    @property
    def metrics_url(self) -> str:
        return f"{self.http_scheme}://{_host_port(self.host, self.metrics_port)}/metrics"


@dataclasses.dataclass(frozen=True)
class ClusterTLS:
    """TLS for a local cluster: one certificate serves every service's gRPC port, so it must
    name the host the services are reached on (127.0.0.1 by default).

    ``ca_file`` signed the certificate (by default the certificate itself, when it is
    self-signed): the gateway trusts it for its backends and the launcher for its health
    checks. With ``client_ca_file`` every port requires client certificates signed by that CA,
    and the gateway and the health checks present ``cert_file`` as theirs.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def trusted_ca_file(self) -> Path:
        return self.ca_file or self.cert_file

    def server_flags(self) -> dict[str, object]:
        return {
            "tls_cert_file": self.cert_file,
            "tls_key_file": self.key_file,
            "tls_client_ca_file": self.client_ca_file,
        }

    def client_identity(self) -> tuple[Path | None, Path | None]:
        """(certificate, key) a client of the cluster presents: only needed with mTLS."""
        if self.client_ca_file is None:
            return None, None
        return self.cert_file, self.key_file

    def gateway_backend_flags(self) -> dict[str, object]:
        cert_file, key_file = self.client_identity()
        return {
            "internal_tls_ca_file": self.trusted_ca_file,
            "internal_tls_cert_file": cert_file,
            "internal_tls_key_file": key_file,
        }

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """What a client of the cluster's ports (the health checks) connects with; raises
        SecurityConfigError (a ValueError) for a file that is missing or holds no PEM."""
        return load_channel_credentials(self.trusted_ca_file, *self.client_identity())

    def ssl_context(self) -> ssl.SSLContext:
        """The same, for HTTPS (the web service's health check); ValueError for a bad file."""
        try:
            context = ssl.create_default_context(cafile=str(self.trusted_ca_file))
            cert_file, key_file = self.client_identity()
            if cert_file is not None:
                context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"cannot load the cluster's TLS files: {err}") from None
        return context


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Where each service listens and how it is configured. `mrt up`'s options map onto this.

    Generator i listens on ``generator_port + i`` with metrics on ``generator_metrics_port + i``.
    Optional service settings (None) are not passed, so the services' own defaults apply.
    """

    host: str = "127.0.0.1"
    gateway_port: int = 50051
    embedder_port: int = 50052
    generator_port: int = 50053
    gateway_metrics_port: int = 9091
    embedder_metrics_port: int = 9092
    generator_metrics_port: int = 9093
    web_port: int | None = None  # the web service's HTTP port; None: no web service
    generators: int = 1
    model: str = "tiny"
    embedder_model: str = "tiny"
    assets_dir: str | None = None
    max_batch_size: int | None = None
    buffer_ahead_seconds: float | None = None
    log_dir: Path | None = None  # None: children's output goes to the console, prefixed
    ready_timeout_s: float = 180.0
    stop_grace_s: float = 10.0
    tls: ClusterTLS | None = None  # None: plaintext everywhere
    python: str = sys.executable  # the interpreter that runs the services

    def generator_ports(self) -> list[int]:
        return [self.generator_port + i for i in range(self.generators)]

    def generator_metrics_ports(self) -> list[int]:
        return [self.generator_metrics_port + i for i in range(self.generators)]

    def validate(self) -> None:
        """Raise ValueError for a configuration that cannot start (bad count, clashing ports)."""
        if self.generators < 1:
            raise ValueError(f"need at least one generator, got {self.generators}")
        users: dict[int, str] = {}
        for spec in self._unchecked_specs():
            ports = [(spec.port, spec.name)]
            if spec.metrics_port != spec.port:
                ports.append((spec.metrics_port, f"{spec.name} metrics"))
            for port, what in ports:
                if not 0 < port < 65536:
                    raise ValueError(f"{what} port {port} is outside 1..65535")
                if port in users:
                    raise ValueError(f"port {port} is used by both {users[port]} and {what}")
                users[port] = what

    def service_specs(self) -> list[ServiceSpec]:
        """The services in start order: embedder, generator-0..N-1, gateway, web."""
        self.validate()
        return self._unchecked_specs()

    def with_free_ports(self) -> ClusterConfig:
        """A copy listening on ports that are free now (for tests and benchmarks)."""
        n = self.generators
        counts = {
            "gateway_port": 1,
            "embedder_port": 1,
            "generator_port": n,
            "gateway_metrics_port": 1,
            "embedder_metrics_port": 1,
            "generator_metrics_port": n,
        }
        if self.web_port is not None:
            counts["web_port"] = 1
        return dataclasses.replace(self, **_free_port_blocks(self.host, counts))

    def _unchecked_specs(self) -> list[ServiceSpec]:
        server_tls = self.tls.server_flags() if self.tls else {}
        backend_tls = self.tls.gateway_backend_flags() if self.tls else {}
        specs = [
            self._spec(
                EMBEDDER,
                EMBEDDER,
                self.embedder_port,
                self.embedder_metrics_port,
                model=self.embedder_model,
                assets_dir=self.assets_dir,
                **server_tls,
            )
        ]
        for i, (port, metrics_port) in enumerate(
            zip(self.generator_ports(), self.generator_metrics_ports())
        ):
            specs.append(
                self._spec(
                    f"{GENERATOR}-{i}",
                    GENERATOR,
                    port,
                    metrics_port,
                    model=self.model,
                    assets_dir=self.assets_dir,
                    max_batch_size=self.max_batch_size,
                    generator_id=f"{GENERATOR}-{i}",
                    **server_tls,
                )
            )
        generator_addresses = ",".join(_host_port(self.host, p) for p in self.generator_ports())
        specs.append(
            self._spec(
                GATEWAY,
                GATEWAY,
                self.gateway_port,
                self.gateway_metrics_port,
                embedder_address=_host_port(self.host, self.embedder_port),
                generator_addresses=generator_addresses,
                buffer_ahead_seconds=self.buffer_ahead_seconds,
                **server_tls,
                **backend_tls,
            )
        )
        if self.web_port is not None:
            spec = self._spec(
                WEB,
                WEB,
                self.web_port,
                self.web_port,
                gateway_address=_host_port(self.host, self.gateway_port),
                **server_tls,
                **backend_tls,
            )
            specs.append(dataclasses.replace(spec, http_scheme="https" if self.tls else "http"))
        return specs

    def _spec(
        self, name: str, role: str, port: int, metrics_port: int, **flags: object
    ) -> ServiceSpec:
        argv = [self.python, "-m", _SERVICE_MODULES[role], "--port", str(port)]
        if metrics_port != port:
            argv += ["--metrics-port", str(metrics_port)]
        for key, value in flags.items():
            if value is not None:
                argv += ["--" + key.replace("_", "-"), str(value)]
        return ServiceSpec(
            name=name,
            role=role,
            host=self.host,
            port=port,
            metrics_port=metrics_port,
            argv=tuple(argv),
        )


def _free_port_blocks(host: str, counts: dict[str, int]) -> dict[str, int]:
    """For each key, the first of `count` consecutive ports that are free and distinct."""
    held: list[socket.socket] = []
    try:
        firsts = {}
        for key, count in counts.items():
            for _ in range(1000):
                first = random.randrange(_FREE_PORT_RANGE[0], _FREE_PORT_RANGE[1] - count)
                sockets = _bind_all(host, range(first, first + count))
                if sockets is not None:
                    held += sockets
                    firsts[key] = first
                    break
            else:
                raise RuntimeError(f"found no {count} consecutive free ports on {host}")
        return firsts
    finally:
        for sock in held:
            sock.close()


def _bind_all(host: str, ports: range) -> list[socket.socket] | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    for port in ports:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            for bound in sockets:
                bound.close()
            return None
        sockets.append(sock)
    return sockets


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the launching thread dies.

    Resolved here, before fork, so the child only makes one foreign call. None off Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


class ServiceProcess:
    """One running (or stopped) service: its process, its output and its health check."""

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        log_dir: Path | None = None,
        console: TextIO | None = None,
        console_lock: threading.Lock | None = None,
        health_credentials: grpc.ChannelCredentials | None = None,
        health_ssl_context: ssl.SSLContext | None = None,
    ):
        """Output goes to <log_dir>/<name>.log if log_dir is set, else to console (or stderr).
        Health checks connect with `health_credentials` (TLS), or in plaintext when None; the
        web service's HTTP check with `health_ssl_context`."""
        self.spec = spec
        self._health_credentials = health_credentials
        self._health_ssl_context = health_ssl_context
        self._log_path = Path(log_dir) / f"{spec.name}.log" if log_dir is not None else None
        self._console = console
        self._console_lock = console_lock or threading.Lock()
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._popen: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self._stop_requested = False
        self._group_may_exist = False  # guards against signalling a recycled process-group id
        self._health_channel: grpc.Channel | None = None
        self.last_health_error: str | None = None  # why the last health check did not pass

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def metrics_url(self) -> str:
        return self.spec.metrics_url

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exited_unexpectedly(self) -> bool:
        """True when the process has ended without stop(), terminate() or kill() asking it to."""
        ended = self._popen is not None and self._popen.poll() is not None
        return ended and not self._stop_requested

    def start(self) -> None:
        """Start the process (again, after a stop); its output is pumped to the log or console."""
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.release()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        self._stop_requested = False
        try:
            self._popen = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(),
            )
        except OSError as err:
            raise ClusterError(self.name, f"cannot run {self.spec.argv[0]}: {err}") from err
        self._group_may_exist = True
        self._pump = threading.Thread(
            target=self._pump_output,
            args=(self._popen.stdout,),
            name=f"{self.name}-output",
            daemon=True,
        )
        self._pump.start()

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM to its process group); does not wait."""
        self._stop_requested = True
        if self.is_running():
            self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process group now and reap it, the way a pod dies (not a cluster failure)."""
        self._stop_requested = True
        if self._popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self._popen.wait()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit status once the process has ended, or None if it still runs after timeout_s."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after grace_s; returns the exit status."""
        self.terminate()
        if self.wait(grace_s) is None:
            self.kill()
        self.release()
        return self.returncode

    def release(self) -> None:
        """After the process has ended: kill any process it left in its group, free resources."""
        if self._popen is not None and self._popen.poll() is not None:
            self._signal_group(signal.SIGKILL)
            self._group_may_exist = False
        self._join_pump()
        if self._health_channel is not None:
            self._health_channel.close()
            self._health_channel = None

    def check_health(self, timeout_s: float = 1.0) -> bool:
        """True when the standard gRPC health check (service "") answers SERVING; for the web
        service, when its /healthz answers 200."""
        if self.spec.role == WEB:
            return self._check_http_health(timeout_s)
        if self._health_channel is None:
            self._health_channel = (
                grpc.insecure_channel(self.address, options=_HEALTH_CHANNEL_OPTIONS)
                if self._health_credentials is None
                else grpc.secure_channel(
                    self.address, self._health_credentials, options=_HEALTH_CHANNEL_OPTIONS
                )
            )
        stub = health_pb2_grpc.HealthStub(self._health_channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as err:
            self.last_health_error = (
                f"{err.code().name}: {err.details()}" if isinstance(err, grpc.Call) else str(err)
            )
            return False
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        self.last_health_error = (
            None
            if serving
            else (f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        )
        return serving

    def _check_http_health(self, timeout_s: float) -> bool:
        url = f"{self.spec.http_scheme}://{self.address}/healthz"
        try:
            with urllib.request.urlopen(
                url, timeout=timeout_s, context=self._health_ssl_context
            ) as reply:
                self.last_health_error = None
                return reply.status == 200
        except OSError as err:  # URLError and HTTPError (a status other than 2xx) included
            self.last_health_error = str(err)
            return False

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote (stdout and stderr together)."""
        return "\n".join(list(self._tail)[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        if not self._group_may_exist:
            return
        try:
            os.killpg(self._popen.pid, sig)  # start_new_session: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            pass

    def _join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=5.0)
            self._pump = None

    def _pump_output(self, stream) -> None:
        log_file = open(self._log_path, "a", encoding="utf-8") if self._log_path else None
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._tail.append(line)
                if log_file is not None:
                    log_file.write(line + "\n")
                    log_file.flush()
                else:
                    console = self._console or sys.stderr  # looked up now: it may be redirected
                    with self._console_lock:
                        console.write(f"[{self.name}] {line}\n")
                        console.flush()
        finally:
            stream.close()
            if log_file is not None:
                log_file.close()


def wait_until_serving(processes: Sequence[ServiceProcess], timeout_s: float) -> None:
    """Block until every process answers SERVING; fail fast, naming the service, if one exits."""
    deadline = time.monotonic() + timeout_s
    pending = list(processes)
    while True:
        for process in list(pending):
            if process.returncode is not None:
                raise ServiceExitedError(process.name, process.returncode, process.log_tail())
            remaining_s = deadline - time.monotonic()
            if process.check_health(timeout_s=max(0.1, min(1.0, remaining_s))):
                pending.remove(process)
        if not pending:
            return
        if time.monotonic() >= deadline:
            first = pending[0]
            others = f" (nor did {', '.join(p.name for p in pending[1:])})" if pending[1:] else ""
            last_check = (
                f"; last health check: {first.last_health_error}" if first.last_health_error else ""
            )
            raise ServiceNotReadyError(
                first.name,
                f"did not report SERVING on {first.address} within {timeout_s:g} s"
                f"{others}{last_check}",
                first.log_tail(),
            )
        time.sleep(_HEALTH_POLL_INTERVAL_S)


class Cluster:
    """The processes of one local cluster, started together and stopped together.

    Children's output goes to ``<config.log_dir>/<service>.log`` when a log directory is set,
    otherwise to `console` (default: the launcher's stderr) with a ``[service]`` prefix; the
    last lines are kept either way for error messages.

    `start()` must be called from a thread that outlives the cluster (normally the main
    thread): Linux delivers the parent-death signal when the thread that started a child exits.
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        specs: Sequence[ServiceSpec] | None = None,
        console: TextIO | None = None,
    ):
        """``specs`` replaces the command lines ``config`` would give (e.g. with TLS flags).
        Raises ValueError for a configuration that cannot start (clashing ports, a TLS file
        that cannot be read)."""
        self.config = config or ClusterConfig()
        lock = threading.Lock()
        tls = self.config.tls
        health_credentials = tls.channel_credentials() if tls else None
        health_ssl_context = tls.ssl_context() if tls else None
        self.services: list[ServiceProcess] = [
            ServiceProcess(
                spec,
                log_dir=self.config.log_dir,
                console=console,
                console_lock=lock,
                health_credentials=health_credentials,
                health_ssl_context=health_ssl_context,
            )
            for spec in (self.config.service_specs() if specs is None else specs)
        ]

    # -- where things are ------------------------------------------------------------------

    def service(self, name: str) -> ServiceProcess:
        for process in self.services:
            if process.name == name:
                return process
        raise KeyError(f"no service named {name!r}; have {[p.name for p in self.services]}")

    @property
    def embedder(self) -> ServiceProcess:
        return self._only(EMBEDDER)

    @property
    def gateway(self) -> ServiceProcess:
        return self._only(GATEWAY)

    @property
    def generators(self) -> list[ServiceProcess]:
        return [p for p in self.services if p.spec.role == GENERATOR]

    def generator_process(self, index: int) -> ServiceProcess:
        return self.generators[index]

    @property
    def web(self) -> ServiceProcess:
        return self._only(WEB)

    @property
    def web_url(self) -> str:
        """The player page (the Lyria endpoint's base URL), e.g. ``http://127.0.0.1:8080/``."""
        return f"{self.web.spec.http_scheme}://{self.web.address}/"

    @property
    def gateway_address(self) -> str:
        return self.gateway.address

    @property
    def embedder_address(self) -> str:
        return self.embedder.address

    @property
    def generator_addresses(self) -> list[str]:
        return [p.address for p in self.generators]

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Service name -> its Prometheus endpoint."""
        return {p.name: p.metrics_url for p in self.services}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start every service (embedder, generators, gateway, web) without waiting for
        readiness."""
        if self.config.log_dir is not None:
            Path(self.config.log_dir).mkdir(parents=True, exist_ok=True)
        try:
            for process in self.services:
                process.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until all services are SERVING; a ClusterError names the one that is not."""
        wait_until_serving(
            self.services, self.config.ready_timeout_s if timeout_s is None else timeout_s
        )

    def check_running(self) -> None:
        """Raise ServiceExitedError if a service has ended without being asked to."""
        for process in self.services:
            if process.exited_unexpectedly():
                raise ServiceExitedError(process.name, process.returncode, process.log_tail())

    def restart_generator(self, index: int, *, wait_ready: bool = True) -> ServiceProcess:
        """Stop generator `index` (if it runs) and start it again on the same ports.

        Like start(), call it from a thread that outlives the cluster.
        """
        process = self.generator_process(index)
        process.stop(self.config.stop_grace_s)
        process.start()
        if wait_ready:
            wait_until_serving([process], self.config.ready_timeout_s)
        return process

    def stop(self) -> None:
        """Stop every service: SIGTERM all (gateway first), SIGKILL whatever outlives the grace."""
        running = [p for p in reversed(self.services) if p.is_running()]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.config.stop_grace_s
        for process in running:
            if process.wait(max(0.0, deadline - time.monotonic())) is None:
                process.kill()
        for process in self.services:
            process.release()

    def __enter__(self) -> Cluster:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _only(self, role: str) -> ServiceProcess:
        matches = [p for p in self.services if p.spec.role == role]
        if len(matches) != 1:
            raise LookupError(f"cluster has {len(matches)} {role} services, expected one")
        return matches[0]
