"""The chaos run's verdicts from recorded sessions and disruptions (no cluster)."""

import argparse
from pathlib import Path

from bench.chaos import Event, SessionRecord, Stall, markdown, summarize
from bench.processes import MIB, ProcessSample


class FakeSampler:
    def __init__(self, rss_mib_series):
        self.series = {
            name: [
                ProcessSample(
                    elapsed_s=i, rss_bytes=int(v * MIB), threads=1, open_fds=1, cpu_seconds=0.0
                )
                for i, v in enumerate(values)
            ]
            for name, values in rss_mib_series.items()
        }


def args():
    return argparse.Namespace(
        model="mock",
        minutes=3.0,
        generators=3,
        listeners=2,
        stop_seconds=8.0,
        min_pause_s=5.0,
        max_pause_s=15.0,
        seed=0,
        rss_tolerance=0.05,
    )


def test_silence_is_attributed_to_the_disruption_before_it_and_losses_are_counted():
    events = [
        Event("kill", "generator-0", at_s=10.0, recovered_s=14.0),
        Event("stop", "generator-1", at_s=30.0, recovered_s=39.0),
    ]
    sessions = [
        SessionRecord(
            listener=0,
            seed=0,
            chunks=50,
            migrations=2,
            stalls=[Stall(11.0, 0.3), Stall(31.0, 0.5), Stall(33.0, 0.25)],
        ),
        SessionRecord(
            listener=1,
            seed=1000,
            chunks=20,
            duplicated=1,
            audio_mismatches=1,
            stalls=[Stall(2.0, 0.1)],
            lost="UNAVAILABLE: gone",
        ),
        SessionRecord(listener=1, seed=1001, chunks=30),
    ]
    machine = {
        "cpu_model": "x",
        "logical_cores": 2,
        "ram_gib": 8,
        "load_average_1m": 0.5,
        "date_utc": "2026-01-01 00:00 UTC",
        "commit": "abc",
    }
    results = summarize(
        args(),
        machine,
        sessions,
        events,
        FakeSampler({"gateway": [100.0] * 8 + [130.0] * 8, "embedder": [50.0] * 16}),
        leftover={"gateway": 0.0},
        restarts={"generator-0": 1},
    )
    assert [(e["silence_total_s"], e["silence_max_per_listener_s"]) for e in results["events"]] == [
        (0.3, 0.3),
        (0.75, 0.75),
    ]
    totals = results["totals"]
    assert totals["sessions"] == 3 and totals["sessions_lost"] == 1
    assert totals["chunks"] == 100 and totals["chunks_duplicated"] == 1
    assert totals["silence_without_disruption_s"] == 0.1
    assert results["memory_flatness"]["embedder"]["flat"]
    assert not results["memory_flatness"]["gateway"]["flat"] and not results["memory_flat"]
    text = markdown(results, json_path=Path("x.json"))
    assert "lost **1**" in text and "**GREW**" in text and "| 30 | stop | generator-1 |" in text
