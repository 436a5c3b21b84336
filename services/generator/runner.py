"""The batch runner: executes the scheduler's plans on the engine, on one thread, and says
whether that thread is alive and making progress (the generator's health follows it).

While a batch runs on the device (an engine whose `start` returns before the device is done),
the runner plans the next batch if one is already due and starts it, so the host's work for
it (its inputs, its dispatch) overlaps the device's work on this one; then it finishes and
delivers the first. It does not when a session of the running batch would join the next one
(`Scheduler.plan_beside_in_flight`): one batch costs less than two. At most two batches are
in flight, and they finish in the order they started. A batch's generation time is its own:
from when the runner turned to it (its start, or the previous batch's finish if that came
later) to its finish, so back-to-back batches' times add up to the wall time they took.

Nothing a batch does can end the thread: an engine error fails that batch's sessions (their
gateway resumes them elsewhere from the last snapshot), and an error in a delivery or in the
metrics is logged and the loop goes on. After a failed batch the runner probes the engine
with a throw-away batch of one: an engine that fails that too is broken, not the batch. If
the loop dies anyway, stalls (no batch finished for ``stall_timeout_s`` while work is due),
or the engine is broken, `healthy()` turns False, the gRPC health check answers NOT_SERVING
and a liveness probe restarts the process. A broken engine is probed again every
``probe_interval_s``, so one that recovers serves again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram

from services.common import model_facts as facts
from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S
from services.generator.engine import ChunkEngine, PendingBatch, fresh_job
from services.generator.scheduler import BatchPlan, Delivery, Scheduler

log = logging.getLogger(__name__)

BATCH_SECONDS = Histogram(
    "mrt_generator_chunk_generation_seconds",
    "Seconds of one batched chunk generation, from its start (or the previous batch's finish, "
    "if later) to its results",
    buckets=LATENCY_BUCKETS_S,
)
QUEUE_WAIT = Histogram(
    "mrt_generator_queue_wait_seconds",
    "Time a due session waited for its batch to start",
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "mrt_generator_batch_size", "Sessions per batched generation", buckets=BATCH_SIZE_BUCKETS
)
REAL_TIME_FACTOR = Gauge(
    "mrt_generator_real_time_factor", "Audio seconds generated per compute second, recent batches"
)
CHUNKS = Counter("mrt_generator_chunks_generated_total", "Chunks generated")
FAILED_BATCHES = Counter(
    "mrt_generator_failed_batches_total", "Batches whose generation or bookkeeping raised"
)
LATENESS = Histogram(
    "mrt_generator_chunk_lateness_seconds",
    "How late a chunk was ready against its deadline (0 = on time)",
    buckets=LATENCY_BUCKETS_S,
)
CAPACITY = Gauge("mrt_generator_capacity_sessions", "Sessions this generator keeps in real time")

# Default seconds without a finished batch, while work is due, before the runner counts as
# stalled (ten chunk periods: far beyond any healthy batch).
DEFAULT_STALL_TIMEOUT_S = 10 * facts.CHUNK_SECONDS
# Default seconds between probes of an engine found broken.
DEFAULT_PROBE_INTERVAL_S = 10.0


@dataclasses.dataclass(frozen=True)
class _Started:
    """A batch started on the engine and not yet finished."""

    plan: BatchPlan
    batch: PendingBatch
    started_unix_s: float


class BatchRunner:
    """Runs `Scheduler` plans on a `ChunkEngine` in a thread of its own."""

    def __init__(
        self,
        engine: ChunkEngine,
        scheduler: Scheduler,
        *,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        warm_chunk_frames: Sequence[int] = (),
        clock: Callable[[], float] = time.time,
    ):
        """``warm_chunk_frames``: chunk lengths compiled and timed at start-up besides the
        default 50 frames; any other length compiles when a session first asks for it (and
        its first batch waits for that)."""
        self.engine = engine
        self.scheduler = scheduler
        self.stall_timeout_s = stall_timeout_s
        self.probe_interval_s = probe_interval_s
        self.clock = clock
        self.warm_chunk_frames = tuple(sorted(set(warm_chunk_frames) - {facts.CHUNK_FRAMES}))
        self.recent_real_time_factor = 0.0
        self.engine_broken = False  # a batch and the probe after it both failed
        self._last_finished_unix_s = clock()
        self._running_since_unix_s: float | None = None  # the oldest batch in flight's start
        self._in_flight: collections.deque[_Started] = collections.deque()  # oldest first
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._last_finished_unix_s = self.clock()
        self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.scheduler.close()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while self._in_flight or not self.scheduler.closed:
            if self._in_flight:
                self._overlap_and_finish_oldest()
                continue
            try:
                plan = self.scheduler.wait_for_plan(
                    self.probe_interval_s if self.engine_broken else None
                )
            except Exception:  # a policy bug: log it and ask again rather than go silent
                log.exception("planning a batch failed")
                time.sleep(0.1)
                continue
            if plan is not None:
                self._start(plan)
            elif self.engine_broken and not self.scheduler.closed:
                self.probe()

    def _overlap_and_finish_oldest(self) -> None:
        """While the oldest batch in flight is still on the device, start the next batch if
        one is due now; then finish the oldest."""
        if len(self._in_flight) == 1 and not self._in_flight[0].batch.ready():
            try:
                plan = None if self.scheduler.closed else self.scheduler.plan_beside_in_flight()
            except Exception:
                log.exception("planning a batch failed")
                plan = None
            if plan is not None:
                self._start(plan)
        self._finish(self._in_flight.popleft())

    # --- one batch ----------------------------------------------------------------------------
    def run(self, plan: BatchPlan) -> None:
        """Execute one plan to its end and deliver its results. Never raises."""
        self._start(plan)
        while self._in_flight:
            self._finish(self._in_flight.popleft())

    def _start(self, plan: BatchPlan) -> None:
        """Start a plan's batch on the engine and put it in flight; a batch that fails to
        start fails its sessions there and then."""
        started = self.clock()
        if not self._in_flight:
            self._running_since_unix_s = started
        try:
            batch = self.engine.start(list(plan.jobs))
        except Exception as err:
            if not self._in_flight:  # else the batch in flight's own time runs on
                self._ended(self.clock())
            self._fail(plan, err)
            return
        self._in_flight.append(_Started(plan, batch, started))

    def _finish(self, started: _Started) -> None:
        """Wait for a batch taken off the in-flight queue, record it and deliver its results."""
        plan = started.plan
        try:
            outputs = started.batch.finish()
            finished = self.clock()
            began = max(started.started_unix_s, self._last_finished_unix_s)
            generation_s = finished - began
            deliveries = self.scheduler.complete(plan, outputs, generation_s)
        except Exception as err:
            self._ended(self.clock())
            self._fail(plan, err)
            return
        self.engine_broken = False
        self._ended(finished)
        log.debug(
            "batch of %d (bucket %d, %d frames): started %.3f s after its plan, took %.3f s; "
            "deadlines %+.3f to %+.3f s from its end",
            plan.size,
            plan.bucket,
            plan.chunk_frames,
            began - plan.planned_at_unix_s,
            generation_s,
            min(plan.deadlines_unix_s) - finished,
            max(plan.deadlines_unix_s) - finished,
        )
        self.recent_real_time_factor = plan.audio_seconds / max(generation_s, 1e-9)
        self._deliver_all(deliveries)
        try:
            self._record(plan, generation_s, finished)
        except Exception:
            log.exception("recording the metrics of a batch failed")

    def _ended(self, finished_unix_s: float) -> None:
        """The oldest batch ended (finished or failed): the next in flight, if any, runs on
        its own time from now."""
        self._last_finished_unix_s = finished_unix_s
        self._running_since_unix_s = finished_unix_s if self._in_flight else None

    def _fail(self, plan: BatchPlan, err: Exception) -> None:
        """A failed batch fails its sessions, not the generator; then probe the engine."""
        log.exception("batch of %d failed", plan.size, exc_info=err)
        FAILED_BATCHES.inc()
        self._deliver_all(self.scheduler.fail(plan, f"chunk generation failed: {err}"))
        self.probe()

    def probe(self) -> None:
        """Run a throw-away batch of one: does the engine work at all?"""
        try:
            self.engine.generate([fresh_job()])
        except Exception:
            if not self.engine_broken:
                log.exception("the engine fails a probe batch too: reporting NOT_SERVING")
            self.engine_broken = True
            return
        if self.engine_broken:
            log.info("the engine passes its probe batch again")
        self.engine_broken = False

    def _deliver_all(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                delivery.deliver(delivery.result)
            except Exception:  # one stream's failure is not the others'
                log.exception("delivering a chunk to session %s failed", delivery.session_id)

    def _record(self, plan: BatchPlan, generation_s: float, finished_unix_s: float) -> None:
        BATCH_SECONDS.observe(generation_s)
        BATCH_SIZE.observe(plan.size)
        REAL_TIME_FACTOR.set(self.recent_real_time_factor)
        CAPACITY.set(self.scheduler.capacity)
        CHUNKS.inc(plan.size)
        for wait_s, deadline in zip(plan.queue_waits_s, plan.deadlines_unix_s):
            QUEUE_WAIT.observe(wait_s)
            LATENESS.observe(max(0.0, finished_unix_s - deadline))

    # --- liveness -----------------------------------------------------------------------------
    def healthy(self) -> bool:
        """False when the loop died, a batch or due work waited past the stall timeout, or
        the engine is broken."""
        if self._thread is None or not self._thread.is_alive() or self.engine_broken:
            return False
        now = self.clock()
        running_since = self._running_since_unix_s
        if running_since is not None and now - running_since > self.stall_timeout_s:
            return False
        due = self.scheduler.next_due_unix_s()
        if due is None:
            return True
        return now - max(due, self._last_finished_unix_s) <= self.stall_timeout_s

    # --- start-up -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile every batch bucket at each warmed chunk length, then time single batches
        so that capacity is known before serving. Each size is timed on its own, after every
        shape is compiled."""
        lengths = (facts.CHUNK_FRAMES, *self.warm_chunk_frames)
        buckets = self.scheduler.buckets
        for frames in lengths:
            for bucket in buckets:
                self.engine.warmup(bucket, frames)
        for frames in lengths:
            for size in sorted({1, buckets[len(buckets) // 2], buckets[-1]}):
                started = self.clock()
                self.engine.warmup(size, frames)
                self.scheduler.batch_times.observe(size, self.clock() - started, frames)
        CAPACITY.set(self.scheduler.capacity)
        log.info(
            "warm-up done: %.3f s per batch of 1, %.3f s per batch of %d; predicted "
            "capacity %d sessions; admitting %d",
            self.scheduler.batch_times.expected_s(1),
            self.scheduler.batch_times.expected_s(buckets[-1]),
            buckets[-1],
            self.scheduler.predicted_capacity,
            self.scheduler.capacity,
        )
        for frames in self.warm_chunk_frames:
            log.info(
                "warm-up at %d frames per chunk: %.3f s per batch of %d; a session counts "
                "as %.2f sessions of %d frames",
                frames,
                self.scheduler.batch_times.expected_s(buckets[-1], frames),
                buckets[-1],
                self.scheduler.session_load(frames),
                facts.CHUNK_FRAMES,
            )
