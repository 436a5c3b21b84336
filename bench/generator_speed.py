"""The generator micro-benchmark: how long one batched chunk step takes, by batch size.

In process, no services: build the engine for a model, and for each batch size run one
warm-up step (which compiles that shape), then a few timed steps whose sessions carry on from
the previous step's state, as a generator's sessions do. The median gives seconds per batched
chunk, its real-time factor (audio seconds per compute second) and how many sessions that
batch size keeps in real time when batches run back to back.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench import report
from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.context_audio import ContextAudio
from services.generator.engine import ChunkEngine, ChunkJob
from services.generator.models import create_engine


def first_jobs(batch_size: int, seed: int = 0, styled: bool = True) -> list[ChunkJob]:
    """Fresh sessions with distinct seeds and random styles (prompted sessions, as in use),
    or (`styled` False) no style at all, which needs no guidance rows."""
    rng = np.random.default_rng(seed)
    jobs = []
    for row in range(batch_size):
        style = rng.normal(size=facts.STYLE_EMBEDDING_DIM).astype(np.float32)
        jobs.append(
            ChunkJob(
                state=SessionState.fresh(),
                style_embedding=style / np.linalg.norm(style) if styled else None,
                sampling=SamplingSettings(seed=seed + row),
            )
        )
    return jobs


def with_injection(jobs: list[ChunkJob], seed: int = 0) -> list[ChunkJob]:
    """The jobs, each carrying a live-input mix to encode into its context first."""
    rng = np.random.default_rng(seed)
    return [
        dataclasses.replace(
            job,
            context_audio=(
                ContextAudio(
                    (
                        0.1 * rng.standard_normal((facts.INJECTION_MIX_SAMPLES, facts.CHANNELS))
                    ).astype(np.float32),
                    facts.INJECTION_EDGE_FRAMES,
                    is_mix=True,
                ),
            ),
        )
        for job in jobs
    ]


def time_step(engine: ChunkEngine, jobs: list[ChunkJob]) -> tuple[float, list[ChunkJob]]:
    """Seconds for one batched chunk, and the jobs for the next chunk of the same sessions."""
    started = time.perf_counter()
    outputs = engine.generate(jobs)
    seconds = time.perf_counter() - started
    return seconds, [dataclasses.replace(job, state=out.state) for job, out in zip(jobs, outputs)]


def realtime_sessions(batch_size: int, batch_seconds: float) -> int:
    """Sessions kept in real time by back-to-back batches of this size (no headroom)."""
    return batch_size * int(facts.CHUNK_SECONDS // batch_seconds) if batch_seconds > 0 else 0


def measure_batch_size(
    engine: ChunkEngine, batch_size: int, repeats: int, styled: bool = True
) -> dict[str, Any]:
    jobs = first_jobs(batch_size, styled=styled)
    warmup_s, jobs = time_step(engine, jobs)
    times = []
    for _ in range(repeats):
        seconds, jobs = time_step(engine, jobs)
        times.append(seconds)
    median_s = statistics.median(times)
    row = {
        "batch_size": batch_size,
        "warmup_s": warmup_s,
        "seconds": times,
        "median_s": median_s,
        "seconds_per_session_chunk": median_s / batch_size,
        "real_time_factor": batch_size * facts.CHUNK_SECONDS / median_s,
        "realtime_sessions": realtime_sessions(batch_size, median_s),
    }
    if engine.supports_audio_input:  # the same steps with every session playing along
        _, jobs = time_step(engine, with_injection(jobs))  # compiles the encoder's shape
        injected = []
        for repeat in range(repeats):
            seconds, jobs = time_step(engine, with_injection(jobs, seed=repeat))
            injected.append(seconds)
        row["injected_median_s"] = statistics.median(injected)
        row["injection_extra_s_per_session"] = (row["injected_median_s"] - median_s) / batch_size
    return row


def device_description() -> str:
    """The accelerator the engine ran on, when it is a JAX model (already imported by it)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return "cpu (numpy)"
    device = jax.devices()[0]
    return f"{device.platform}: {device.device_kind} x{len(jax.devices())}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The micro-benchmark for ``args`` (see ``python -m bench generator --help``)."""
    batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    began, machine = time.monotonic(), report.machine_info()
    label = (
        args.model
        + ("-random-weights" if args.random_weights else "")
        + ("-without-style" if args.without_style else "")
    )
    print(f"[generator] building the {label} engine ({args.dtype})", flush=True)
    engine = create_engine(
        args.model,
        AssetStore(args.assets_dir),
        dtype=args.dtype,
        max_batch_size=max(batch_sizes),
        random_weights=args.random_weights,
    )
    load_s = time.monotonic() - began
    rows = []
    for size in batch_sizes:
        row = measure_batch_size(engine, size, args.repeats, styled=not args.without_style)
        rows.append(row)
        print(
            f"  batch {size:>3}: {row['median_s']:.4f} s per batched chunk "
            f"(warm-up {row['warmup_s']:.2f} s), {row['seconds_per_session_chunk']:.4f} s per "
            f"session, RTF {row['real_time_factor']:.2f}, "
            f"{row['realtime_sessions']} sessions in real time"
            + (
                f"; with audio input {row['injected_median_s']:.4f} s "
                f"(+{row['injection_extra_s_per_session']:.4f} s per session)"
                if "injected_median_s" in row
                else ""
            ),
            flush=True,
        )
    results = {
        "kind": "generator",
        "model": label,
        "dtype": args.dtype,
        "random_weights": args.random_weights,
        "styled": not args.without_style,
        "device": device_description(),
        "machine": machine,
        "repeats": args.repeats,
        "engine_load_s": round(load_s, 2),
        "rss_mib_after": round(psutil.Process().memory_info().rss / 2**20, 1),
        "batch_sizes": rows,
        "runtime_s": round(time.monotonic() - began, 1),
    }
    results_dir, docs = Path(args.results_dir), Path(args.docs)
    json_path = report.write_json(results_dir / f"generator_{label}_{args.dtype}.json", results)
    report.update_docs(f"generator:{label}:{args.dtype}", markdown(results, json_path), docs)
    print(f"[generator] wrote {json_path} and {docs}", flush=True)
    return results


def markdown(results: dict[str, Any], json_path: Path) -> str:
    injection = all("injected_median_s" in r for r in results["batch_sizes"])
    rows = [
        [
            r["batch_size"],
            report.fmt(r["median_s"], 4),
            report.fmt(r["seconds_per_session_chunk"], 4),
            report.fmt(r["real_time_factor"], 2),
            r["realtime_sessions"],
            report.fmt(r["warmup_s"], 2),
        ]
        + (
            [
                report.fmt(r["injected_median_s"], 4),
                report.fmt(r["injection_extra_s_per_session"], 4),
            ]
            if injection
            else []
        )
        for r in results["batch_sizes"]
    ]
    return "\n".join(
        [
            f"### Generator, model `{results['model']}` ({results['dtype']}, {results['device']})",
            "",
            f"Machine: {report.machine_line(results['machine'])}. Engine built in "
            f"{results['engine_load_s']:.1f} s; process RSS after the run "
            f"{results['rss_mib_after']:.0f} MiB; median of {results['repeats']} timed steps after "
            f"one warm-up step per size; runtime {results['runtime_s']:.0f} s."
            + (
                " Random depthformer weights with the tiny codec (`--random-weights`): the codec's "
                "share of the time is the tiny one's."
                if results.get("random_weights")
                else ""
            )
            + (
                " Sessions without a style (no prompt), so no guidance rows."
                if not results.get("styled", True)
                else ""
            ),
            "",
            report.markdown_table(
                [
                    "batch size",
                    "s per batched chunk",
                    "s per session-chunk",
                    "RTF",
                    "sessions in real time",
                    "warm-up s",
                ]
                + (
                    [
                        "s per batched chunk, all with audio input",
                        "audio input: extra s per session-chunk",
                    ]
                    if injection
                    else []
                ),
                rows,
            ),
            "",
            f"Data: `{report.relative(json_path)}`.",
        ]
    )
