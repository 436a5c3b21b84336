"""Which sessions run together: the generator's batching policy, as plain batch plans.

Each session with a pending demand has a deadline (when the gateway releases that chunk to
the listener). A session falls *due* one expected batch time (plus a margin) before its
deadline, so the generator does not race far ahead of the listener and prompt changes are
heard soon. When the most urgent session falls due, the scheduler plans one batch with it and
every session of its chunk length that falls due within its next chunk period (earliest
deadline first, up to ``max_batch_size``): sessions whose phases differ then share one batch
per period instead of splitting the period between several batches, each paying the fixed
cost of a batch. Sessions of different chunk lengths (``chunk_frames``) never share a batch:
a batch runs one compiled decode loop of a fixed length (a short session riding in a longer
batch would keep an exact prefix, but pay the long chunk's decoder steps at its own, more
frequent, period). A
gateway demands a session's chunks ahead of need, so a session served by one batch
usually has its next demand waiting already and can join the next batch (otherwise two
groups of sessions running back to back would each pay the fixed cost forever). A session is
in at most one batch at a time, as each chunk continues the state of the one before. The
scheduler only decides; `BatchRunner` executes the plans. Its clock is injected,
so the policy is tested without threads or sleeps.

Capacity is counted in sessions of the default 50-frame chunk. A session of shorter chunks
counts as the ratio of the predicted capacities at the two lengths (`Scheduler.session_load`):
its batches come more often, and each pays the per-chunk encoder pass and the fixed cost of a
batch, so it takes more of the generator per second of audio.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.generator.batch_buckets import batch_buckets, bucket_for
from services.generator.context_audio import ContextAudio
from services.generator.engine import ChunkJob, ChunkOutput
from services.generator.sessions import ChunkResult, GeneratorSession

# A session falls due this long (plus the expected batch time) before its deadline.
DUE_MARGIN_S = 0.25
# Most demands a session may have pending (a gateway demands a few chunks ahead).
MAX_PENDING_DEMANDS = 4
# Smoothing of the per-bucket batch time estimates.
EWMA_WEIGHT = 0.2
# Default share of each chunk period the predicted capacity may use for batches.
DEFAULT_TARGET_UTILIZATION = 0.95
# Assumed seconds of a batch before any was measured.
UNMEASURED_BATCH_S = 1.0


class BatchTimeModel:
    """Expected seconds of one batch as a function of its size and chunk length, learned from
    what ran.

    Times are kept per chunk length and bucket (a batch costs what its padded bucket costs)
    and interpolated linearly between measured buckets. A chunk length not measured yet is
    assumed to cost what the nearest longer measured length costs, or, longer than any
    measured, that length's cost scaled up in proportion to the frames: both upper bounds,
    as a batch's cost grows with its frames (16 decoder steps each) but never faster."""

    def __init__(self, buckets: Sequence[int]):
        self.buckets = tuple(buckets)
        self._seconds: dict[int, dict[int, float]] = {}  # chunk frames -> bucket -> seconds

    def observe(
        self, batch_size: int, seconds: float, chunk_frames: int = facts.CHUNK_FRAMES
    ) -> None:
        bucket = bucket_for(batch_size, self.buckets)
        measured = self._seconds.setdefault(chunk_frames, {})
        old = measured.get(bucket)
        measured[bucket] = (
            seconds if old is None else ((1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * seconds)
        )

    def measured_chunk_frames(self) -> tuple[int, ...]:
        """The chunk lengths with a measured batch time, ascending."""
        return tuple(sorted(self._seconds))

    def expected_s(self, batch_size: int, chunk_frames: int = facts.CHUNK_FRAMES) -> float:
        if not self._seconds:
            return UNMEASURED_BATCH_S
        if chunk_frames in self._seconds:
            return self._interpolated_s(self._seconds[chunk_frames], batch_size)
        longer = [frames for frames in self._seconds if frames > chunk_frames]
        if longer:
            return self._interpolated_s(self._seconds[min(longer)], batch_size)
        longest = max(self._seconds)
        return self._interpolated_s(self._seconds[longest], batch_size) * chunk_frames / longest

    def _interpolated_s(self, measured: dict[int, float], batch_size: int) -> float:
        bucket = bucket_for(batch_size, self.buckets)
        if bucket in measured:
            return measured[bucket]
        sizes = sorted(measured)
        below = [s for s in sizes if s < bucket]
        above = [s for s in sizes if s > bucket]
        if below and above:  # linear between the nearest measured buckets
            lo, hi = below[-1], above[0]
            return float(np.interp(bucket, [lo, hi], [measured[lo], measured[hi]]))
        if below:  # past the largest measured: no cheaper per session than it
            return measured[below[-1]] * bucket / below[-1]
        return measured[above[0]]

    def capacity(self, utilization: float, chunk_frames: int = facts.CHUNK_FRAMES) -> int:
        """Most sessions of ``chunk_frames`` frames per chunk kept in real time when batches
        run back to back and take at most ``utilization`` of each chunk period."""
        budget_s = chunk_frames / facts.FRAME_RATE_HZ * utilization
        best = 0
        for size in range(1, self.buckets[-1] + 1):
            batches_per_chunk = int(budget_s // self.expected_s(size, chunk_frames))
            best = max(best, batches_per_chunk * size)
        return best


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One batch to run: which sessions, at which bucket, and the jobs taken from them."""

    plan_id: int
    session_ids: tuple[str, ...]
    bucket: int
    jobs: tuple[ChunkJob, ...]
    planned_at_unix_s: float
    deadlines_unix_s: tuple[float, ...]
    queue_waits_s: tuple[float, ...]  # from falling due (or the demand, if later) to the plan
    chunk_frames: int = facts.CHUNK_FRAMES  # every job's chunk length

    @property
    def size(self) -> int:
        return len(self.session_ids)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio the batch generates, over all its sessions."""
        return self.size * self.chunk_frames / facts.FRAME_RATE_HZ


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A result for one session's stream; `deliver` is the session's own callback."""

    session_id: str
    deliver: Callable[[ChunkResult], None]
    result: ChunkResult


@dataclasses.dataclass(frozen=True)
class _Planned:
    session: GeneratorSession
    style_version: int
    sampling_version: int


class Scheduler:
    """The sessions placed on this generator and the batching policy over them.

    Thread-safe: the servicer changes sessions from the event loop, the runner asks for plans
    and reports results from its own thread."""

    def __init__(
        self,
        max_batch_size: int,
        *,
        target_utilization: float = DEFAULT_TARGET_UTILIZATION,
        fixed_capacity: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        self.buckets = batch_buckets(max_batch_size)
        self.max_batch_size = max_batch_size
        self.target_utilization = target_utilization
        self.fixed_capacity = fixed_capacity
        self.clock = clock
        self.batch_times = BatchTimeModel(self.buckets)
        self._sessions: dict[str, GeneratorSession] = {}
        self._in_flight: dict[int, list[_Planned]] = {}
        self._plan_ids = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    # --- state the servicer reads -------------------------------------------------------------
    @property
    def session_count(self) -> int:
        with self._cond:
            return len(self._sessions)

    def predicted_capacity_for(self, chunk_frames: int) -> int:
        """Sessions of ``chunk_frames`` frames per chunk the measured batch times keep in
        real time. Even a model slower than real time serves one listener (who will hear
        underruns)."""
        return max(1, self.batch_times.capacity(self.target_utilization, chunk_frames))

    @property
    def predicted_capacity(self) -> int:
        """Sessions of the default chunk length the measured batch times keep in real time."""
        return self.predicted_capacity_for(facts.CHUNK_FRAMES)

    @property
    def capacity(self) -> int:
        """Sessions of the default chunk length admitted before RESOURCE_EXHAUSTED: the
        override, else the prediction. Sessions of shorter chunks count by `session_load`."""
        return self.fixed_capacity or self.predicted_capacity

    def session_load(self, chunk_frames: int) -> float:
        """What one session of ``chunk_frames`` frames per chunk takes of the capacity, in
        default-length sessions: 1 at 50 frames; more for shorter chunks, in the ratio of the
        predicted capacities (their batches run more often, and each pays the encoder pass
        and the fixed cost of a batch). Until a length's batches are measured, its batches
        are assumed to cost what 50-frame batches cost, so its load is at most 50 / frames."""
        if chunk_frames == facts.CHUNK_FRAMES:
            return 1.0
        return self.predicted_capacity / self.predicted_capacity_for(chunk_frames)

    @property
    def load(self) -> float:
        """The placed sessions' summed `session_load`, comparable with `capacity`."""
        with self._cond:
            counts = collections.Counter(s.chunk_frames for s in self._sessions.values())
        return sum(count * self.session_load(frames) for frames, count in counts.items())

    def has_room_for(self, chunk_frames: int) -> bool:
        """Whether a session of ``chunk_frames`` frames per chunk is admitted: the first
        always is; any other while the load stays within the capacity."""
        return self.session_count == 0 or (
            self.load + self.session_load(chunk_frames) <= self.capacity + 1e-9
        )

    # --- session changes (called from the event loop) -----------------------------------------
    def add(self, session: GeneratorSession) -> None:
        with self._cond:
            self._sessions[session.session_id] = session

    def remove(self, session_id: str) -> None:
        with self._cond:
            session = self._sessions.pop(session_id, None)
            if session is not None:
                session.closed = True
                self._cond.notify_all()

    def set_style(self, session_id: str, embedding: np.ndarray | None, version: int) -> None:
        with self._cond:
            if (session := self._sessions.get(session_id)) is not None:
                session.style_embedding, session.style_version = embedding, version

    def set_sampling(self, session_id: str, sampling: SamplingSettings, version: int) -> None:
        with self._cond:
            if (session := self._sessions.get(session_id)) is not None:
                session.sampling, session.sampling_version = sampling, version

    def add_context_audio(self, session_id: str, audio: ContextAudio) -> None:
        """Audio to write into the session's context before its next chunk (in order)."""
        with self._cond:
            if (session := self._sessions.get(session_id)) is not None:
                session.add_context_audio(audio)

    def request_reset(self, session_id: str) -> None:
        """Forget the session's musical context before its next chunk (RESET_CONTEXT)."""
        with self._cond:
            if (session := self._sessions.get(session_id)) is not None:
                session.reset_requested = True

    def demand(self, session_id: str, deadline_unix_s: float) -> None:
        """One more chunk for the session, to be ready by ``deadline_unix_s``; ValueError when
        it already has `MAX_PENDING_DEMANDS` pending."""
        with self._cond:
            if (session := self._sessions.get(session_id)) is not None:
                if len(session.demands) >= MAX_PENDING_DEMANDS:
                    raise ValueError(f"at most {MAX_PENDING_DEMANDS} demands may be pending")
                session.demands.append((deadline_unix_s, self.clock()))
                self._cond.notify_all()

    # --- the policy ---------------------------------------------------------------------------
    def _waiting(self) -> list[GeneratorSession]:
        """Sessions with a pending demand and no batch in flight, most urgent first."""
        return sorted(
            (s for s in self._sessions.values() if s.demands and not s.in_flight),
            key=_next_deadline,
        )

    def _lead_s(self, waiting: list[GeneratorSession]) -> float:
        """How long before its deadline the most urgent session falls due: the expected time
        of a batch of every waiting session of its chunk length (up to the maximum) plus the
        margin."""
        frames = waiting[0].chunk_frames
        batch_size = sum(1 for s in waiting if s.chunk_frames == frames)
        return (
            self.batch_times.expected_s(min(batch_size, self.max_batch_size), frames) + DUE_MARGIN_S
        )

    def _candidates(self, waiting: list[GeneratorSession], now: float) -> list[GeneratorSession]:
        """The batch the most urgent session runs in: every waiting session of its chunk
        length that falls due within one of its chunk periods (from it, or from now when it
        is overdue), up to the maximum. A batch runs one compiled decode loop of a fixed
        length, so sessions of other chunk lengths wait for a batch of their own."""
        urgent = waiting[0]
        window_end = self._window_end(waiting, now)
        return [
            s
            for s in waiting
            if s.chunk_frames == urgent.chunk_frames and _next_deadline(s) < window_end
        ][: self.max_batch_size]

    def _window_end(self, waiting: list[GeneratorSession], now: float) -> float:
        """Deadlines before this join the most urgent session's batch."""
        urgent = waiting[0]
        return max(_next_deadline(urgent), now + self._lead_s(waiting)) + urgent.chunk_seconds

    def _joinable_by_in_flight(self, waiting: list[GeneratorSession], now: float) -> bool:
        """Whether a session now in flight has its next demand within the most urgent
        session's batch window (it would join that batch once its own batch finishes)."""
        urgent, window_end = waiting[0], self._window_end(waiting, now)
        return any(
            s.in_flight
            and s.demands
            and s.chunk_frames == urgent.chunk_frames
            and _next_deadline(s) < window_end
            for s in self._sessions.values()
        )

    def _due_at(self, deadline_unix_s: float, batch_size: int, chunk_frames: int) -> float:
        return (
            deadline_unix_s - self.batch_times.expected_s(batch_size, chunk_frames) - DUE_MARGIN_S
        )

    def plan(self) -> BatchPlan | None:
        """The batch to run now, or None when no session is due yet."""
        with self._cond:
            return self._plan_locked(self.clock())

    def plan_beside_in_flight(self) -> BatchPlan | None:
        """The batch to start now while another batch is still running, or None: as `plan`,
        but only when no session in flight would join it. Such a session joins once its own
        batch finishes, and one batch instead of two saves a batch's fixed cost, more than
        starting early gains."""
        with self._cond:
            return self._plan_locked(self.clock(), beside_in_flight=True)

    def _start_at(self) -> float | None:
        """When the most urgent waiting session falls due (None: nothing waits)."""
        waiting = self._waiting()
        if not waiting:
            return None
        return _next_deadline(waiting[0]) - self._lead_s(waiting)

    def _plan_locked(self, now: float, beside_in_flight: bool = False) -> BatchPlan | None:
        start_at = self._start_at()
        if start_at is None or start_at > now:
            return None
        waiting = self._waiting()
        if beside_in_flight and self._joinable_by_in_flight(waiting, now):
            return None
        batch = self._candidates(waiting, now)
        chunk_frames = batch[0].chunk_frames
        plan_id = next(self._plan_ids)
        self._in_flight[plan_id] = [_Planned(s, s.style_version, s.sampling_version) for s in batch]
        demands = []
        for session in batch:
            session.take_reset()
            session.in_flight = True
            demands.append(session.demands.popleft())
        plan = BatchPlan(
            plan_id=plan_id,
            session_ids=tuple(s.session_id for s in batch),
            bucket=bucket_for(len(batch), self.buckets),
            jobs=tuple(
                ChunkJob(
                    state=s.state,
                    style_embedding=s.style_embedding,
                    sampling=s.sampling,
                    context_audio=s.take_context_audio(),
                    chunk_frames=chunk_frames,
                )
                for s in batch
            ),
            planned_at_unix_s=now,
            deadlines_unix_s=tuple(deadline for deadline, _ in demands),
            queue_waits_s=tuple(
                max(
                    0.0,
                    now - max(demanded_at, self._due_at(deadline, len(batch), chunk_frames)),
                )
                for deadline, demanded_at in demands
            ),
            chunk_frames=chunk_frames,
        )
        return plan

    def next_due_unix_s(self) -> float | None:
        """When the most urgent waiting session falls due (None: no demand pending)."""
        with self._cond:
            return self._start_at()

    def wait_for_plan(self, timeout_s: float | None = None) -> BatchPlan | None:
        """Block until a batch is due and return its plan; None after ``timeout_s`` (real
        seconds) or once the scheduler is closed."""
        give_up_at = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._closed:
                now = self.clock()
                plan = self._plan_locked(now)
                if plan is not None:
                    return plan
                start_at = self._start_at()
                waits = [] if start_at is None else [max(0.001, start_at - now)]
                if give_up_at is not None:
                    if time.monotonic() >= give_up_at:
                        return None
                    waits.append(give_up_at - time.monotonic())
                self._cond.wait(min(waits) if waits else None)
            return None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more plans: wakes `wait_for_plan`, which returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- results (called by the runner) -------------------------------------------------------
    def complete(
        self, plan: BatchPlan, outputs: Sequence[ChunkOutput], generation_s: float
    ) -> list[Delivery]:
        """Record a finished batch: advance each still-open session's state and return what
        to deliver to it."""
        if len(outputs) != plan.size:
            raise ValueError(f"the engine returned {len(outputs)} outputs for {plan.size} jobs")
        self.batch_times.observe(plan.size, generation_s, plan.chunk_frames)
        deliveries = []
        with self._cond:
            self._cond.notify_all()  # the batch's sessions may have more demands waiting
            for planned, output, wait_s in zip(
                self._in_flight.pop(plan.plan_id), outputs, plan.queue_waits_s
            ):
                session = planned.session
                session.in_flight = False
                if session.closed:
                    continue
                session.state = output.state
                deliveries.append(
                    Delivery(
                        session.session_id,
                        session.deliver,
                        ChunkResult(
                            output=output,
                            style_version=planned.style_version,
                            sampling_version=planned.sampling_version,
                            queue_wait_s=wait_s,
                            generation_s=generation_s,
                            batch_size=plan.size,
                        ),
                    )
                )
        return deliveries

    def fail(self, plan: BatchPlan, error: str) -> list[Delivery]:
        """Record a failed batch: each still-open session gets the error (its gateway resumes
        it elsewhere from the last snapshot); the sessions' states are unchanged."""
        with self._cond:
            planned = self._in_flight.pop(plan.plan_id, [])
            for p in planned:
                p.session.in_flight = False
            self._cond.notify_all()
            return [
                Delivery(
                    p.session.session_id, p.session.deliver, ChunkResult(output=None, error=error)
                )
                for p in planned
                if not p.session.closed
            ]


def _next_deadline(session: GeneratorSession) -> float:
    return session.demands[0][0]
