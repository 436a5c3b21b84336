"""The generator's batching policy (plans from an injected clock) and its batch runner:
results, failures that do not stop it, liveness, and the start-up capacity prediction."""

import threading

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.engine import ChunkEngine, ChunkOutput, PendingBatch
from services.generator.runner import BatchRunner
from services.generator.scheduler import (
    DUE_MARGIN_S,
    MAX_PENDING_DEMANDS,
    BatchTimeModel,
    Scheduler,
)
from services.generator.sessions import GeneratorSession


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedEngine(ChunkEngine):
    """Records each batch's seeds and advances the fake clock by a + b * batch size (plus a
    compile cost the first time a size is seen); raises while `failing`; blocks on `gate`
    when one is set."""

    name = "scripted"

    def __init__(self, clock: FakeClock, a: float = 0.1, b: float = 0.01, compile_s: float = 0.0):
        self.clock, self.a, self.b, self.compile_s = clock, a, b, compile_s
        self.batches: list[list[int]] = []
        self.compiled: set[int] = set()
        self.frames_seen: set[int] = set()
        self.failing = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def generate(self, jobs):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.failing:
            raise RuntimeError("boom")
        if len(jobs) not in self.compiled:
            self.compiled.add(len(jobs))
            self.clock.now += self.compile_s
        self.clock.now += self.a + self.b * len(jobs)
        self.batches.append([job.sampling.seed for job in jobs])
        self.frames_seen.update(job.chunk_frames for job in jobs)
        return [
            ChunkOutput(
                audio=np.zeros((facts.CHUNK_SAMPLES, facts.CHANNELS), np.float32),
                state=SessionState(
                    job.state.context_tokens, job.state.crossfade_tail, job.state.chunk_index + 1
                ),
            )
            for job in jobs
        ]


def make_session(seed: int, results: list, chunk_frames: int = 50) -> GeneratorSession:
    return GeneratorSession(
        session_id=f"s{seed}",
        state=SessionState.fresh(),
        sampling=SamplingSettings(seed=seed),
        deliver=results.append,
        chunk_frames=chunk_frames,
    )


def scheduler_with(clock: FakeClock, max_batch_size: int = 4, batch_s: float = 0.1) -> Scheduler:
    scheduler = Scheduler(max_batch_size, fixed_capacity=100, clock=clock)
    for size in scheduler.buckets:
        scheduler.batch_times.observe(size, batch_s)
    return scheduler


def test_the_most_urgent_sessions_run_together_earliest_deadline_first_up_to_the_maximum():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=2)
    results: list = []
    for seed, deadline_in_s in [(1, 0.3), (2, -1.0), (3, -0.5)]:
        scheduler.add(make_session(seed, results))
        scheduler.demand(f"s{seed}", clock.now + deadline_in_s)
    plan = scheduler.plan()
    assert plan is not None and plan.session_ids == ("s2", "s3") and plan.bucket == 2
    assert [job.sampling.seed for job in plan.jobs] == [2, 3]
    second = scheduler.plan()
    assert second is not None and second.session_ids == ("s1",)
    assert scheduler.plan() is None  # nothing is demanded any more


def test_a_session_falls_due_one_batch_time_and_a_margin_before_its_deadline():
    clock = FakeClock()
    scheduler = scheduler_with(clock, batch_s=0.2)
    scheduler.add(make_session(7, []))
    scheduler.demand("s7", clock.now + 1.0)
    due = clock.now + 1.0 - 0.2 - DUE_MARGIN_S
    assert scheduler.next_due_unix_s() == pytest.approx(due)
    clock.now = due - 0.01
    assert scheduler.plan() is None
    clock.now = due
    plan = scheduler.plan()
    assert plan is not None and plan.session_ids == ("s7",)


def test_sessions_due_within_one_chunk_period_of_the_most_urgent_share_its_batch():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=16)
    for seed in range(5):
        scheduler.add(make_session(seed, []))
    # Deadlines spread over more than a period: all but the last fall in the first window.
    for seed, offset in enumerate([0.5, 0.9, 1.6, 2.3, 0.5 + facts.CHUNK_SECONDS]):
        scheduler.demand(f"s{seed}", clock.now + offset)
    clock.now = scheduler.next_due_unix_s()
    plan = scheduler.plan()
    assert plan is not None and plan.session_ids == ("s0", "s1", "s2", "s3")
    assert plan.bucket == 4  # a batch of 4 is not padded to a power of two above it


def test_a_batch_of_nine_runs_at_bucket_nine():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=16)
    for seed in range(9):
        scheduler.add(make_session(seed, []))
        scheduler.demand(f"s{seed}", clock.now)
    plan = scheduler.plan()
    assert plan is not None and plan.size == 9 and plan.bucket == 9


def test_a_removed_session_receives_nothing_from_its_batch_in_flight():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    engine = ScriptedEngine(clock)
    runner = BatchRunner(engine, scheduler, clock=clock)
    kept, removed = [], []
    scheduler.add(make_session(1, kept))
    scheduler.add(make_session(2, removed))
    scheduler.demand("s1", clock.now)
    scheduler.demand("s2", clock.now)
    plan = scheduler.plan()
    scheduler.remove("s2")
    runner.run(plan)
    assert removed == [] and len(kept) == 1
    assert kept[0].output.state.chunk_index == 1 and kept[0].batch_size == 2


def test_a_failed_batch_fails_its_sessions_and_the_next_batch_runs():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    engine = ScriptedEngine(clock)
    engine.failing = True
    runner = BatchRunner(engine, scheduler, clock=clock)
    results: list = []
    scheduler.add(make_session(1, results))
    scheduler.demand("s1", clock.now)
    runner.run(scheduler.plan())
    assert results[0].output is None and "boom" in results[0].error
    engine.failing = False
    scheduler.demand("s1", clock.now)
    runner.run(scheduler.plan())
    assert results[1].output is not None and results[1].output.state.chunk_index == 1


def test_a_raising_delivery_does_not_keep_the_others_from_their_chunks():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    runner = BatchRunner(ScriptedEngine(clock), scheduler, clock=clock)
    results: list = []

    def broken(result):
        raise RuntimeError("the stream is gone")

    scheduler.add(
        GeneratorSession(
            session_id="broken",
            state=SessionState.fresh(),
            sampling=SamplingSettings(),
            deliver=broken,
        )
    )
    scheduler.add(make_session(1, results))
    scheduler.demand("broken", clock.now)
    scheduler.demand("s1", clock.now)
    runner.run(scheduler.plan())
    assert len(results) == 1 and results[0].output is not None


def test_the_runner_thread_survives_a_broken_engine_reports_it_and_sees_it_recover():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    engine = ScriptedEngine(clock)
    engine.failing = True
    runner = BatchRunner(engine, scheduler, probe_interval_s=0.01, clock=clock)
    assert not runner.healthy()  # not started
    results: list = []
    scheduler.add(make_session(1, results))
    runner.start()
    try:
        assert runner.healthy()
        scheduler.demand("s1", clock.now)
        _wait(lambda: results)
        assert "boom" in results[0].error
        _wait(lambda: not runner.healthy())  # the probe batch after it failed too
        engine.failing = False
        _wait(runner.healthy)  # a later probe passes
        scheduler.demand("s1", clock.now)
        _wait(lambda: len(results) == 2)
        assert results[1].output is not None and runner.healthy()
    finally:
        runner.stop()
    assert not runner.healthy()  # the loop has ended


def test_a_batch_that_fails_alone_leaves_the_runner_healthy():
    clock = FakeClock()
    scheduler = scheduler_with(clock)

    class PoisonedEngine(ScriptedEngine):
        def generate(self, jobs):
            if any(job.sampling.seed == 13 for job in jobs):
                raise ValueError("a bad row")
            return super().generate(jobs)

    runner = BatchRunner(PoisonedEngine(clock), scheduler, clock=clock)
    runner._thread = threading.current_thread()  # as if started
    results: list = []
    scheduler.add(make_session(13, results))
    scheduler.demand("s13", clock.now)
    runner.run(scheduler.plan())
    assert "a bad row" in results[0].error
    assert runner.healthy() and not runner.engine_broken


def test_a_batch_that_never_finishes_makes_the_runner_unhealthy_after_the_stall_timeout():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    engine = ScriptedEngine(clock)
    engine.gate = threading.Event()
    runner = BatchRunner(engine, scheduler, stall_timeout_s=20.0, clock=clock)
    scheduler.add(make_session(1, []))
    runner.start()
    try:
        scheduler.demand("s1", clock.now)
        assert engine.entered.wait(5)
        clock.now += 19.0
        assert runner.healthy()
        clock.now += 2.0
        assert not runner.healthy()
    finally:
        engine.gate.set()
        runner.stop()


def test_work_due_with_no_batch_finishing_makes_the_runner_unhealthy():
    clock = FakeClock()
    scheduler = scheduler_with(clock)
    engine = ScriptedEngine(clock)
    runner = BatchRunner(engine, scheduler, stall_timeout_s=20.0, clock=clock)
    runner._thread = threading.current_thread()  # a loop that is alive but never plans
    scheduler.add(make_session(1, []))
    scheduler.demand("s1", clock.now + 1.0)
    due = scheduler.next_due_unix_s()
    clock.now = due + 19.0
    assert runner.healthy()
    clock.now = due + 21.0
    assert not runner.healthy()


def test_warm_up_times_single_batches_not_the_compilation_of_every_bucket():
    clock = FakeClock()
    scheduler = Scheduler(16, clock=clock)
    engine = ScriptedEngine(clock, a=0.25, b=0.0125, compile_s=30.0)
    BatchRunner(engine, scheduler, clock=clock).warm_up()
    assert engine.compiled == set(scheduler.buckets)
    assert scheduler.batch_times.expected_s(1) == pytest.approx(0.2625)
    assert scheduler.batch_times.expected_s(16) == pytest.approx(0.45)
    # 95% of a 2 s period: four batches of 16 (0.45 s each) fit.
    assert scheduler.predicted_capacity == 64


@pytest.mark.parametrize(
    "seconds_by_size, expected",
    [
        ({1: 0.1, 16: 0.4}, 64),  # four batches of 16 fit in 1.6 s
        ({1: 1.0, 16: 8.0}, 2),  # a batch of 2 (about 1.5 s) fits once
        ({1: 3.0, 16: 30.0}, 0),  # nothing keeps real time
    ],
)
def test_capacity_follows_measured_batch_times(seconds_by_size, expected):
    model = BatchTimeModel(Scheduler(16).buckets)
    for size, seconds in seconds_by_size.items():
        model.observe(size, seconds)
    assert model.capacity(utilization=0.8) == expected


def _wait(predicate, timeout_s: float = 5.0) -> None:
    """Wait for the runner thread to make `predicate` true (no timing is asserted)."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        pause.wait(0.005)
    raise AssertionError("the runner did not get there")


def test_a_session_is_in_one_batch_at_a_time_and_its_next_demand_joins_the_next_batch():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=8)
    runner = BatchRunner(ScriptedEngine(clock, a=0.0, b=0.0), scheduler, clock=clock)
    scheduler.add(make_session(0, []))
    scheduler.add(make_session(1, []))
    for offset in (0.0, 2.0):  # s0 demands two chunks ahead
        scheduler.demand("s0", clock.now + offset)
    first = scheduler.plan()
    assert first is not None and first.session_ids == ("s0",)
    scheduler.demand("s1", clock.now - 1.0)
    second = scheduler.plan()  # s0's next chunk needs the state its batch in flight makes
    assert second is not None and second.session_ids == ("s1",)
    runner.run(first)
    runner.run(second)
    scheduler.demand("s1", clock.now + 1.0)
    clock.now = scheduler.next_due_unix_s()
    third = scheduler.plan()
    assert third is not None and third.session_ids == ("s1", "s0")
    assert third.jobs[1].state.chunk_index == 1  # continues from the first batch's chunk


@pytest.mark.parametrize("demands_ahead, started_beside", [(1, True), (2, False)])
def test_a_batch_starts_beside_one_in_flight_only_if_no_session_of_that_one_would_join_it(
    demands_ahead, started_beside
):
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=8)
    scheduler.add(make_session(0, []))
    scheduler.add(make_session(1, []))
    for chunk in range(demands_ahead):
        scheduler.demand("s0", clock.now + 2.0 * chunk)
    in_flight = scheduler.plan()
    assert in_flight is not None and in_flight.session_ids == ("s0",)
    scheduler.demand("s1", clock.now + 0.3)  # due now; s0's next chunk would be in its window
    beside = scheduler.plan_beside_in_flight()
    assert (beside is not None) == started_beside
    if not started_beside:
        assert scheduler.plan().session_ids == ("s1",)  # a plain plan does not wait


def test_pending_demands_per_session_are_bounded():
    scheduler = scheduler_with(FakeClock())
    scheduler.add(make_session(0, []))
    for _ in range(MAX_PENDING_DEMANDS):
        scheduler.demand("s0", 0.0)
    with pytest.raises(ValueError, match="demands may be pending"):
        scheduler.demand("s0", 0.0)


def test_sessions_of_different_chunk_lengths_never_share_a_batch():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=8)
    for seed, frames, deadline_in_s in [(1, 10, -0.3), (2, 50, -0.2), (3, 10, -0.1), (4, 50, 0)]:
        scheduler.add(make_session(seed, [], chunk_frames=frames))
        scheduler.demand(f"s{seed}", clock.now + deadline_in_s)
    first, second = scheduler.plan(), scheduler.plan()
    assert first is not None and first.session_ids == ("s1", "s3") and first.chunk_frames == 10
    assert [job.chunk_frames for job in first.jobs] == [10, 10]
    assert first.audio_seconds == pytest.approx(0.8)
    assert second is not None and second.session_ids == ("s2", "s4")
    assert second.chunk_frames == 50 and [job.chunk_frames for job in second.jobs] == [50, 50]


def test_a_batch_gathers_the_sessions_due_within_the_urgent_sessions_own_chunk_period():
    clock = FakeClock()
    scheduler = scheduler_with(clock, max_batch_size=8)
    # 0.4 s chunks: deadlines 0.3 s apart share a batch, 0.5 s apart do not (as 2 s would).
    for seed, frames, deadline_in_s in [(0, 10, 0.5), (1, 10, 0.8), (2, 10, 1.0)]:
        scheduler.add(make_session(seed, [], chunk_frames=frames))
        scheduler.demand(f"s{seed}", clock.now + deadline_in_s)
    clock.now = scheduler.next_due_unix_s()
    plan = scheduler.plan()
    assert plan is not None and plan.session_ids == ("s0", "s1")


def test_batch_times_are_learned_per_chunk_length_with_an_upper_bound_until_measured():
    model = BatchTimeModel(Scheduler(4).buckets)
    model.observe(4, 1.0)  # 50 frames
    assert model.expected_s(4, chunk_frames=10) == 1.0  # not measured: no dearer than 50
    model.observe(4, 0.3, chunk_frames=10)
    assert model.expected_s(4, chunk_frames=10) == 0.3
    assert model.expected_s(4, chunk_frames=5) == 0.3  # the nearest longer length measured
    assert model.expected_s(4) == 1.0
    assert model.measured_chunk_frames() == (10, 50)
    # 0.95 of a 0.4 s period holds one batch of 4 at 0.3 s; of 0.2 s, none.
    assert model.capacity(0.95, chunk_frames=10) == 4
    assert model.capacity(0.95, chunk_frames=5) == 0


def test_a_finished_batch_teaches_the_time_of_its_own_chunk_length():
    clock = FakeClock()
    scheduler = scheduler_with(clock, batch_s=0.5)
    runner = BatchRunner(ScriptedEngine(clock, a=0.2, b=0.0), scheduler, clock=clock)
    scheduler.add(make_session(0, [], chunk_frames=10))
    scheduler.demand("s0", clock.now)
    runner.run(scheduler.plan())
    assert scheduler.batch_times.expected_s(1, chunk_frames=10) == pytest.approx(0.2)
    assert scheduler.batch_times.expected_s(1) == pytest.approx(0.5)
    assert runner.recent_real_time_factor == pytest.approx(0.4 / 0.2)


def test_short_chunk_sessions_count_for_more_of_the_capacity():
    clock = FakeClock()
    scheduler = Scheduler(4, clock=clock)
    for size in scheduler.buckets:
        scheduler.batch_times.observe(size, 0.9)  # 50 frames: two batches of 4 per 2 s
        scheduler.batch_times.observe(size, 0.3, chunk_frames=10)  # one of 4 per 0.4 s
    assert scheduler.capacity == 8
    assert scheduler.session_load(50) == 1.0
    assert scheduler.session_load(10) == 2.0
    assert scheduler.session_load(5) == 8.0  # unmeasured and too slow: the whole generator
    for seed in range(3):
        scheduler.add(make_session(seed, [], chunk_frames=10))
    assert scheduler.load == pytest.approx(6.0)
    assert scheduler.has_room_for(10) and scheduler.has_room_for(50)
    scheduler.add(make_session(3, [], chunk_frames=10))
    assert not scheduler.has_room_for(50)
    # The first session is always admitted, even one the generator cannot keep in real time.
    assert Scheduler(4, clock=clock).has_room_for(5)


def test_warm_up_times_the_listed_chunk_lengths_too():
    clock = FakeClock()
    scheduler = Scheduler(4, clock=clock)
    engine = ScriptedEngine(clock, a=0.25, b=0.0)
    BatchRunner(engine, scheduler, warm_chunk_frames=(10, 50), clock=clock).warm_up()
    assert scheduler.batch_times.measured_chunk_frames() == (10, 50)
    assert engine.frames_seen == {10, 50}


class TwoStageEngine(ChunkEngine):
    """An engine on a device, faked: `start` takes `host_s` of the fake clock and returns a
    batch still running; its `finish` takes `device_s` more. Records ("start" | "finish",
    seeds) in order; a batch with a seed in `failing_seeds` raises in `finish`, one with a
    seed in `unstartable_seeds` in `start`."""

    name = "two-stage"

    def __init__(self, clock: FakeClock, host_s: float = 0.05, device_s: float = 0.5):
        self.clock, self.host_s, self.device_s = clock, host_s, device_s
        self.events: list[tuple[str, list[int]]] = []
        self.failing_seeds: set[int] = set()
        self.unstartable_seeds: set[int] = set()

    def generate(self, jobs):
        return self.start(jobs).finish()

    def start(self, jobs):
        engine, seeds = self, [job.sampling.seed for job in jobs]
        self.clock.now += self.host_s
        self.events.append(("start", seeds))
        if self.unstartable_seeds & set(seeds):
            raise ValueError("bad input")

        class OnTheDevice(PendingBatch):
            def ready(self) -> bool:
                return False

            def finish(self):
                engine.clock.now += engine.device_s
                engine.events.append(("finish", seeds))
                if engine.failing_seeds & set(seeds):
                    raise RuntimeError("device error")
                return ScriptedEngine(engine.clock, a=0.0, b=0.0).generate(jobs)

        return OnTheDevice()


def _overlapping_batches(engine: TwoStageEngine) -> tuple[Scheduler, list, list]:
    """s1 (50 frames) due now, s2 (25 frames, so never in s1's batch) due once s1's batch
    is started, s3 not due for a while; the scheduler closes once s2 has its result."""
    clock = engine.clock
    scheduler = scheduler_with(clock)  # every batch expected to take 0.1 s
    first, second = [], []
    scheduler.add(make_session(1, first))
    scheduler.add(make_session(3, []))

    def deliver_and_close(result):
        second.append(result)
        scheduler.close()

    scheduler.add(
        GeneratorSession(
            session_id="s2",
            state=SessionState.fresh(),
            sampling=SamplingSettings(seed=2),
            deliver=deliver_and_close,
            chunk_frames=25,
        )
    )
    scheduler.demand("s1", clock.now)
    scheduler.demand("s2", clock.now + engine.host_s + 0.1 + DUE_MARGIN_S)
    scheduler.demand("s3", clock.now + 30.0)
    return scheduler, first, second


def test_the_next_due_batch_starts_while_the_device_runs_this_one():
    clock = FakeClock()
    engine = TwoStageEngine(clock)
    scheduler, first, second = _overlapping_batches(engine)
    runner = BatchRunner(engine, scheduler, clock=clock)
    started_at = clock.now
    runner._loop()  # in this thread, until the scheduler closes
    assert engine.events == [("start", [1]), ("start", [2]), ("finish", [1]), ("finish", [2])]
    assert first[0].output.state.chunk_index == 1 and second[0].output.state.chunk_index == 1
    # Each batch's own time: the first from its start, the second from the first's finish.
    assert first[0].generation_s == pytest.approx(2 * engine.host_s + engine.device_s)
    assert second[0].generation_s == pytest.approx(engine.device_s)
    assert clock.now == pytest.approx(started_at + 2 * engine.host_s + 2 * engine.device_s)
    assert scheduler.batch_times.expected_s(1, 25) == pytest.approx(engine.device_s)


def test_a_batch_failing_on_the_device_fails_only_its_sessions_while_the_next_runs_on():
    clock = FakeClock()
    engine = TwoStageEngine(clock)
    engine.failing_seeds = {1}
    scheduler, first, second = _overlapping_batches(engine)
    runner = BatchRunner(engine, scheduler, clock=clock)
    runner._thread = threading.current_thread()  # as if started
    runner._loop()
    probe = SamplingSettings().seed
    assert engine.events == [
        ("start", [1]),
        ("start", [2]),
        ("finish", [1]),
        ("start", [probe]),  # the probe after a failed batch passes
        ("finish", [probe]),
        ("finish", [2]),
    ]
    assert first[0].output is None and "device error" in first[0].error
    assert second[0].output is not None and second[0].output.state.chunk_index == 1
    assert runner.healthy() and not runner.engine_broken


def test_a_batch_failing_to_start_fails_its_sessions_and_the_batch_in_flight_finishes():
    clock = FakeClock()
    engine = TwoStageEngine(clock)
    engine.unstartable_seeds = {2}
    scheduler, first, second = _overlapping_batches(engine)
    runner = BatchRunner(engine, scheduler, clock=clock)
    started_at = clock.now
    runner._loop()
    probe = SamplingSettings().seed
    assert engine.events == [
        ("start", [1]),
        ("start", [2]),
        ("start", [probe]),
        ("finish", [probe]),
        ("finish", [1]),
    ]
    assert second[0].output is None and "bad input" in second[0].error
    assert first[0].output is not None
    assert first[0].generation_s == pytest.approx(clock.now - started_at)  # from its own start
