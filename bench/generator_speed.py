"""The generator micro-benchmark: how long one batched chunk step takes, by batch size and
chunk length.

In process, no services: build the engine for a model, and for each chunk length and batch
size run one warm-up step (which compiles that shape), then a few timed steps whose sessions
carry on from the previous step's state, as a generator's sessions do, interleaved over the
shapes so that a busy machine's noise falls on all of them alike. The median gives
seconds per batched chunk, seconds of compute per second of audio (the inverse of the
real-time factor) and how many sessions of that chunk length the batch size keeps in real
time when batches run back to back. Shorter chunks cost more per second of audio: each chunk
runs the encoder over the whole context and pays the fixed cost of a batch.
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


def first_jobs(
    batch_size: int, seed: int = 0, chunk_frames: int = facts.CHUNK_FRAMES
) -> list[ChunkJob]:
    """Fresh sessions with distinct seeds and random styles (prompted sessions, as in use)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for row in range(batch_size):
        style = rng.normal(size=facts.STYLE_EMBEDDING_DIM).astype(np.float32)
        jobs.append(
            ChunkJob(
                state=SessionState.fresh(),
                style_embedding=style / np.linalg.norm(style),
                sampling=SamplingSettings(seed=seed + row),
                chunk_frames=chunk_frames,
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


def realtime_sessions(
    batch_size: int, batch_seconds: float, chunk_frames: int = facts.CHUNK_FRAMES
) -> int:
    """Sessions kept in real time by back-to-back batches of this size (no headroom)."""
    period_s = chunk_frames / facts.FRAME_RATE_HZ
    return batch_size * int(period_s // batch_seconds) if batch_seconds > 0 else 0


def measure(
    engine: ChunkEngine, batch_sizes: list[int], chunk_lengths: list[int], repeats: int
) -> list[dict[str, Any]]:
    """One row per chunk length and batch size. Each shape gets a warm-up step first, then
    the timed steps are interleaved (each repeat times every shape once), so that the noise
    of a busy machine falls on every shape alike. Audio input is timed at the default length
    only (its cost does not depend on the chunk length)."""
    shapes = [(frames, size) for frames in chunk_lengths for size in batch_sizes]
    jobs, warmups_s = {}, {}
    for frames, size in shapes:
        warmups_s[frames, size], jobs[frames, size] = time_step(
            engine, first_jobs(size, chunk_frames=frames)
        )
    times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    for _ in range(repeats):
        for shape in shapes:
            seconds, jobs[shape] = time_step(engine, jobs[shape])
            times[shape].append(seconds)
    rows = []
    for frames, size in shapes:
        row = timing_row(frames, size, warmups_s[frames, size], times[frames, size])
        if engine.supports_audio_input and frames == facts.CHUNK_FRAMES:
            row.update(time_injection(engine, jobs[frames, size], repeats, row["median_s"]))
        rows.append(row)
        print_row(row)
    return rows


def timing_row(
    chunk_frames: int, batch_size: int, warmup_s: float, times: list[float]
) -> dict[str, Any]:
    median_s = statistics.median(times)
    audio_s = batch_size * chunk_frames / facts.FRAME_RATE_HZ
    return {
        "chunk_frames": chunk_frames,
        "batch_size": batch_size,
        "warmup_s": warmup_s,
        "seconds": times,
        "median_s": median_s,
        "seconds_per_session_chunk": median_s / batch_size,
        "compute_s_per_audio_s": median_s / audio_s,
        "real_time_factor": audio_s / median_s,
        "realtime_sessions": realtime_sessions(batch_size, median_s, chunk_frames),
    }


def time_injection(
    engine: ChunkEngine, jobs: list[ChunkJob], repeats: int, plain_median_s: float
) -> dict[str, float]:
    """The same steps with every session playing along (a live-input mix each chunk)."""
    _, jobs = time_step(engine, with_injection(jobs))  # compiles the encoder's shape
    injected = []
    for repeat in range(repeats):
        seconds, jobs = time_step(engine, with_injection(jobs, seed=repeat))
        injected.append(seconds)
    injected_median_s = statistics.median(injected)
    return {
        "injected_median_s": injected_median_s,
        "injection_extra_s_per_session": (injected_median_s - plain_median_s) / len(jobs),
    }


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
    label = args.model + ("-random-weights" if args.random_weights else "")
    print(f"[generator] building the {label} engine ({args.dtype})", flush=True)
    engine = create_engine(
        args.model,
        AssetStore(args.assets_dir),
        dtype=args.dtype,
        max_batch_size=max(batch_sizes),
        random_weights=args.random_weights,
    )
    load_s = time.monotonic() - began
    rows = measure(engine, batch_sizes, list(args.chunk_frames), args.repeats)
    results = {
        "kind": "generator",
        "model": label,
        "dtype": args.dtype,
        "random_weights": args.random_weights,
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


def print_row(row: dict[str, Any]) -> None:
    print(
        f"  {row['chunk_frames']:>2} frames, batch {row['batch_size']:>3}: "
        f"{row['median_s']:.4f} s per batched chunk "
        f"(warm-up {row['warmup_s']:.2f} s), {row['seconds_per_session_chunk']:.4f} s per "
        f"session, {row['compute_s_per_audio_s']:.4f} s per audio s, "
        f"RTF {row['real_time_factor']:.2f}, "
        f"{row['realtime_sessions']} sessions in real time"
        + (
            f"; with audio input {row['injected_median_s']:.4f} s "
            f"(+{row['injection_extra_s_per_session']:.4f} s per session)"
            if "injected_median_s" in row
            else ""
        ),
        flush=True,
    )


def markdown(results: dict[str, Any], json_path: Path) -> str:
    injection = any("injected_median_s" in r for r in results["batch_sizes"])
    rows = [
        [
            r.get("chunk_frames", facts.CHUNK_FRAMES),
            r["batch_size"],
            report.fmt(r["median_s"], 4),
            report.fmt(r["seconds_per_session_chunk"], 4),
            report.fmt(r.get("compute_s_per_audio_s"), 4),
            report.fmt(r["real_time_factor"], 2),
            r["realtime_sessions"],
            report.fmt(r["warmup_s"], 2),
        ]
        + (
            [
                report.fmt(r.get("injected_median_s"), 4),
                report.fmt(r.get("injection_extra_s_per_session"), 4),
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
            ),
            "",
            report.markdown_table(
                [
                    "frames per chunk",
                    "batch size",
                    "s per batched chunk",
                    "s per session-chunk",
                    "compute s per audio s",
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
