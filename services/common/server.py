"""Starting and stopping a service: gRPC aio server, health, reflection, /metrics, signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.config import setup_logging
from services.common.metrics import RpcMetricsInterceptor

log = logging.getLogger(__name__)

READINESS_POLL_S = 0.25


def channel_options(
    max_message_bytes: int, tls_server_name: str | None = None
) -> list[tuple[str, int | str]]:
    """gRPC options shared by servers and the channels between services.

    ``tls_server_name`` overrides the name a peer's certificate is checked against (pods are
    dialled by IP, their certificates name a Service)."""
    overrides = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
    return overrides + [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Reconnect to a restarted peer within about a second, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def service_main(
    name: str,
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    serve: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    configuration_errors: tuple[type[Exception], ...],
) -> int:
    """The ``main`` of every service: flags, logging, serve until stopped.

    ``configuration_errors`` (missing model files, unreadable certificates...) are logged in
    one line and exit with status 2 rather than a traceback."""
    args = parse_args(argv)
    setup_logging(args.log_level, name)
    try:
        asyncio.run(serve(args))
    except configuration_errors as err:
        logging.getLogger(f"services.{name}").error("%s", err)
        return 2
    return 0


class Service:
    """One service process: a gRPC server with health + reflection, and a metrics endpoint.

    ``on_drain`` runs when SIGTERM / SIGINT arrives, after health flips to NOT_SERVING and
    before the server stops: a generator uses it to hand its sessions back.
    """

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        metrics_port: int,
        max_message_bytes: int,
        service_names: Sequence[str],
        shutdown_grace_s: float = 5.0,
        server_credentials: grpc.ServerCredentials | None = None,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ):
        self.name = name
        self.address = f"{host}:{port}"
        self.metrics_port = metrics_port
        self.service_names = list(service_names)
        self.shutdown_grace_s = shutdown_grace_s
        self.server = grpc.aio.server(
            interceptors=[*extra_interceptors, RpcMetricsInterceptor(name)],
            options=channel_options(max_message_bytes),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        if server_credentials is None:
            self.bound_port = self.server.add_insecure_port(self.address)
        else:
            self.bound_port = self.server.add_secure_port(self.address, server_credentials)
        self._stopping = asyncio.Event()

    @classmethod
    def from_flags(
        cls, name: str, args: argparse.Namespace, service_name: str, **kwargs
    ) -> Service:
        """A service configured by the flags of ``add_service_flags``."""
        return cls(
            name,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            max_message_bytes=args.max_message_bytes,
            service_names=[service_name],
            shutdown_grace_s=args.shutdown_grace_s,
            **kwargs,
        )

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stopping.set()

    async def _follow_readiness(self, ready: Callable[[], bool]) -> None:
        """Report SERVING exactly while ``ready()`` holds (checked every READINESS_POLL_S)."""
        serving: bool | None = None
        while True:
            now_ready = ready()
            if now_ready != serving:
                await self.set_serving(now_ready)
                log.info("%s is %s", self.name, "SERVING" if now_ready else "NOT_SERVING")
                serving = now_ready
            await asyncio.sleep(READINESS_POLL_S)

    async def run(
        self,
        on_drain: Callable[[], Awaitable[None]] | None = None,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        """Serve until SIGTERM / SIGINT, then drain and stop gracefully.

        Health reports SERVING while ``ready()`` is true (a gateway with no reachable
        generator is not ready), and NOT_SERVING from the moment shutdown starts."""
        if self.metrics_port:
            start_http_server(self.metrics_port)
        await self.server.start()
        follower = asyncio.create_task(self._follow_readiness(ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        log.info(
            "%s listening for gRPC on %s, metrics on :%s/metrics",
            self.name,
            self.address,
            self.metrics_port or "off",
        )
        await self._stopping.wait()
        log.info("%s shutting down", self.name)
        follower.cancel()
        await self.set_serving(False)
        if on_drain is not None:
            await on_drain()
        await self.server.stop(self.shutdown_grace_s)
        log.info("%s stopped", self.name)
