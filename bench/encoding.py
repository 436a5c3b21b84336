"""The audio encodings benchmark: what each encoding costs per listener.

In process, no services: the engine of `--model` generates a few chunks of one session (the
audio a listener would hear), and each encoding's encoder in the gateway
(`services/gateway/audio_encoding.py`) encodes them chunk by chunk as the gateway does.
Reported per listener: bytes per second sent, and the gateway's CPU (one core = 1.0) spent
encoding, which for a listener is the CPU seconds per second of audio. CPU is process time, so
other work on the machine does not count.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.generator_speed import first_jobs
from services.common import model_facts as facts
from services.common.assets import AssetStore
from services.common.proto.mrt.v1 import music_pb2
from services.gateway.audio_encoding import make_encoder
from services.generator.models import create_engine

OPUS_BITRATES_BPS = (64_000, 128_000, 256_000)


def session_audio(args: argparse.Namespace) -> list[np.ndarray]:
    """`args.chunks` consecutive chunks of one prompted session, float32[96000, 2] each."""
    engine = create_engine(args.model, AssetStore(args.assets_dir), dtype=args.dtype)
    jobs, chunks = first_jobs(1), []
    for _ in range(args.chunks):
        output = engine.generate(jobs)[0]
        chunks.append(np.asarray(output.audio, np.float32))
        jobs = [dataclasses.replace(jobs[0], state=output.state)]
    return chunks


def measure(
    encoding: int, opus_bitrate_bps: int, chunks: list[np.ndarray], repeats: int
) -> dict[str, Any]:
    """Bytes per second and encode CPU per audio second, over `repeats` sessions."""
    audio_s = len(chunks) * facts.CHUNK_SECONDS
    cpu_s, sent_bytes = 0.0, 0
    for _ in range(repeats):
        encoder = make_encoder(encoding, opus_bitrate_bps)
        began = time.process_time()
        sent_bytes = sum(len(encoder.encode(chunk)) for chunk in chunks)
        cpu_s += time.process_time() - began
        encoder.close()
    return {
        "encoding": music_pb2.AudioEncoding.Name(encoding),
        "opus_bitrate_bps": opus_bitrate_bps,
        "bytes_per_second": sent_bytes / audio_s,
        "kbit_per_second": 8 * sent_bytes / audio_s / 1000,
        "cpu_cores_per_listener": cpu_s / (repeats * audio_s),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for ``args`` (see ``python -m bench encoding --help``)."""
    began, machine = time.monotonic(), report.machine_info()
    print(f"[encoding] generating {args.chunks} chunks with {args.model}", flush=True)
    chunks = session_audio(args)
    cases = [(music_pb2.PCM_S16LE, 0), (music_pb2.PCM_F32LE, 0)]
    cases += [(music_pb2.OGG_OPUS, bitrate) for bitrate in OPUS_BITRATES_BPS]
    rows = []
    for encoding, bitrate in cases:
        row = measure(encoding, bitrate, chunks, args.repeats)
        rows.append(row)
        print(
            f"  {row['encoding']} {bitrate or '':>6}: {row['kbit_per_second']:.1f} kbit/s, "
            f"{row['cpu_cores_per_listener'] * 1000:.3f} milli-cores per listener",
            flush=True,
        )
    results = {
        "kind": "encoding",
        "model": args.model,
        "machine": machine,
        "chunks": args.chunks,
        "repeats": args.repeats,
        "rows": rows,
        "runtime_s": round(time.monotonic() - began, 1),
    }
    json_path = report.write_json(Path(args.results_dir) / f"encoding_{args.model}.json", results)
    report.update_docs(f"encoding:{args.model}", markdown(results, json_path), Path(args.docs))
    print(f"[encoding] wrote {json_path} and {args.docs}", flush=True)
    return results


def markdown(results: dict[str, Any], json_path: Path) -> str:
    rows = [
        [
            r["encoding"],
            f"{r['opus_bitrate_bps'] // 1000}k" if r["opus_bitrate_bps"] else "-",
            report.fmt(r["kbit_per_second"], 1),
            report.fmt(r["bytes_per_second"] / 1024, 1),
            report.fmt(r["cpu_cores_per_listener"] * 1000, 3),
            f"{1 / r['cpu_cores_per_listener']:.0f}" if r["cpu_cores_per_listener"] else "-",
        ]
        for r in results["rows"]
    ]
    return "\n".join(
        [
            f"### Audio encodings, model `{results['model']}`",
            "",
            f"Machine: {report.machine_line(results['machine'])}. One session's first "
            f"{results['chunks']} chunks, encoded chunk by chunk as the gateway does; CPU is the "
            f"mean over {results['repeats']} encodings (process time).",
            "",
            report.markdown_table(
                [
                    "encoding",
                    "Opus bitrate",
                    "kbit/s per listener",
                    "KiB/s per listener",
                    "gateway CPU per listener (milli-cores)",
                    "listeners per gateway core (encoding alone)",
                ],
                rows,
            ),
            "",
            f"Data: `{report.relative(json_path)}`.",
        ]
    )
