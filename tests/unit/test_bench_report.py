"""The benchmark's report writer: Markdown sections, tables, JSON, and the load / soak reports."""

import json
import math

import numpy as np

from bench import load, report, soak
from bench.plots import plot_load, plot_soak

MACHINE = {
    "cpu_model": "Test CPU",
    "logical_cores": 2,
    "physical_cores": 1,
    "ram_gib": 8.0,
    "load_average_1m": 0.5,
    "platform": "Linux",
    "python": "3.11",
    "date_utc": "2026-01-01 00:00 UTC",
    "commit": "abc1234",
}


def test_replace_section_appends_then_replaces_in_place_keeping_other_text():
    document = "# Benchmarks\n\nHand-written intro.\n"
    once = report.replace_section(document, "load:mock", "first body")
    assert once.startswith(document.rstrip("\n"))
    assert "<!-- bench:load:mock start -->\nfirst body\n<!-- bench:load:mock end -->" in once
    both = report.replace_section(once, "soak:mock", "soak body") + "\nTrailing notes.\n"
    again = report.replace_section(both, "load:mock", "second body")
    assert "first body" not in again and "second body" in again
    assert again.index("second body") < again.index("soak body")  # kept its place
    assert "Hand-written intro." in again and "Trailing notes." in again
    assert again.count("bench:load:mock start") == 1


def test_update_docs_creates_the_file(tmp_path):
    path = tmp_path / "docs" / "benchmarks.md"
    report.update_docs("generator:mock:float32", "a table", path)
    report.update_docs("generator:mock:float32", "another table", path)
    text = path.read_text()
    assert text.startswith("# Benchmarks")
    assert "another table" in text and "a table\n" not in text


def test_markdown_table():
    table = report.markdown_table(["a", "b"], [[1, "x"], [2.5, "-"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | - |"]


def test_cpu_model_from_proc_cpuinfo():
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    assert report.cpu_model(text) == "AMD EPYC 7B13"
    assert report.cpu_model("processor : 0\n") == "unknown"


def test_write_json_turns_non_finite_floats_into_null_and_numpy_into_numbers(tmp_path):
    path = report.write_json(
        tmp_path / "r.json",
        {"x": math.inf, "y": [1.5, math.nan], "z": (np.float64(2.5), np.int64(3))},
    )
    assert json.loads(path.read_text()) == {"x": None, "y": [1.5, None], "z": [2.5, 3]}


def test_fmt():
    assert report.fmt(None) == "-"
    assert report.fmt(math.nan) == "-"
    assert report.fmt(-1.987, 2, " s") == "-1.99 s"


def trial(sessions: int, held: bool, underruns: int = 0) -> dict:
    return {
        "sessions": sessions,
        "held": held,
        "underruns": underruns,
        "refused": 0,
        "errors": {},
        "time_to_first_audio_s": {"p50": 0.1, "p99": 0.3, "max": 0.4},
        "lateness_s": {"p50": -1.9, "p99": -0.5 if held else 0.7, "max": 1.0},
        "batch_size_mean": 3.5,
        "real_time_factor_trial": 12.0,
        "processes": {"generator-0": {"cpu_cores": 0.9, "rss_max_mib": 700.0}},
        "client_cpu_cores": [0.2],
        "generator_sessions_left_open": 0,
    }


def load_results() -> dict:
    def mode(label, batch, held_n):
        return {
            "mode": label,
            "max_batch_size": batch,
            "capacity_override": 1000,
            "predicted_capacity_at_startup": 6,
            "largest_held": held_n,
            "smallest_failed": held_n + 1,
            "exact": True,
            "out_of_budget": False,
            "idle_rss_mib": {"generator-0": 650.0},
            "rss_growth_mib_per_session": {"generator-0": 0.5},
            "client_saturated": False,
            "trials": [trial(held_n + 1, False, 3), trial(held_n, True)],
        }

    return {
        "kind": "load",
        "model": "tiny",
        "machine": MACHINE,
        "runtime_s": 321.0,
        "settings": {
            "ramp_s": 2.0,
            "listen_s": 20.0,
            "buffer_ahead_seconds": 2.0,
            "client_processes": 1,
        },
        "modes": [mode("batched", 16, 12), mode("unbatched", 1, 3)],
        "batching_gain": 4.0,
    }


def test_load_report_names_the_model_machine_and_largest_n(tmp_path):
    results = load_results()
    text = load.markdown(results, tmp_path / "load_tiny.json", tmp_path / "load_tiny.png")
    assert "model `tiny`" in text and "Test CPU, 2 logical cores, 8.0 GiB RAM" in text
    assert "commit abc1234" in text
    assert "| batched | 16 | 12 | 6 | 1000 | 2 | no |" in text
    assert "| unbatched | 1 | 3 | 6 | 1000 | 2 | no |" in text
    assert "**4.0x**" in text
    # Trials sorted by N within each mode.
    batched_rows = [
        line
        for line in text.splitlines()
        if line.startswith("| batched |") and line.count("|") > 10
    ]
    assert [row.split(" | ")[1] for row in batched_rows] == ["12", "13"]
    assert "generator-0 650 MiB (+0.50 MiB per session)" in text
    results["modes"][1]["rss_growth_mib_per_session"] = {"generator-0": -0.001}
    text = load.markdown(results, tmp_path / "load_tiny.json", tmp_path / "load_tiny.png")
    assert "generator-0 650 MiB (-0.00 MiB per session)" in text


def test_prediction_prefers_the_warm_up_and_never_reports_an_override():
    mode = {
        "predicted_capacity_at_startup": 6,
        "capacity_override": 1000,
        "capacity_reported_after_trials": 1000,
    }
    assert load.prediction(mode) == 6
    assert load.prediction(dict(mode, predicted_capacity_at_startup=None)) is None
    assert (
        load.prediction(
            {
                "predicted_capacity_at_startup": None,
                "capacity_override": None,
                "capacity_reported_after_trials": 9,
            }
        )
        == 9
    )


def test_batching_gain():
    assert (
        load.batching_gain(
            [{"mode": "batched", "largest_held": 12}, {"mode": "unbatched", "largest_held": 3}]
        )
        == 4.0
    )
    assert (
        load.batching_gain(
            [{"mode": "batched", "largest_held": 12}, {"mode": "unbatched", "largest_held": 0}]
        )
        is None
    )
    assert load.batching_gain([{"mode": "as configured", "largest_held": 5}]) is None


def test_load_plot_is_written(tmp_path):
    path = plot_load(load_results(), tmp_path / "load.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def soak_results() -> dict:
    series = {
        "elapsed_s": [0, 5, 10, 15, 20, 25, 30, 35],
        "rss_mib": [100, 110, 111, 111, 111, 112, 111, 111],
        "threads": [10] * 8,
        "open_fds": [20] * 8,
    }
    grew = dict(series, rss_mib=[100, 110, 110, 110, 150, 160, 170, 180])
    series_by_process = {"gateway": series, "generator-0": grew}
    verdicts = soak.judge(series_by_process, rss_tolerance=0.05, count_tolerance=2)
    return {
        "kind": "soak",
        "model": "mock",
        "minutes": 0.6,
        "machine": MACHINE,
        "settings": {
            "concurrent": 4,
            "min_session_s": 5,
            "max_session_s": 40,
            "sample_every_s": 5,
            "rss_tolerance": 0.05,
            "count_tolerance": 2,
        },
        "totals": {
            "sessions": 9,
            "outcomes": {"ok": 8, "error: UNAVAILABLE": 1},
            "chunks": 80,
            "underruns": 0,
            "warnings": 1,
        },
        "leftover_sessions": {"gateway": 0.0, "generator": 2},
        "flatness": verdicts,
        "all_flat": False,
        "sessions_leaked": True,
        "series": series_by_process,
    }


def test_soak_judges_growth_per_process_and_measure():
    verdicts = soak_results()["flatness"]
    assert verdicts["gateway"]["rss_mib"]["flat"]
    assert not verdicts["generator-0"]["rss_mib"]["flat"]
    assert (
        verdicts["generator-0"]["threads"]["flat"] and verdicts["generator-0"]["open_fds"]["flat"]
    )


def test_soak_report_shows_verdicts_and_leftovers(tmp_path):
    text = soak.markdown(soak_results(), tmp_path / "soak_mock.json", tmp_path / "soak_mock.png")
    assert "model `mock`" in text
    assert "| generator-0 | rss_mib | 110.0 | 175.0 | 5.5 | **GREW** |" in text
    assert "| gateway | rss_mib |" in text and "All flat: **no**" in text
    assert "generator 2 (**leaked**)" in text and "error: UNAVAILABLE 1" in text


def test_soak_plot_is_written(tmp_path):
    path = plot_soak(soak_results(), tmp_path / "soak.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sim_report_holds_each_cost_model_against_its_bound(tmp_path):
    results = load_results()
    results["model"] = "sim"
    for mode, (label, held) in zip(
        results["modes"], [("accelerator-like", 130), ("launch-bound", 66)]
    ):
        mode.update(
            mode=label,
            largest_held=held,
            predicted_capacity_at_startup=120,
            sim_cost={"batch_seconds": 0.25, "session_seconds": 0.0125, "held_sessions_bound": 140},
        )
    text = load.markdown(results, tmp_path / "load_sim.json", tmp_path / "load_sim.png")
    assert "| accelerator-like | 0.25 | 0.0125 | 140 | 130 | 93% | 120 | 0.92 |" in text
    assert "| launch-bound | 0.25 | 0.0125 | 140 | 66 | 47% | 120 | 1.82 |" in text
