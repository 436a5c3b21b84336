"""The latency benchmark's summary: pooled gateway histograms, client quantiles, the table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import latency
from bench.prometheus import HistogramDelta


def test_a_row_pools_the_sessions_histograms_and_ranks_the_client_timings():
    sessions = [
        HistogramDelta(count=2, total=1.0, cumulative={0.5: 2, 1.0: 2, math.inf: 2}),
        HistogramDelta(count=2, total=3.0, cumulative={0.5: 0, 1.0: 1, math.inf: 2}),
    ]
    timings = [latency.ChangeTiming(received_s=r, heard_s=r + 0.4) for r in (0.1, 0.3, 0.2, 0.9)]
    row = latency.summary_row(10, timings, sessions, underruns=1)
    assert row["chunk_seconds"] == pytest.approx(0.4)
    assert row["gateway_prompt_to_audio_count"] == 4
    assert row["gateway_prompt_to_audio_mean_s"] == pytest.approx(1.0)
    assert row["gateway_prompt_to_audio_p50_bucket_s"] == 0.5
    assert row["gateway_prompt_to_audio_p90_bucket_s"] == math.inf
    assert row["received_median_s"] == pytest.approx(0.3)  # of 0.1, 0.2, 0.3, 0.9
    assert row["heard_max_s"] == pytest.approx(1.3)
    table = latency.markdown(
        {
            "model": "mock",
            "machine": {
                "cpu_model": "cpu",
                "logical_cores": 2,
                "ram_gib": 1.0,
                "load_average_1m": 0.0,
                "date_utc": "today",
                "commit": "abc",
            },
            "rounds": 1,
            "changes_per_session": 4,
            "buffer_ahead_seconds_for_2s_chunks": 2.0,
            "runtime_s": 10.0,
            "rows": [row],
        },
        Path("latency_mock.json"),
    )
    assert "| 10 (0.4 s) | 4 | 1.00 | <= 0.5 | <= inf | 0.30 | 0.78 | 0.70 |" in table
