"""The generator's scheduler: EDF batches, due times, capacity, failures."""

import time

import numpy as np
import pytest

from services.generator.engine import ChunkEngine, ChunkOutput, SamplingParams, SessionState
from services.generator.scheduler import BatchTimeModel, Scheduler
from services.generator.sessions import GeneratorSession


class RecordingEngine(ChunkEngine):
    """Records each batch's seeds; returns silence and advances the state."""

    name = "recording"

    def __init__(self, batch_seconds: float = 0.0, fail: bool = False):
        self.batches: list[list[int]] = []
        self.batch_seconds = batch_seconds
        self.fail = fail

    def generate(self, jobs):
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append([job.sampling.seed for job in jobs])
        time.sleep(self.batch_seconds)
        return [ChunkOutput(audio=np.zeros((96000, 2), np.float32),
                            state=SessionState(job.state.context_tokens, job.state.crossfade_tail,
                                               job.state.chunk_index + 1)) for job in jobs]


def make_session(seed: int, results: list) -> GeneratorSession:
    return GeneratorSession(session_id=f"s{seed}", state=SessionState.fresh(),
                            sampling=SamplingParams(seed=seed), deliver=results.append)


def wait_for(predicate, timeout_s=5.0):
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached")


def test_due_sessions_run_earliest_deadline_first_in_one_batch_up_to_the_maximum():
    engine = RecordingEngine()
    scheduler = Scheduler(engine, max_batch_size=2, fixed_capacity=10)
    scheduler.batch_times.observe(1, 0.01)
    scheduler.batch_times.observe(2, 0.01)
    results: list = []
    now = time.time()
    for seed, deadline in [(1, now + 0.3), (2, now - 1.0), (3, now - 0.5)]:
        scheduler.add(make_session(seed, results))
        scheduler.demand(f"s{seed}", deadline)
    scheduler.start()
    try:
        wait_for(lambda: len(results) == 3)
    finally:
        scheduler.stop()
    assert engine.batches[0] == [2, 3]  # the two most urgent, together
    assert engine.batches[1] == [1]
    assert all(r.output is not None and r.output.state.chunk_index == 1 for r in results)


def test_a_session_is_not_generated_long_before_its_deadline():
    engine = RecordingEngine()
    scheduler = Scheduler(engine, max_batch_size=4, fixed_capacity=10)
    scheduler.batch_times.observe(1, 0.05)
    results: list = []
    scheduler.add(make_session(7, results))
    scheduler.start()
    try:
        demanded = time.time()
        scheduler.demand("s7", demanded + 1.0)
        wait_for(lambda: results)
        started_after_s = time.time() - demanded
    finally:
        scheduler.stop()
    # Due one batch time plus the margin before the deadline: about 0.7 s after the demand.
    assert started_after_s > 0.5


def test_a_session_joining_a_busy_generator_runs_in_the_next_batch():
    engine = RecordingEngine(batch_seconds=0.2)
    scheduler = Scheduler(engine, max_batch_size=4, fixed_capacity=10)
    scheduler.batch_times.observe(1, 0.2)
    results: list = []
    scheduler.add(make_session(1, results))
    scheduler.start()
    try:
        scheduler.demand("s1", time.time() - 1)
        wait_for(lambda: engine.batches or False, 2)  # first batch is running
        scheduler.add(make_session(2, results))
        scheduler.demand("s2", time.time() - 1)
        wait_for(lambda: len(results) == 2, 2)
    finally:
        scheduler.stop()
    assert engine.batches[:2] == [[1], [2]]


def test_a_failed_batch_fails_its_sessions_and_the_scheduler_keeps_running():
    engine = RecordingEngine(fail=True)
    scheduler = Scheduler(engine, max_batch_size=4, fixed_capacity=10)
    results: list = []
    scheduler.add(make_session(1, results))
    scheduler.start()
    try:
        scheduler.demand("s1", time.time() - 1)
        wait_for(lambda: results)
        assert results[0].output is None and "boom" in results[0].error
        engine.fail = False
        scheduler.demand("s1", time.time() - 1)
        wait_for(lambda: len(results) == 2)
        assert results[1].output is not None
    finally:
        scheduler.stop()


def test_removed_sessions_receive_nothing():
    engine = RecordingEngine(batch_seconds=0.1)
    scheduler = Scheduler(engine, max_batch_size=4, fixed_capacity=10)
    results: list = []
    scheduler.add(make_session(1, results))
    scheduler.start()
    try:
        scheduler.demand("s1", time.time() - 1)
        wait_for(lambda: engine.batches)
        scheduler.remove("s1")
        time.sleep(0.2)
    finally:
        scheduler.stop()
    assert results == []


@pytest.mark.parametrize("seconds_by_size, expected", [
    ({1: 0.1, 16: 0.4}, 64),  # four batches of 16 fit in 1.6 s
    ({1: 1.0, 16: 8.0}, 2),   # a batch of 2 (about 1.5 s) fits once
    ({1: 3.0, 16: 30.0}, 0),  # nothing keeps real time
])
def test_capacity_follows_measured_batch_times(seconds_by_size, expected):
    model = BatchTimeModel(max_batch_size=16)
    for size, seconds in seconds_by_size.items():
        model.observe(size, seconds)
    assert model.capacity(utilization=0.8) == expected
