"""Prometheus helpers: per-RPC counters and latencies for any gRPC aio server.

Names follow the README's metrics table: ``mrt_<service>_rpc_requests_total{method,code}`` and
``mrt_<service>_rpc_duration_seconds{method}``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

# Buckets for latencies from milliseconds to a whole chunk's worth of waiting and beyond.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by method and final status code, and times it."""

    def __init__(self, service: str):
        self.requests = Counter(
            f"mrt_{service}_rpc_requests_total",
            "RPCs handled, by method and status code",
            ["method", "code"],
        )
        self.duration = Histogram(
            f"mrt_{service}_rpc_duration_seconds",
            "RPC duration (whole stream for streaming RPCs)",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
        )

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if method in ("Check", "Watch", "ServerReflectionInfo"):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _record(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        started: float,
        error: BaseException | None,
    ) -> None:
        code = context.code()
        if code is None:
            code = (
                grpc.StatusCode.CANCELLED
                if isinstance(error, BaseException) and not isinstance(error, Exception)
                else (grpc.StatusCode.UNKNOWN if error else grpc.StatusCode.OK)
            )
        self.requests.labels(method, code.name).inc()
        self.duration.labels(method).observe(time.perf_counter() - started)

    def _wrap_unary(self, behaviour: Callable, method: str) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, error = time.perf_counter(), None
            try:
                return await behaviour(request, context)
            except BaseException as err:
                error = err
                raise
            finally:
                self._record(method, context, started, error)

        return wrapped

    def _wrap_stream(self, behaviour: Callable, method: str) -> Callable:
        async def wrapped(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            started, error = time.perf_counter(), None
            try:
                async for response in behaviour(request_iterator, context):
                    yield response
            except BaseException as err:
                error = err
                raise
            finally:
                self._record(method, context, started, error)

        return wrapped
