"""The session store's rules: expiry, bounds, epochs, and failing without hanging."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.gateway.__main__ import parse_args as gateway_args
from services.gateway.session_store import (
    RESUME_POINTS_KEPT,
    MemorySessionStore,
    RedisSessionStore,
    ResumePoint,
    SessionRecord,
    StoreUnavailable,
    describe_store,
    new_resume_token,
    open_session_store,
    token_key,
)


def _record(epoch: int = 0) -> SessionRecord:
    return SessionRecord(
        session_id="s1",
        model="mock",
        encoding=0,
        opus_bitrate=0,
        owner_key="",
        epoch=epoch,
        style=b"\x00\x00\x80?",
        points=[ResumePoint(0, 0.0)],
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_record_round_trips_through_its_encoding():
    record = _record()
    record.add_point(ResumePoint(1, 2.0, b"\x01\x02"))
    assert SessionRecord.decode(record.encode()) == record


def test_only_the_last_resume_points_are_kept_and_a_rewind_drops_later_ones():
    record = _record()
    for sequence in range(1, 10):
        record.add_point(ResumePoint(sequence, 2.0 * sequence))
    assert [p.sequence for p in record.points] == list(range(10 - RESUME_POINTS_KEPT, 10))
    record.add_point(ResumePoint(8, 16.0, b"again"))
    assert [p.sequence for p in record.points] == [6, 7, 8]
    assert record.point_for(8).snapshot == b"again" and record.point_for(9) is None


def test_tokens_are_unguessable_and_stored_only_as_a_hash():
    tokens = {new_resume_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 43 for t in tokens)
    token = tokens.pop()
    assert token not in token_key(token)


def test_memory_records_expire_after_the_ttl():
    clock = FakeClock()
    store = MemorySessionStore(ttl_s=10.0, clock=clock)
    assert asyncio.run(store.save("k", _record()))
    clock.now += 9.9
    assert asyncio.run(store.load("k")) is not None
    clock.now += 0.2
    assert asyncio.run(store.load("k")) is None


def test_memory_store_is_bounded_and_drops_the_least_recently_written():
    store = MemorySessionStore(ttl_s=10.0, max_sessions=2)

    async def fill():
        for key in ("a", "b", "c"):
            await store.save(key, _record())
        return [await store.load(key) is not None for key in ("a", "b", "c")]

    assert asyncio.run(fill()) == [False, True, True]


def test_an_older_epoch_cannot_overwrite_a_newer_one():
    store = MemorySessionStore(ttl_s=10.0)

    async def race():
        await store.save("k", _record(epoch=1))
        stale = await store.save("k", _record(epoch=0))
        return stale, (await store.load("k")).epoch

    assert asyncio.run(race()) == (False, 1)


def test_an_unreachable_redis_fails_fast_with_store_unavailable():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", ttl_s=10.0, timeout_s=0.5)

    async def save():
        try:
            await store.save("k", _record())
        finally:
            await store.close()

    with pytest.raises(StoreUnavailable, match="save failed"):
        asyncio.run(save())


@pytest.mark.parametrize("url", ["", "http://x", "redis://", "memory"])
def test_unknown_store_urls_are_refused(url):
    with pytest.raises(ValueError, match="--session-store"):
        open_session_store(url, ttl_s=1.0, timeout_s=1.0)


def test_passwords_never_reach_the_logs():
    assert describe_store("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert describe_store("memory://") == "memory://"


def test_the_memory_store_bound_is_a_gateway_flag(monkeypatch, capsys):
    monkeypatch.setenv("MRT_SESSION_STORE_MAX_SESSIONS", "3")
    args = gateway_args([])
    store = open_session_store(
        args.session_store,
        ttl_s=1.0,
        timeout_s=1.0,
        memory_max_sessions=args.session_store_max_sessions,
    )
    assert isinstance(store, MemorySessionStore) and store.max_sessions == 3
    with pytest.raises(SystemExit):
        gateway_args(["--session-store-max-sessions", "0"])
    assert "--session-store-max-sessions must be >= 1" in capsys.readouterr().err
