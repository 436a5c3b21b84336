"""Keeping one session's resumable state in the session store, and reading it back.

The listener session tells its ``ResumeKeeper`` when something a resume needs changed (a chunk
arrived from the generator, a prompt, a config, play / pause); the keeper writes the record in
the background, the latest state winning, so the stream never waits for the store except to
make sure a chunk's resume point is stored before the chunk leaves (``flush``, bounded by the
store's timeout). When the store fails the session goes on without resume: the failure is
counted and logged, and the listener is warned once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np

from services.gateway.session_store import (
    ResumePoint,
    SessionRecord,
    SessionStore,
    StoreUnavailable,
    token_key,
)

log = logging.getLogger(__name__)


class ResumeKeeper:
    def __init__(self, store: SessionStore, token: str, record: SessionRecord):
        self.store = store
        self.token = token  # handed to the client only; logs name the session id
        self._key = token_key(token)
        self.record = record
        self._writer: asyncio.Task | None = None
        self._dirty = False
        self.superseded = False  # a newer stream resumed the session: this one should end
        self.failure_unreported: str | None = None  # why resume is unavailable, to tell the client
        self._failed = False

    async def save_now(self, *, claim: bool = False) -> bool:
        """Write the record and wait (at setup: the token must work before it is handed out;
        a resumed stream ``claim``s its epoch). False when the store failed."""
        try:
            self.superseded = not await self.store.save(self._key, self.record, claim=claim)
            return True
        except (StoreUnavailable, ValueError) as err:
            self._note_failure(err)
            return False

    def changed(self, point: ResumePoint | None = None) -> None:
        """The record changed (and ``point`` is where the chunk it names can be made from)."""
        if point is not None:
            self.record.add_point(point)
        if self._writer is not None and not self._writer.done():
            self._dirty = True
            return
        self._writer = asyncio.create_task(self._write())

    async def flush(self) -> None:
        """Wait for the write in progress (never longer than the store's timeout allows)."""
        if self._writer is not None and not self._writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), 2 * self.store.timeout_s)
            except TimeoutError:
                pass

    async def _write(self) -> None:
        while True:
            self._dirty = False
            if not await self.save_now():
                return
            if self._failed:
                self._failed = False
                log.info(
                    "session %s: session store reachable again; resume available",
                    self.record.session_id,
                )
            if not self._dirty or self.superseded:
                return

    def _note_failure(self, err: Exception) -> None:
        if not self._failed:
            self._failed = True
            self.failure_unreported = str(err)
            log.warning("session %s: resume unavailable: %s", self.record.session_id, err)


def float_bytes(values: np.ndarray | None) -> bytes:
    return b"" if values is None else np.asarray(values, "<f4").tobytes()


def float_array(data: bytes) -> np.ndarray | None:
    return np.frombuffer(data, "<f4").copy() if data else None


def settings_dict(settings) -> dict:
    return dataclasses.asdict(settings)
