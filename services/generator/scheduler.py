"""Which sessions run together: earliest-deadline-first batches on one engine.

Each session with a pending demand has a deadline (when the gateway must release its next
chunk). A session becomes *due* one expected batch time (plus a margin) before its deadline,
so the generator never races far ahead of the listener and prompt changes are heard soon. The
scheduler thread takes the due sessions in deadline order, tops the batch up with sessions
that would fall due while it runs, up to ``max_batch_size``, and runs one batched chunk
generation for all of them. Sessions joining or leaving wait for at most the batch in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from services.common import model_facts as facts
from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S
from services.generator.engine import ChunkEngine, ChunkJob
from services.generator.sessions import ChunkResult, GeneratorSession

log = logging.getLogger(__name__)

BATCH_SECONDS = Histogram("mrt_generator_chunk_generation_seconds",
                          "Wall time of one batched chunk generation", buckets=LATENCY_BUCKETS_S)
QUEUE_WAIT = Histogram("mrt_generator_queue_wait_seconds",
                       "Time a due session waited for its batch to start", buckets=LATENCY_BUCKETS_S)
BATCH_SIZE = Histogram("mrt_generator_batch_size", "Sessions per batched generation",
                       buckets=BATCH_SIZE_BUCKETS)
REAL_TIME_FACTOR = Gauge("mrt_generator_real_time_factor",
                         "Audio seconds generated per compute second, recent batches")
CHUNKS = Counter("mrt_generator_chunks_generated_total", "Chunks generated")
LATENESS = Histogram("mrt_generator_chunk_lateness_seconds",
                     "How late a chunk was ready against its deadline (0 = on time)",
                     buckets=LATENCY_BUCKETS_S)
CAPACITY = Gauge("mrt_generator_capacity_sessions", "Sessions this generator keeps in real time")

# A session falls due this long (plus the expected batch time) before its deadline.
DUE_MARGIN_S = 0.25
# Smoothing of the per-batch-size time estimates.
EWMA_WEIGHT = 0.2


class BatchTimeModel:
    """Expected seconds of one batch as a function of its size, learned from what ran."""

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size
        self._seconds: dict[int, float] = {}

    def observe(self, batch_size: int, seconds: float) -> None:
        old = self._seconds.get(batch_size)
        self._seconds[batch_size] = seconds if old is None else (
            (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * seconds)

    def expected_s(self, batch_size: int) -> float:
        if not self._seconds:
            return 1.0
        if batch_size in self._seconds:
            return self._seconds[batch_size]
        sizes = sorted(self._seconds)
        below = [s for s in sizes if s < batch_size]
        above = [s for s in sizes if s > batch_size]
        if below and above:  # linear between the nearest measured sizes
            lo, hi = below[-1], above[0]
            frac = (batch_size - lo) / (hi - lo)
            return self._seconds[lo] + frac * (self._seconds[hi] - self._seconds[lo])
        nearest = below[-1] if below else above[0]
        return self._seconds[nearest] * max(1.0, batch_size / nearest) if below else self._seconds[nearest]

    def capacity(self, utilization: float) -> int:
        """Most sessions kept in real time when batches run back to back at ``utilization``."""
        budget_s = facts.CHUNK_SECONDS * utilization
        best = 0
        for size in range(1, self.max_batch_size + 1):
            batches_per_chunk = int(budget_s // self.expected_s(size))
            best = max(best, batches_per_chunk * size)
        return best


class Scheduler:
    """Runs batched chunk generation for the sessions on this generator (one thread)."""

    def __init__(self, engine: ChunkEngine, max_batch_size: int, *,
                 target_utilization: float = 0.8, fixed_capacity: int = 0,
                 clock: Callable[[], float] = time.time):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.target_utilization = target_utilization
        self.fixed_capacity = fixed_capacity
        self.clock = clock
        self.batch_times = BatchTimeModel(max_batch_size)
        self._sessions: dict[str, GeneratorSession] = {}
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._recent_rtf = 0.0

    # --- state the servicer reads -------------------------------------------------------------
    @property
    def session_count(self) -> int:
        with self._cond:
            return len(self._sessions)

    @property
    def capacity(self) -> int:
        if self.fixed_capacity:
            return self.fixed_capacity
        # Even a model slower than real time serves one listener (who will hear underruns).
        return max(1, self.batch_times.capacity(self.target_utilization))

    @property
    def recent_real_time_factor(self) -> float:
        return self._recent_rtf

    # --- lifecycle ----------------------------------------------------------------------------
    def warmup(self) -> None:
        """Compile the engine and measure batch times, so capacity is known before serving."""
        # Every power-of-two batch size up to the maximum: engines pad batches to such buckets,
        # so no batch shape compiles while sessions wait for it.
        sizes = sorted({1, self.max_batch_size,
                        *(2 ** i for i in range(self.max_batch_size.bit_length())
                          if 2 ** i <= self.max_batch_size)})
        for size in sizes:
            self.engine.warmup(size)  # compiles this batch shape
        for size in sorted({1, self.max_batch_size}):
            started = time.perf_counter()
            self.engine.warmup(size)
            self.batch_times.observe(size, time.perf_counter() - started)
        CAPACITY.set(self.capacity)
        log.info("warm-up done: %.3f s per batch of 1, %.3f s per batch of %d; capacity %d sessions",
                 self.batch_times.expected_s(1), self.batch_times.expected_s(self.max_batch_size),
                 self.max_batch_size, self.capacity)

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- session changes (called from the event loop) -----------------------------------------
    def add(self, session: GeneratorSession) -> None:
        with self._cond:
            self._sessions[session.session_id] = session

    def remove(self, session_id: str) -> None:
        with self._cond:
            session = self._sessions.pop(session_id, None)
            if session is not None:
                session.closed = True

    def update(self, session_id: str, change: Callable[[GeneratorSession], None]) -> None:
        """Apply ``change`` to a session under the lock (style, sampling, reset, demand)."""
        with self._cond:
            session = self._sessions.get(session_id)
            if session is not None:
                change(session)
                self._cond.notify_all()

    def demand(self, session_id: str, deadline_unix_s: float) -> None:
        def set_deadline(session: GeneratorSession) -> None:
            session.deadline_unix_s = deadline_unix_s
            session.demanded_at_unix_s = self.clock()
        self.update(session_id, set_deadline)

    # --- the batching loop ----------------------------------------------------------------------
    def _due_at(self, session: GeneratorSession, batch_size: int) -> float:
        assert session.deadline_unix_s is not None
        return session.deadline_unix_s - self.batch_times.expected_s(batch_size) - DUE_MARGIN_S

    def _next_batch(self) -> list[GeneratorSession] | None:
        """Wait for due sessions and pick a batch (EDF). None when stopping."""
        with self._cond:
            while self._running:
                waiting = sorted((s for s in self._sessions.values() if s.deadline_unix_s is not None),
                                 key=lambda s: s.deadline_unix_s)
                if not waiting:
                    self._cond.wait()
                    continue
                now = self.clock()
                size = min(len(waiting), self.max_batch_size)
                horizon = now + self.batch_times.expected_s(size)
                batch = [s for s in waiting if self._due_at(s, size) <= horizon][:self.max_batch_size]
                if batch and self._due_at(batch[0], size) <= now:
                    for session in batch:
                        session.take_reset()
                    return batch
                self._cond.wait(timeout=max(0.001, self._due_at(waiting[0], size) - now))
            return None

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[GeneratorSession]) -> None:
        started_unix = self.clock()
        with self._cond:
            jobs = [ChunkJob(state=s.state, style_embedding=s.style_embedding, sampling=s.sampling,
                             context_audio=s.take_context_audio())
                    for s in batch]
            versions = [(s.style_version, s.sampling_version) for s in batch]
            waits = [max(0.0, started_unix - max(s.demanded_at_unix_s, self._due_at(s, len(batch))))
                     for s in batch]
            deadlines = [s.deadline_unix_s for s in batch]
            for session in batch:
                session.deadline_unix_s = None
        started = time.perf_counter()
        try:
            outputs = self.engine.generate(jobs)
        except Exception as err:  # a failed batch fails its sessions, not the generator
            log.exception("batch of %d failed", len(batch))
            for session in batch:
                session.deliver(ChunkResult(output=None, error=f"chunk generation failed: {err}"))
            return
        seconds = time.perf_counter() - started
        self.batch_times.observe(len(batch), seconds)
        self._recent_rtf = len(batch) * facts.CHUNK_SECONDS / max(seconds, 1e-9)
        BATCH_SECONDS.observe(seconds)
        BATCH_SIZE.observe(len(batch))
        REAL_TIME_FACTOR.set(self._recent_rtf)
        CAPACITY.set(self.capacity)
        finished_unix = self.clock()
        with self._cond:
            for session, output, (style_v, sampling_v), wait_s, deadline in zip(
                    batch, outputs, versions, waits, deadlines):
                QUEUE_WAIT.observe(wait_s)
                LATENESS.observe(max(0.0, finished_unix - (deadline or finished_unix)))
                CHUNKS.inc()
                if session.closed:
                    continue
                session.state = output.state
                session.deliver(ChunkResult(
                    output=output, style_version=style_v, sampling_version=sampling_v,
                    queue_wait_s=wait_s, generation_s=seconds, batch_size=len(batch)))
