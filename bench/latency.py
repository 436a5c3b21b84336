"""The prompt-to-audio latency benchmark: how soon a prompt change is heard, by chunk length.

One local cluster; sessions of each chunk length (`--chunk-frames`) take turns, one at a time,
round after round (the order rotates each round), so a busy machine's noise falls on every
length alike. Each session plays, then changes its prompt `--changes` times, each at a random
moment within a chunk period after the previous change was heard, and waits for the first chunk
made with the new prompt. Prompts are sent as embeddings (fetched once with EmbedStyle), so the
embedder's time is not part of what is measured.

Reported per chunk length:
- the gateway's `mrt_gateway_prompt_to_audio_seconds` (prompt update received -> the listener's
  player reaches the first chunk made with it, on the gateway's model of the player), from its
  histogram before and after each session: mean and bucket p50 / p90;
- what the client saw: prompt sent -> that chunk received, and -> that chunk starts playing on
  the modelled player (`bench/player.py`: playback starts with the first chunk; the chunk with
  the new prompt plays once the audio before it has played), the latency a listener hears;
- underruns (the gateway's counter) during the sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench import prometheus, report
from bench.cluster import LocalClusterOptions, start_local_cluster, target_of
from bench.listeners import CHANNEL_OPTIONS, chunk_seconds, playback
from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

PROMPT_TO_AUDIO = "mrt_gateway_prompt_to_audio_seconds"
UNDERRUNS = "mrt_gateway_buffer_underruns_total"
PROMPT_TEXTS = ("slow ambient piano", "fast drum and bass")
WARM_IN_CHUNKS = 2  # chunks played before the first prompt change
RESPONSE_TIMEOUT_S = 60.0


@dataclasses.dataclass
class ChangeTiming:
    """One prompt change as the client saw it (seconds from sending it)."""

    received_s: float  # -> the first chunk made with it arrived
    heard_s: float  # -> that chunk starts playing


class _Session:
    """One stream: requests sent from the caller's thread, responses read by a thread and
    queued with their arrival time."""

    def __init__(self, stub: music_pb2_grpc.MusicGenerationStub, setup: music_pb2.SessionSetup):
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self._requests.put(music_pb2.StreamRequest(setup=setup))
        self._call = stub.Stream(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put((time.time(), response))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._responses.put((time.time(), err))

    def send(self, request: music_pb2.StreamRequest) -> None:
        self._requests.put(request)

    def next(self) -> tuple[float, music_pb2.StreamResponse]:
        """The next response and when it arrived; raises on a failed stream."""
        arrived, response = self._responses.get(timeout=RESPONSE_TIMEOUT_S)
        if isinstance(response, grpc.RpcError):
            raise RuntimeError(f"the stream failed: {response.code().name}: {response.details()}")
        return arrived, response

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)


def embed(stub: music_pb2_grpc.MusicGenerationStub, text: str) -> music_pb2.WeightedPrompt:
    embedding = stub.EmbedStyle(music_pb2.EmbedStyleRequest(text=text), timeout=60).embedding
    return music_pb2.WeightedPrompt(embedding=music_pb2.Embedding(values=embedding))


def measure_session(
    stub: music_pb2_grpc.MusicGenerationStub,
    chunk_frames: int,
    prompts: list[music_pb2.WeightedPrompt],
    changes: int,
    rng: random.Random,
) -> list[ChangeTiming]:
    """One session of ``chunk_frames``: ``changes`` prompt changes, each timed."""
    session = _Session(stub, music_pb2.SessionSetup(chunk_frames=chunk_frames))
    try:
        _, first = session.next()
        started, period_s = first.started, first.started.chunk_seconds
        # No prompt before PLAY: the gateway would time that one too (to the first chunk).
        session.send(playback(music_pb2.PlaybackControl.PLAY))
        plays_at: float | None = None  # when the next chunk starts playing (the player)
        chunks_played = 0

        def until_chunk(version: int) -> tuple[float, float]:
            """Play what arrives until a chunk made with prompt ``version`` (after the warm-in
            chunks): when it arrived and when it starts playing."""
            nonlocal plays_at, chunks_played
            while True:
                arrived, response = session.next()
                kind = response.WhichOneof("response")
                if kind == "prompt_status" and not response.prompt_status.accepted:
                    raise RuntimeError(f"prompt refused: {response.prompt_status.message}")
                if kind != "chunk":
                    continue
                starts = arrived if plays_at is None else max(arrived, plays_at)
                plays_at = starts + chunk_seconds(response.chunk, started)
                chunks_played += 1
                if response.chunk.prompt_version >= version and chunks_played > WARM_IN_CHUNKS:
                    return arrived, starts

        until_chunk(version=0)
        timings = []
        for change in range(1, changes + 1):
            time.sleep(rng.uniform(0.0, period_s))
            sent = time.time()
            update = music_pb2.PromptUpdate(prompts=[prompts[change % len(prompts)]])
            session.send(music_pb2.StreamRequest(prompts=update))
            arrived, starts = until_chunk(version=change)
            timings.append(ChangeTiming(received_s=arrived - sent, heard_s=starts - sent))
        return timings
    finally:
        session.close()


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for ``args`` (see ``python -m bench latency --help``)."""
    began, machine = time.monotonic(), report.machine_info()
    lengths = list(args.chunk_frames)
    print(
        f"[latency] {args.model}: chunk frames {lengths}, {args.rounds} round(s) of "
        f"{args.changes} prompt changes per length",
        flush=True,
    )
    warm = ",".join(str(f) for f in lengths if f != facts.CHUNK_FRAMES)
    cluster = start_local_cluster(
        LocalClusterOptions(
            model=args.model,
            embedder_model=args.embedder_model,
            assets_dir=args.assets_dir,
            buffer_ahead_seconds=args.buffer_ahead_seconds,
            generator_flags=(
                "--dtype",
                args.dtype,
                *(("--warm-chunk-frames", warm) if warm else ()),
            ),
        )
    )
    timings: dict[int, list[ChangeTiming]] = {f: [] for f in lengths}
    gateway: dict[int, list[prometheus.HistogramDelta]] = {f: [] for f in lengths}
    underruns = {f: 0.0 for f in lengths}
    try:
        target = target_of(cluster)
        rng = random.Random(args.seed)
        with grpc.insecure_channel(target.gateway_address, options=CHANNEL_OPTIONS) as channel:
            stub = music_pb2_grpc.MusicGenerationStub(channel)
            prompts = [embed(stub, text) for text in PROMPT_TEXTS]
            for round_index in range(args.rounds):
                order = (
                    lengths[round_index % len(lengths) :] + lengths[: round_index % len(lengths)]
                )
                for frames in order:
                    before = prometheus.scrape(target.gateway_metrics_url)
                    timings[frames] += measure_session(stub, frames, prompts, args.changes, rng)
                    time.sleep(0.5)  # let the gateway count the session's last chunk
                    after = prometheus.scrape(target.gateway_metrics_url)
                    gateway[frames].append(
                        prometheus.histogram_delta(before, after, PROMPT_TO_AUDIO)
                    )
                    underruns[frames] += prometheus.counter_delta(before, after, UNDERRUNS)
                    heard = [t.heard_s for t in timings[frames]]
                    print(
                        f"  round {round_index + 1}, {frames} frames: heard median "
                        f"{statistics.median(heard):.2f} s over {len(heard)} changes",
                        flush=True,
                    )
        cluster.check_running()
    finally:
        cluster.stop()
    rows = [summary_row(f, timings[f], gateway[f], underruns[f]) for f in lengths]
    results = {
        "kind": "latency",
        "model": args.model,
        "dtype": args.dtype,
        "machine": machine,
        "buffer_ahead_seconds_for_2s_chunks": args.buffer_ahead_seconds,
        "rounds": args.rounds,
        "changes_per_session": args.changes,
        "seed": args.seed,
        "rows": rows,
        "runtime_s": round(time.monotonic() - began, 1),
    }
    json_path = report.write_json(Path(args.results_dir) / f"latency_{args.model}.json", results)
    report.update_docs(f"latency:{args.model}", markdown(results, json_path), Path(args.docs))
    print(f"[latency] wrote {json_path} and {args.docs}", flush=True)
    return results


def summary_row(
    frames: int,
    timings: list[ChangeTiming],
    gateway: list[prometheus.HistogramDelta],
    underruns: float,
) -> dict[str, Any]:
    count = sum(d.count for d in gateway)
    cumulative: dict[float, float] = {}
    for delta in gateway:
        for bound, n in delta.cumulative.items():
            cumulative[bound] = cumulative.get(bound, 0.0) + n
    pooled = prometheus.HistogramDelta(
        count=count, total=sum(d.total for d in gateway), cumulative=cumulative
    )
    received = [t.received_s for t in timings]
    heard = [t.heard_s for t in timings]
    return {
        "chunk_frames": frames,
        "chunk_seconds": frames / facts.FRAME_RATE_HZ,
        "changes": len(timings),
        "gateway_prompt_to_audio_count": count,
        "gateway_prompt_to_audio_mean_s": pooled.mean,
        "gateway_prompt_to_audio_p50_bucket_s": pooled.quantile_upper_bound(0.5),
        "gateway_prompt_to_audio_p90_bucket_s": pooled.quantile_upper_bound(0.9),
        "received_median_s": quantile(received, 0.5),
        "received_p90_s": quantile(received, 0.9),
        "heard_mean_s": statistics.fmean(heard) if heard else None,
        "heard_median_s": quantile(heard, 0.5),
        "heard_p90_s": quantile(heard, 0.9),
        "heard_max_s": max(heard) if heard else None,
        "underruns": underruns,
    }


def markdown(results: dict[str, Any], json_path: Path) -> str:
    def le(value: float | None) -> str:
        return "-" if value is None else f"<= {value:g}"

    rows = [
        [
            f"{r['chunk_frames']} ({r['chunk_seconds']:g} s)",
            r["changes"],
            report.fmt(r["gateway_prompt_to_audio_mean_s"]),
            le(r["gateway_prompt_to_audio_p50_bucket_s"]),
            le(r["gateway_prompt_to_audio_p90_bucket_s"]),
            report.fmt(r["received_median_s"]),
            report.fmt(r["heard_mean_s"]),
            report.fmt(r["heard_median_s"]),
            report.fmt(r["heard_p90_s"]),
            report.fmt(r["heard_max_s"]),
            f"{r['underruns']:g}",
        ]
        for r in results["rows"]
    ]
    return "\n".join(
        [
            f"### Prompt-to-audio latency by chunk length, model `{results['model']}`",
            "",
            f"Machine: {report.machine_line(results['machine'])}. One cluster; one session at a "
            f"time, the chunk lengths taking turns over {results['rounds']} rounds, "
            f"{results['changes_per_session']} prompt changes per session at random moments; "
            f"buffer ahead {results['buffer_ahead_seconds_for_2s_chunks']:g} s for 2 s chunks "
            f"(one chunk, whatever its length); runtime {results['runtime_s']:.0f} s.",
            "",
            report.markdown_table(
                [
                    "frames per chunk",
                    "prompt changes",
                    "gateway: prompt to audio heard, mean s",
                    "gateway p50 (bucket)",
                    "gateway p90 (bucket)",
                    "client: sent to chunk received, median s",
                    "heard after, mean s",
                    "heard after, median s",
                    "heard after, p90 s",
                    "heard after, max s",
                    "underruns",
                ],
                rows,
            ),
            "",
            f"Data: `{report.relative(json_path)}`.",
        ]
    )
