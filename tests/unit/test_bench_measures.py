"""What the benchmark measures and how it judges: metrics deltas, listener totals, statistics,
soak scripts, the capacity prediction and the command line."""

import json
import random

import pytest

from bench import load, prometheus
from bench.__main__ import parse_args
from bench.cluster import startup_capacity_prediction
from bench.generator_speed import realtime_sessions
from bench.listeners import Action, ListenerResult, chunk_seconds
from bench.soak import random_script
from bench.stats import flatness, percentiles, slope
from services.common.proto.mrt.v1 import music_pb2

BEFORE = """
# TYPE mrt_generator_batch_size histogram
mrt_generator_batch_size_bucket{le="1.0"} 5.0
mrt_generator_batch_size_bucket{le="2.0"} 5.0
mrt_generator_batch_size_bucket{le="4.0"} 6.0
mrt_generator_batch_size_bucket{le="+Inf"} 6.0
mrt_generator_batch_size_count 6.0
mrt_generator_batch_size_sum 8.0
# TYPE mrt_generator_chunk_generation_seconds histogram
mrt_generator_chunk_generation_seconds_bucket{le="+Inf"} 6.0
mrt_generator_chunk_generation_seconds_count 6.0
mrt_generator_chunk_generation_seconds_sum 3.0
# TYPE mrt_generator_real_time_factor gauge
mrt_generator_real_time_factor 4.0
# TYPE mrt_generator_sessions_ended_total counter
mrt_generator_sessions_ended_total{outcome="ok"} 2.0
mrt_generator_sessions_ended_total{outcome="cancelled"} 1.0
"""
AFTER = """
# TYPE mrt_generator_batch_size histogram
mrt_generator_batch_size_bucket{le="1.0"} 6.0
mrt_generator_batch_size_bucket{le="2.0"} 6.0
mrt_generator_batch_size_bucket{le="4.0"} 10.0
mrt_generator_batch_size_bucket{le="+Inf"} 10.0
mrt_generator_batch_size_count 10.0
mrt_generator_batch_size_sum 24.0
# TYPE mrt_generator_chunk_generation_seconds histogram
mrt_generator_chunk_generation_seconds_bucket{le="+Inf"} 10.0
mrt_generator_chunk_generation_seconds_count 10.0
mrt_generator_chunk_generation_seconds_sum 7.0
# TYPE mrt_generator_real_time_factor gauge
mrt_generator_real_time_factor 6.5
# TYPE mrt_generator_sessions_ended_total counter
mrt_generator_sessions_ended_total{outcome="ok"} 5.0
mrt_generator_sessions_ended_total{outcome="cancelled"} 1.0
"""


def test_histogram_delta_is_what_happened_between_scrapes():
    before, after = prometheus.parse_samples(BEFORE), prometheus.parse_samples(AFTER)
    batches = prometheus.histogram_delta(before, after, "mrt_generator_batch_size")
    assert batches.count == 4 and batches.total == 16 and batches.mean == 4.0
    assert batches.per_bucket() == {"1": 1.0, "4": 3.0}
    assert batches.quantile_upper_bound(0.5) == 4.0
    assert batches.quantile_upper_bound(0.25) == 1.0


def test_counter_values_filter_by_label():
    before, after = prometheus.parse_samples(BEFORE), prometheus.parse_samples(AFTER)
    assert prometheus.value(after, "mrt_generator_sessions_ended_total") == 6.0
    assert (
        prometheus.counter_delta(before, after, "mrt_generator_sessions_ended_total", outcome="ok")
        == 3.0
    )
    assert prometheus.value(after, "no_such_metric") == 0.0


def test_generator_activity_over_a_trial():
    activity = load.generator_activity(
        prometheus.parse_samples(BEFORE), prometheus.parse_samples(AFTER)
    )
    assert activity["batch_size_mean"] == 4.0
    assert activity["chunk_generation_s_mean"] == 1.0
    # 16 session-chunks of 2 s in 4 s of generation.
    assert activity["real_time_factor_trial"] == pytest.approx(8.0)
    assert activity["real_time_factor_gauge"] == 6.5
    nothing = load.generator_activity({}, {})
    assert nothing["batch_size_mean"] is None and nothing["real_time_factor_gauge"] is None


def test_listener_totals_and_the_held_verdict():
    fine = ListenerResult(
        open_s=0.01, time_to_first_audio_s=0.2, chunks=10, lateness_s=[-1.9, -1.8]
    )
    late = ListenerResult(
        open_s=0.01, time_to_first_audio_s=0.4, chunks=9, underruns=2, lateness_s=[0.3, -1.0]
    )
    refused = ListenerResult(outcome="refused")
    failed = ListenerResult(outcome="error", error="UNAVAILABLE")
    silent = ListenerResult(open_s=0.01)
    summary = load.summarize_listeners([fine, late, refused, failed, silent])
    assert summary["admitted"] == 3 and summary["refused"] == 1
    assert summary["errors"] == {"UNAVAILABLE": 1} and summary["no_audio"] == 1
    assert summary["underruns"] == 2 and summary["sessions_with_underruns"] == 1
    assert summary["chunks"] == 19
    assert summary["lateness_s"]["max"] == pytest.approx(0.3)
    assert summary["time_to_first_audio_s"]["p50"] == pytest.approx(0.3)
    assert not load.trial_held(summary, 5)
    assert load.trial_held(load.summarize_listeners([fine, fine]), 2)
    assert not load.trial_held(load.summarize_listeners([fine, late]), 2)
    assert not load.trial_held(load.summarize_listeners([fine, silent]), 2)
    assert not load.trial_held(load.summarize_listeners([fine, refused]), 2)


def test_a_trial_whose_buffers_drain_steadily_does_not_hold():
    steady = ListenerResult(open_s=0.01, chunks=32, lateness_s=[-1.95, -2.05] * 16)
    # 0.05 s later every chunk: 1.5 s a minute, dry within two minutes, no underrun yet.
    draining = ListenerResult(
        open_s=0.01, chunks=32, lateness_s=[-1.95 + 0.05 * i for i in range(32)]
    )
    assert load.summarize_listeners([steady])["lateness_trend_s_per_min"] == pytest.approx(
        0.0, abs=0.05
    )
    summary = load.summarize_listeners([draining])
    assert summary["lateness_trend_s_per_min"] == pytest.approx(1.5)
    assert summary["underruns"] == 0 and not load.trial_held(summary, 1)
    assert load.trial_held(load.summarize_listeners([steady]), 1)
    short = ListenerResult(open_s=0.01, chunks=5, lateness_s=[-2.0, -1.9, -1.5, -1.2, -1.0])
    assert load.summarize_listeners([short])["lateness_trend_s_per_min"] is None


def test_a_sim_search_runs_from_90_percent_of_the_bound_to_the_bound():
    args = parse_args(["load", "--model", "sim", "--cost-model", "launch-bound"])
    [mode] = load.modes(args)
    assert mode.label == "launch-bound" and mode.max_batch_size == load.SIM_MAX_BATCH_SIZE
    assert load.search_range(args, mode) == (63, 70)
    assert mode.generator_flags() == ("--sim-batch-seconds", "0.6", "--sim-session-seconds", "0.02")
    assert args.embedder_model == "mock"
    assert (args.ramp_seconds, args.listen_seconds, args.warmup_seconds) == (30.0, 60.0, 0.0)
    with pytest.raises(ValueError, match="unknown cost model"):
        load.modes(parse_args(["load", "--model", "sim", "--cost-model", "gpu"]))
    tiny = parse_args(["load"])
    assert (tiny.ramp_seconds, tiny.listen_seconds, tiny.warmup_seconds) == (2.0, 20.0, 20.0)
    assert [m.max_batch_size for m in load.modes(tiny)] == [16, 1]
    assert load.search_range(tiny, load.modes(tiny)[0]) == (1, 128)


def test_listener_scripts_spread_connections_over_the_ramp():
    settings = load.LoadSettings(
        listen_s=20,
        ramp_s=2.0,
        max_sessions=8,
        start_sessions=1,
        budget_s=60,
        warmup_s=0,
        client_processes=1,
        sample_interval_s=1.0,
    )
    scripts = load.listener_scripts(4, settings, "mock")
    assert [s.start_delay_s for s in scripts] == [0.0, 0.5, 1.0, 1.5]
    assert all(s.listen_s == 20 and s.model == "mock" and s.stop_politely for s in scripts)


def test_chunk_seconds_from_the_bytes_received():
    started = music_pb2.SessionStarted(sample_rate=48000, channels=2, encoding=music_pb2.PCM_S16LE)
    chunk = music_pb2.AudioChunk(data=bytes(96000 * 2 * 2))
    assert chunk_seconds(chunk, started) == pytest.approx(2.0)
    started.encoding = music_pb2.PCM_F32LE
    assert chunk_seconds(chunk, started) == pytest.approx(1.0)


def test_percentiles_slope_and_flatness():
    assert percentiles([]) == {"p50": None, "p99": None, "max": None}
    stats = percentiles([1.0, 2.0, 3.0])
    assert stats["p50"] == 2.0 and stats["max"] == 3.0
    assert slope([1, 2, 4], [10, 12, 16]) == pytest.approx(2.0)
    assert slope([3, 3], [1, 2]) is None
    warm_then_flat = [50, 100, 101, 100, 102, 101, 101, 102]
    assert flatness(warm_then_flat, relative_tolerance=0.05).flat
    leaking = [50, 100, 101, 100, 120, 125, 130, 135]
    verdict = flatness(leaking, relative_tolerance=0.05)
    assert not verdict.flat and verdict.change > 20
    assert flatness([10, 10, 11, 11, 12, 12, 12, 13], absolute_tolerance=2).flat
    assert flatness([3, 4, 5]) is None
    assert flatness([9, 9, 5, 5, 5, 5, 4, 4]).flat  # shrinking is fine


def test_soak_scripts_stay_inside_the_session_and_always_resume_after_pause():
    rng = random.Random(7)
    for _ in range(200):
        script = random_script(rng, 5.0, 40.0)
        assert 5.0 <= script.listen_s <= 40.0
        times = [r.at_s for r in script.requests]
        assert times == sorted(times) and all(0 < t < script.listen_s for t in times)
        actions = [
            r.request.playback.action
            for r in script.requests
            if r.request.WhichOneof("request") == "playback"
            and r.request.playback.action in (Action.PAUSE, Action.PLAY)
        ]
        assert actions == [Action.PAUSE, Action.PLAY] * (len(actions) // 2)
    kinds = {
        r.request.WhichOneof("request")
        for _ in range(50)
        for r in random_script(rng, 30.0, 40.0).requests
    }
    assert kinds == {"prompts", "config", "playback"}


def test_startup_capacity_prediction_from_the_generator_log():
    log = (
        "2026-01-01 generator INFO services.generator.runner: warm-up done: 0.500 s per "
        "batch of 1, 1.000 s per batch of 16; predicted capacity 20 sessions; admitting 1000\n"
    )
    assert startup_capacity_prediction(log) == 20
    assert startup_capacity_prediction("no warm-up yet") is None


def test_realtime_sessions():
    assert realtime_sessions(4, 0.5) == 16  # four batches of four per 2 s chunk
    assert realtime_sessions(8, 2.5) == 0
    assert realtime_sessions(4, 0.15, chunk_frames=10) == 8  # two batches per 0.4 s chunk


def test_command_line_defaults_to_the_load_benchmark():
    args = parse_args(["--model", "mock", "--max-sessions", "8"])
    assert args.command == "load" and args.max_sessions == 8
    assert args.embedder_model == "mock" and args.capacity_sessions == 1000
    assert parse_args([]).command == "load" and parse_args([]).embedder_model == "tiny"
    everything = parse_args(["all", "--model", "mock"])
    assert everything.minutes == 2.0 and everything.batch_sizes == "1,2,4,8,16,32"
    assert parse_args(["soak"]).minutes == 10.0
    assert parse_args(["generator", "--dtype", "bfloat16"]).dtype == "bfloat16"


def test_the_generator_benchmark_times_each_chunk_length(tmp_path, capsys):
    from bench.__main__ import main

    docs = tmp_path / "benchmarks.md"
    argv = ["generator", "--model", "mock", "--batch-sizes", "1,2", "--chunk-frames", "50,10"]
    argv += ["--repeats", "1", "--results-dir", str(tmp_path), "--docs", str(docs)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "generator_mock_float32.json").read_text())["batch_sizes"]
    assert [(r["chunk_frames"], r["batch_size"]) for r in rows] == [
        (50, 1),
        (50, 2),
        (10, 1),
        (10, 2),
    ]
    for row in rows:
        audio_s = row["batch_size"] * row["chunk_frames"] * 0.04
        assert row["compute_s_per_audio_s"] == pytest.approx(row["median_s"] / audio_s)
    assert "| frames per chunk | batch size |" in docs.read_text()
    with pytest.raises(SystemExit):
        parse_args(["generator", "--chunk-frames", "50,4"])
    assert "chunk lengths must be in [5, 50] frames" in capsys.readouterr().err
