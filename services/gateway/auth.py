"""API keys on the gateway's public API: who may call, and how many sessions each key may hold.

Clients send ``authorization: Bearer <key>`` metadata with every call of the MusicGeneration
service. Health checks and server reflection need no key (Kubernetes probes carry none).

The keys live in a text file (``--api-keys-file``; a mounted Kubernetes Secret works), one key
per line, fields separated by spaces::

    # NAME   KEY                                   OPTIONS
    alice    mrt-8d0c6e1f4b2a4f6b9c1d7e3a5b0f2c4d  max_sessions=4
    ci       sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef
    mallory  mrt-0b1e5c2d9a7f4e3c8b6d1a0f9e2c7b5a  revoked

- NAME identifies the key in logs, errors and metrics (letters, digits, ``_ . -``); the key
  itself is never logged.
- KEY is the key as clients send it (at least 16 characters, no spaces), or ``sha256:`` and the
  64 hex digits of its SHA-256, so the file need not hold the secret at all.
- ``max_sessions=N`` caps the key's concurrent Stream sessions (default: no cap);
  ``revoked`` keeps the key known but refuses it.
- Blank lines and text after ``#`` are ignored.

A new key: ``python -c "import secrets; print('mrt-' + secrets.token_hex(16))"``; its hash for
the file: ``printf %s "$KEY" | sha256sum``.

The file is checked for changes every ``--api-keys-reload-s`` seconds (its inode, size and
modification time, so the atomic symlink swap of a Secret update is seen too): adding,
revoking or removing a key takes effect without a restart, and a session already open on a key
that was revoked or removed is ended before its next message. A changed file that cannot be read or parsed is
reported and the keys before it stay in force.

Refusals: no key, a malformed header or an unknown key is ``UNAUTHENTICATED``; a revoked key is
``PERMISSION_DENIED``; a key at its session cap is ``RESOURCE_EXHAUSTED``. Presented keys are
hashed and compared with every stored hash in constant time. Metrics:
``mrt_gateway_auth_refused_total{code}`` and ``mrt_gateway_api_key_sessions{key_name}``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from services.common.config import add_flag
from services.common.security import SecurityConfigError, file_signature, optional_path

log = logging.getLogger(__name__)

REFUSED = Counter(
    "mrt_gateway_auth_refused_total", "Public calls refused by API-key checks", ["code"]
)
KEY_SESSIONS = Gauge(
    "mrt_gateway_api_key_sessions", "Open Stream sessions, by API key name", ["key_name"]
)

MIN_KEY_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SHA256_HEX = re.compile(r"sha256:([0-9a-fA-F]{64})")


class KeyFileError(SecurityConfigError):
    """The API key file cannot be read or has a malformed line."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes  # digest of the key; the key itself is not kept
    max_sessions: int | None = None  # concurrent Stream sessions; None = no cap
    revoked: bool = False


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(text: str) -> list[ApiKey]:
    """The keys of a key file (format in the module docstring); KeyFileError names the line."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            key = _parse_line(fields)
        except ValueError as err:
            raise KeyFileError(f"line {number}: {err}") from None
        if key.name in names:
            raise KeyFileError(f"line {number}: the name '{key.name}' is used twice")
        if key.sha256 in digests:
            raise KeyFileError(f"line {number}: key '{key.name}' repeats an earlier line's key")
        names.add(key.name)
        digests.add(key.sha256)
        keys.append(key)
    return keys


def _parse_line(fields: list[str]) -> ApiKey:
    if len(fields) < 2:
        raise ValueError("expected NAME KEY [max_sessions=N] [revoked]")
    name, secret, options = fields[0], fields[1], fields[2:]
    if not _NAME.fullmatch(name):
        raise ValueError(f"the name '{name}' may hold only letters, digits, '_', '.' and '-'")
    hashed = _SHA256_HEX.fullmatch(secret)
    if hashed:
        digest = bytes.fromhex(hashed.group(1))
    elif secret.startswith("sha256:"):
        raise ValueError(f"key '{name}': 'sha256:' must be followed by 64 hex digits")
    elif len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"key '{name}' is shorter than {MIN_KEY_CHARS} characters")
    else:
        digest = key_digest(secret)
    max_sessions, revoked = None, False
    for option in options:
        if option == "revoked":
            revoked = True
        elif option.startswith("max_sessions="):
            value = option.removeprefix("max_sessions=")
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"key '{name}': max_sessions must be a whole number >= 1")
            max_sessions = int(value)
        else:
            raise ValueError(
                f"key '{name}': unknown option '{option}' (expected max_sessions=N or revoked)"
            )
    return ApiKey(name, digest, max_sessions, revoked)


class ApiKeyFile:
    """The keys of a key file, re-read when the file changes (checked at most every interval)."""

    def __init__(
        self,
        path: Path,
        *,
        reload_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path)
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        try:
            self._signature = file_signature(self.path)
            self.keys = parse_api_keys(self.path.read_text())
        except OSError as err:
            raise KeyFileError(
                f"cannot read --api-keys-file {path}: {err.strerror or err}"
            ) from None
        self._next_check = clock() + reload_interval_s
        log.info("loaded %s", self._summary())

    def _summary(self) -> str:
        revoked = sum(key.revoked for key in self.keys)
        return f"{len(self.keys)} API keys ({revoked} revoked) from {self.path}"

    def refresh(self) -> None:
        """Re-read the file if the interval has passed and it changed."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval_s
        try:
            signature = file_signature(self.path)
            if signature == self._signature:
                return
            keys = parse_api_keys(self.path.read_text())
        except (OSError, KeyFileError) as err:
            log.error(
                "API key file %s not reloaded, the previous keys stay in force: %s",
                self.path,
                getattr(err, "strerror", None) or err,
            )
            return
        self.keys, self._signature = keys, signature
        log.info("reloaded %s", self._summary())

    def find(self, digest: bytes) -> ApiKey | None:
        """The key whose SHA-256 is ``digest``, comparing against every key in constant time."""
        self.refresh()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.sha256, digest):  # no early exit: timing reveals nothing
                found = key
        return found


def add_api_key_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--api-keys-file",
        type=optional_path,
        help="API key file (format: services/gateway/auth.py); unset: no key is needed",
    )
    add_flag(
        parser,
        "--api-keys-reload-s",
        default=2.0,
        type=float,
        help="how often the API key file is checked for changes",
    )


def api_key_interceptors_from_flags(
    args: argparse.Namespace, public_service: str
) -> list[ApiKeyInterceptor]:
    """The API-key check for ``public_service``; none (and a warning) without a key file."""
    if args.api_keys_file is None:
        log.warning("no --api-keys-file: the public API accepts calls without an API key")
        return []
    if args.tls_cert_file is None:
        log.warning("API keys are on but TLS is off: keys cross the network in clear text")
    keys = ApiKeyFile(args.api_keys_file, reload_interval_s=args.api_keys_reload_s)
    return [ApiKeyInterceptor(keys, [public_service])]


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the one ``authorization: Bearer <token>`` entry; None if absent or malformed."""
    values = [value for name, value in metadata or () if name == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


@dataclasses.dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str


_NO_KEY = Refusal(
    grpc.StatusCode.UNAUTHENTICATED,
    "this API needs an 'authorization: Bearer <API key>' metadata entry",
)

_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _with_behaviour(handler: grpc.RpcMethodHandler, behaviour: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serialization as ``handler`` that runs ``behaviour``."""
    factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks the API key of every call to ``protected_services``; caps sessions per key.

    Each bidirectional-streaming call (a listener session) holds one of its key's
    ``max_sessions`` slots until it ends, however it ends."""

    def __init__(self, keys: ApiKeyFile, protected_services: Sequence[str]):
        self.keys = keys
        self._prefixes = tuple(f"/{service}/" for service in protected_services)
        self._open_sessions: collections.Counter[str] = collections.Counter()

    def open_sessions(self, name: str) -> int:
        return self._open_sessions[name]

    async def intercept_service(
        self, continuation: Callable, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return _with_behaviour(handler, self._refusing(details.method, _NO_KEY))
        digest = key_digest(token)
        verdict = self._verdict(digest)
        if isinstance(verdict, Refusal):
            return _with_behaviour(handler, self._refusing(details.method, verdict))
        if handler.request_streaming and handler.response_streaming:
            return _with_behaviour(
                handler, self._session(handler.stream_stream, details.method, verdict, digest)
            )
        return handler

    def _verdict(self, digest: bytes) -> ApiKey | Refusal:
        key = self.keys.find(digest)
        if key is None:
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        if key.revoked:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"API key '{key.name}' is revoked")
        return key

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext, method: str, refusal: Refusal) -> None:
        REFUSED.labels(refusal.code.name).inc()
        log.info(
            "refused %s from %s: %s: %s", method, context.peer(), refusal.code.name, refusal.message
        )
        await context.abort(refusal.code, refusal.message)

    def _refusing(self, method: str, refusal: Refusal) -> Callable:
        async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            await self._refuse(context, method, refusal)

        return refuse

    def _session(self, behaviour: Callable, method: str, key: ApiKey, digest: bytes) -> Callable:
        """``behaviour`` holding a session slot of ``key``, ended if the key stops being valid."""

        async def session(
            request_iterator: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if key.max_sessions is not None and self._open_sessions[key.name] >= key.max_sessions:
                await self._refuse(
                    context,
                    method,
                    Refusal(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"API key '{key.name}' already has {key.max_sessions} concurrent sessions, "
                        "its limit (max_sessions)",
                    ),
                )
            self._open_sessions[key.name] += 1
            KEY_SESSIONS.labels(key.name).inc()
            try:
                async with contextlib.aclosing(behaviour(request_iterator, context)) as responses:
                    async for response in responses:
                        verdict = self._verdict(digest)
                        if isinstance(verdict, Refusal):
                            await self._refuse(context, method, verdict)
                        yield response
            finally:
                self._open_sessions[key.name] -= 1
                if not self._open_sessions[key.name]:
                    del self._open_sessions[key.name]
                KEY_SESSIONS.labels(key.name).dec()

        return session
