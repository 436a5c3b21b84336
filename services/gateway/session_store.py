"""Where sessions' resumable state lives, so a session outlives its stream and its gateway.

A session's record (``SessionRecord``) holds what a gateway needs to continue it: its settings,
style, playback state and the last few *resume points* (the generator state that makes chunk
``n``, with its place on the timeline). It is stored under a hash of the session's resume token,
so neither the store nor the logs ever hold a usable token.

Each stream that serves a session has an *epoch*; a resumed stream takes the next one, and a
write from an older epoch is refused (``save`` returns False): the stream the client left learns
it was superseded instead of overwriting the new one's state. A resumed stream's first write
*claims* its epoch: it is refused when another stream claimed the same epoch first (two resumes
of one record at the same moment), so only one of them continues the session.

``memory://`` keeps records in this process (one gateway: a client that lost its connection
resumes). ``redis://host:port/db`` shares them between gateways. Every store call is bounded by a
timeout; a failure is counted and logged and the caller carries on without resume.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import collections
import dataclasses
import hashlib
import json
import logging
import secrets
import time
import urllib.parse

from prometheus_client import Counter, Histogram

from services.common import model_facts as facts
from services.common.metrics import LATENCY_BUCKETS_S

log = logging.getLogger(__name__)

STORE_LATENCY = Histogram(
    "mrt_gateway_session_store_latency_seconds",
    "Session store call duration, by operation",
    ["op"],
    buckets=LATENCY_BUCKETS_S,
)
STORE_ERRORS = Counter(
    "mrt_gateway_session_store_errors_total",
    "Session store calls that failed or timed out, by operation",
    ["op"],
)

# Resume points kept per session: a client may have missed this many chunks sent before the cut.
RESUME_POINTS_KEPT = 4
# A record larger than this is not stored (it would be a bug: a record is about 200 KB at most).
MAX_RECORD_BYTES = 1024 * 1024


class StoreUnavailable(Exception):
    """The store could not be reached in time."""


def new_resume_token() -> str:
    """An opaque, unguessable token (256 random bits)."""
    return secrets.token_urlsafe(32)


def token_key(token: str) -> str:
    """The store key of a token: its hash, so the store never holds a usable token."""
    return "mrt:session:" + hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass
class ResumePoint:
    """The state that makes chunk ``sequence``: the generator snapshot after the chunk before it
    (empty: a fresh context) and where the chunk starts on the listener's timeline."""

    sequence: int
    position_s: float
    snapshot: bytes = b""  # a serialized generator SessionSnapshot


@dataclasses.dataclass
class SessionRecord:
    session_id: str
    model: str
    encoding: int
    opus_bitrate: int
    owner_key: str  # hex digest of the API key that opened the session ("" without keys)
    chunk_frames: int = facts.CHUNK_FRAMES  # a resumed session keeps its chunk length
    epoch: int = 0
    drain_requested: bool = False  # the gateway asked the client to reconnect (a resume's reason)
    playing: bool = False
    style: bytes = b""  # float32 little-endian [768]; empty = unconditioned
    prompt_style: bytes = b""
    prompt_weight_total: float = 0.0
    prompt_version: int = 0
    sampling: dict = dataclasses.field(default_factory=dict)
    injection: dict = dataclasses.field(default_factory=dict)
    config_version: int = 0
    points: list[ResumePoint] = dataclasses.field(default_factory=list)

    def add_point(self, point: ResumePoint) -> None:
        """Keep ``point`` (replacing any for a later or the same sequence) and the few before it."""
        self.points = [p for p in self.points if p.sequence < point.sequence][
            -(RESUME_POINTS_KEPT - 1) :
        ]
        self.points.append(point)

    def point_for(self, sequence: int) -> ResumePoint | None:
        return next((p for p in self.points if p.sequence == sequence), None)

    def encode(self) -> bytes:
        fields = dataclasses.asdict(self)
        for name in ("style", "prompt_style"):
            fields[name] = base64.b64encode(fields[name]).decode()
        for point in fields["points"]:
            point["snapshot"] = base64.b64encode(point["snapshot"]).decode()
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> SessionRecord:
        fields = json.loads(data)
        for name in ("style", "prompt_style"):
            fields[name] = base64.b64decode(fields[name])
        fields["points"] = [
            ResumePoint(p["sequence"], p["position_s"], base64.b64decode(p["snapshot"]))
            for p in fields["points"]
        ]
        return cls(**fields)


class SessionStore(abc.ABC):
    """Records by token key, expiring ``ttl_s`` after their last write."""

    def __init__(self, ttl_s: float, timeout_s: float):
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s

    async def save(self, key: str, record: SessionRecord, *, claim: bool = False) -> bool:
        """Write ``record``; False when a newer epoch owns the session (with ``claim``: when
        its own epoch is owned already). Raises StoreUnavailable."""
        data = record.encode()
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"session record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
        return await self._timed("save", self._save(key, record.epoch, data, claim))

    async def load(self, key: str) -> SessionRecord | None:
        """The record, or None when unknown or expired. Raises StoreUnavailable."""
        data = await self._timed("load", self._load(key))
        return None if data is None else SessionRecord.decode(data)

    async def _timed(self, op: str, call):
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except Exception as err:  # any failure of the store means "no resume", never a crash
            STORE_ERRORS.labels(op).inc()
            raise StoreUnavailable(
                f"session store {op} failed: {type(err).__name__}: {err}"
            ) from None
        finally:
            STORE_LATENCY.labels(op).observe(time.perf_counter() - started)

    @abc.abstractmethod
    async def _save(self, key: str, epoch: int, data: bytes, claim: bool) -> bool: ...

    @abc.abstractmethod
    async def _load(self, key: str) -> bytes | None: ...

    async def close(self) -> None:  # noqa: B027 - most stores hold nothing to close
        """Release connections (a no-op for stores that hold none)."""


class MemorySessionStore(SessionStore):
    """Records in this process, at most ``max_sessions`` (the least recently written go first)."""

    def __init__(
        self, ttl_s: float, timeout_s: float = 1.0, max_sessions: int = 10000, clock=time.monotonic
    ):
        super().__init__(ttl_s, timeout_s)
        self.max_sessions = max_sessions
        self.clock = clock
        self._records: collections.OrderedDict[str, tuple[float, int, bytes]] = (
            collections.OrderedDict()
        )

    async def _save(self, key: str, epoch: int, data: bytes, claim: bool) -> bool:
        current = self._live(key)
        if current is not None and (current[1] > epoch or (claim and current[1] == epoch)):
            return False
        self._records[key] = (self.clock() + self.ttl_s, epoch, data)
        self._records.move_to_end(key)
        while len(self._records) > self.max_sessions:
            self._records.popitem(last=False)
        return True

    async def _load(self, key: str) -> bytes | None:
        current = self._live(key)
        return None if current is None else current[2]

    def _live(self, key: str) -> tuple[float, int, bytes] | None:
        entry = self._records.get(key)
        if entry is not None and entry[0] <= self.clock():
            del self._records[key]
            return None
        return entry


# Write only when no newer epoch owns the key (ARGV[4] = 1, a claim: nor this epoch); refresh
# the expiry.
_SAVE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current then
  local owner, epoch = tonumber(current), tonumber(ARGV[1])
  if owner > epoch or (ARGV[4] == '1' and owner == epoch) then return 0 end
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisSessionStore(SessionStore):
    """Records in a Redis database shared by every gateway."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float = 1.0):
        super().__init__(ttl_s, timeout_s)
        import redis.asyncio  # only gateways configured with Redis need the client

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._save_script = self.client.register_script(_SAVE_SCRIPT)

    async def _save(self, key: str, epoch: int, data: bytes, claim: bool) -> bool:
        written = await self._save_script(
            keys=[key], args=[epoch, data, int(self.ttl_s * 1000), int(claim)]
        )
        return bool(written)

    async def _load(self, key: str) -> bytes | None:
        return await self.client.hget(key, "data")

    async def close(self) -> None:
        await self.client.aclose()


def open_session_store(
    url: str, *, ttl_s: float, timeout_s: float, memory_max_sessions: int = 10000
) -> SessionStore:
    """The store a ``--session-store`` URL names (``memory_max_sessions`` bounds a memory://
    one); raises ValueError for an unknown one."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "memory":
        return MemorySessionStore(ttl_s, timeout_s, max_sessions=memory_max_sessions)
    if parsed.scheme == "redis":
        if not parsed.hostname:
            raise ValueError(
                f"--session-store {url!r}: redis:// needs a host (redis://host:port/db)"
            )
        return RedisSessionStore(url, ttl_s, timeout_s)
    raise ValueError(f"--session-store {url!r}: use memory:// or redis://host:port/db")


def describe_store(url: str) -> str:
    """The URL without any password, for logs."""
    password = urllib.parse.urlparse(url).password
    return url.replace(f":{password}@", ":***@") if password else url
