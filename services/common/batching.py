"""Micro-batching: concurrent requests within a short window share one model call."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Collects items for up to ``window_s`` (or ``max_batch_size`` items) and runs ``fn`` once
    for the batch in ``executor``, off the event loop. ``fn`` returns one result per item."""

    def __init__(
        self,
        fn: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch_size: int,
        window_s: float,
        executor: concurrent.futures.Executor,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        self._fn = fn
        self._max_batch_size = max_batch_size
        self._window_s = window_s
        self._executor = executor
        self._on_batch = on_batch
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Future] = set()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max_batch_size:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self._on_batch(len(batch))
        items = [item for item, _ in batch]
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._fn, items
            )
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
