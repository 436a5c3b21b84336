"""The generators the gateway can place sessions on: discovery, load polling, placement.

Addresses come from ``--generator-addresses``: a comma-separated list of ``host:port``
entries, where an entry ``dns:///name:port`` is re-resolved periodically (a Kubernetes headless
Service returns one address per ready pod), so pods coming and going are followed. Each
generator's LoadReport is polled; a new session goes to the healthy, non-draining generator
serving the requested model with the most free slots.

A generator that leaves the DNS answer is *leaving*: it takes no new sessions, its sessions
move elsewhere at their next chunk boundary (like a drain), and its channel is closed once no
session stream uses it. A generator that misses several chunk deadlines in a row is unhealthy
for placement until it answers a load poll again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import Gauge

from services.common.proto.mrt.v1 import generator_pb2, generator_pb2_grpc
from services.common.server import channel_options

log = logging.getLogger(__name__)

FREE_SLOTS = Gauge(
    "mrt_gateway_generator_capacity_free_slots", "Free session slots summed over healthy generators"
)
GENERATORS = Gauge("mrt_gateway_generators", "Generators known, by health", ["state"])

Resolver = Callable[[str, int], Awaitable[list[str]]]

# Chunk deadlines missed in a row (over all its sessions) before a generator is unhealthy.
MISSED_DEADLINES_UNHEALTHY = 3


class NoCapacity(RuntimeError):
    """Every generator serving the model is full."""


class NoGenerator(RuntimeError):
    """No healthy generator serves the model (or none is reachable at all)."""


async def resolve_dns(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as ``ip:port`` (IPv6 in brackets)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = set()
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        addresses.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(addresses)


@dataclasses.dataclass
class GeneratorEndpoint:
    address: str
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorStub
    load: generator_pb2.LoadReport | None = None
    healthy: bool = False
    placed_since_poll: int = 0  # sessions placed since the last load report
    links: int = 0  # session streams open on the channel
    leaving: bool = False  # gone from discovery: no new sessions, closed once links is 0
    missed_deadlines: int = 0  # chunk deadlines missed since its last delivered chunk
    suspect: bool = False  # missed too many deadlines: no placement until a poll answers

    @property
    def free_slots(self) -> int:
        if self.load is None:
            return 0
        return self.load.free_slots - self.placed_since_poll


class GeneratorPool:
    def __init__(
        self,
        targets: list[str],
        *,
        poll_interval_s: float,
        rpc_timeout_s: float,
        max_message_bytes: int,
        resolver: Resolver = resolve_dns,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
    ):
        self.targets = targets
        self.poll_interval_s = poll_interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self.max_message_bytes = max_message_bytes
        self.resolver = resolver
        self.credentials = credentials
        self.tls_server_name = tls_server_name
        self.endpoints: dict[str, GeneratorEndpoint] = {}
        self._task: asyncio.Task | None = None
        self._refreshing = asyncio.Lock()

    # --- discovery and polling -------------------------------------------------------------------
    async def discover(self) -> list[str]:
        """The current set of generator addresses."""
        addresses: list[str] = []
        for target in self.targets:
            if target.startswith("dns:///"):
                host, _, port = target.removeprefix("dns:///").rpartition(":")
                try:
                    addresses += await self.resolver(host, int(port))
                except (OSError, ValueError) as err:
                    log.warning("cannot resolve %s: %s", target, err)
            else:
                addresses.append(target)
        return sorted(set(addresses))

    def _connect(self, address: str) -> GeneratorEndpoint:
        options = channel_options(self.max_message_bytes, self.tls_server_name)
        channel = (
            grpc.aio.secure_channel(address, self.credentials, options)
            if self.credentials
            else grpc.aio.insecure_channel(address, options)
        )
        return GeneratorEndpoint(address, channel, generator_pb2_grpc.GeneratorStub(channel))

    async def refresh(self) -> None:
        """Follow discovery, then poll every generator's load."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        addresses = set(await self.discover())
        for address, endpoint in list(self.endpoints.items()):
            if address not in addresses and not endpoint.leaving:
                log.info(
                    "generator %s left discovery; its %d session(s) move at their next "
                    "chunk boundary",
                    address,
                    endpoint.links,
                )
                endpoint.leaving = True
            elif address in addresses and endpoint.leaving:
                log.info("generator %s is back in discovery", address)
                endpoint.leaving = False
        await self._close_unused_leaving()
        for new in addresses - set(self.endpoints):
            log.info("generator %s found", new)
            self.endpoints[new] = self._connect(new)
        await asyncio.gather(
            *(self._poll(e) for e in list(self.endpoints.values()) if not e.leaving)
        )
        healthy = [e for e in self.endpoints.values() if e.healthy and not e.leaving]
        FREE_SLOTS.set(sum(max(0, e.free_slots) for e in healthy if not e.load.draining))
        GENERATORS.labels("healthy").set(len(healthy))
        GENERATORS.labels("unhealthy").set(len(self.endpoints) - len(healthy))

    async def _close_unused_leaving(self) -> None:
        """Close the channels of generators that left discovery once no session uses them."""
        for address, endpoint in list(self.endpoints.items()):
            if endpoint.leaving and endpoint.links == 0:
                log.info("generator %s closed (no session uses it)", address)
                await self.endpoints.pop(address).channel.close()

    async def _poll(self, endpoint: GeneratorEndpoint) -> None:
        try:
            endpoint.load = await endpoint.stub.GetLoad(
                generator_pb2.GetLoadRequest(), timeout=self.rpc_timeout_s
            )
            if not endpoint.healthy:
                log.info("generator %s is up: %s", endpoint.address, endpoint.load.generator_id)
            endpoint.healthy = True
            endpoint.suspect = False
            endpoint.placed_since_poll = 0
        except grpc.aio.AioRpcError as err:
            if endpoint.healthy:
                log.warning("generator %s is unreachable: %s", endpoint.address, err.code().name)
            endpoint.healthy = False

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception:  # keep polling whatever one round did
                log.exception("refreshing generators failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for endpoint in self.endpoints.values():
            await endpoint.channel.close()

    # --- placement ---------------------------------------------------------------------------------
    def models(self) -> set[str]:
        return {e.load.model for e in self.endpoints.values() if e.healthy and not e.leaving}

    def mark_unhealthy(self, address: str) -> None:
        """No placement on ``address`` until it answers a load poll again."""
        endpoint = self.endpoints.get(address)
        if endpoint is not None:
            endpoint.healthy = False

    def missed_deadline(self, endpoint: GeneratorEndpoint) -> None:
        """A chunk demanded from ``endpoint`` did not arrive in time."""
        endpoint.missed_deadlines += 1
        if endpoint.missed_deadlines >= MISSED_DEADLINES_UNHEALTHY and not endpoint.suspect:
            log.warning(
                "generator %s missed %d chunk deadlines; no placement on it until it answers again",
                endpoint.address,
                endpoint.missed_deadlines,
            )
            endpoint.suspect = True

    @staticmethod
    def delivered(endpoint: GeneratorEndpoint) -> None:
        """A chunk arrived from ``endpoint``: it is generating again."""
        endpoint.missed_deadlines = 0

    def candidates(self, model: str, exclude: set[str] = frozenset()) -> list[GeneratorEndpoint]:
        """Generators to try for a new session, most headroom first.

        Raises NoGenerator when none serves ``model``, NoCapacity when all of those are full."""
        serving = [
            e
            for e in self.endpoints.values()
            if e.healthy
            and not e.suspect
            and not e.leaving
            and not e.load.draining
            and e.load.model == model
            and e.address not in exclude
        ]
        if not serving:
            raise NoGenerator(f"no healthy generator serves model '{model}'")
        with_room = [e for e in serving if e.free_slots > 0]
        if not with_room:
            raise NoCapacity(f"all {len(serving)} generators serving '{model}' are at capacity")
        return sorted(with_room, key=lambda e: (-e.free_slots, e.load.active_sessions, e.address))

    def has_room_elsewhere(self, model: str, address: str) -> bool:
        """Whether a generator other than ``address`` could take a session of ``model`` now."""
        try:
            self.candidates(model, exclude={address})
        except (NoCapacity, NoGenerator):
            return False
        return True

    def placed(self, endpoint: GeneratorEndpoint) -> None:
        """Count a placement until the next load report includes it."""
        endpoint.placed_since_poll += 1
