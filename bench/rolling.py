"""The rolling-restart run: gateways restarted one by one under listeners, as a rollout does.

Several gateways share one Redis session store (a real ``redis-server`` started here, nothing
persisted). Listeners stream with `mrt stream`'s own recording loop over all gateways (round
robin), for the whole run. Every ``--restart-every-s`` the next gateway gets SIGTERM (it asks its
listeners to reconnect elsewhere, streams on until they moved, exits) and is started again.

Judged as listeners would: sessions lost (goal 0); each file must equal, sample for sample (s16
quantization aside), what one session that never moved makes with the `mock` model (no gap, no
repeat); silence is what a player would hear (playback starts at the first chunk).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile

from bench import report
from bench.mock_reference import mock_session_audio
from bench.player import Player
from services.cli.connection import CHANNEL_OPTIONS
from services.cli.launcher import Cluster, ClusterConfig, ServiceProcess
from services.cli.stream import stream_to_file
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

REDIS_START_TIMEOUT_S = 20.0
GATEWAY_READY_TIMEOUT_S = 120.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """A real redis-server on a free loopback port, persisting nothing: (process, store URL)."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is missing: run scripts/ci_system_deps.sh")
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                return process, f"redis://127.0.0.1:{port}/0"
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
    finally:
        client.close()


def restart_until_serving(gateway: ServiceProcess) -> None:
    gateway.start()
    deadline = time.monotonic() + GATEWAY_READY_TIMEOUT_S
    while not gateway.check_health():
        if time.monotonic() > deadline or not gateway.is_running():
            raise RuntimeError(f"{gateway.name} did not become ready:\n{gateway.log_tail()}")
        time.sleep(0.2)


def shared_store_gateways(
    cluster: Cluster, store_url: str, count: int, drain_grace_s: float
) -> list[ServiceProcess]:
    """The cluster's gateway and ``count - 1`` more, all on the session store ``store_url``."""
    flags = ["--session-store", store_url, "--drain-grace-s", f"{drain_grace_s:g}"]
    first = cluster.gateway
    first.stop()  # started again with the store flags (flags survive restarts, unlike env)
    first.spec = dataclasses.replace(first.spec, argv=(*first.spec.argv, *flags))
    gateways = [first]
    for index in range(1, count):
        argv = list(first.spec.argv)
        port, metrics_port = free_port(), free_port()
        argv[argv.index("--port") + 1] = str(port)
        argv[argv.index("--metrics-port") + 1] = str(metrics_port)
        gateways.append(
            ServiceProcess(
                dataclasses.replace(
                    first.spec,
                    name=f"gateway-{index}",
                    port=port,
                    metrics_port=metrics_port,
                    argv=tuple(argv),
                ),
                log_dir=cluster.config.log_dir,
            )
        )
    for gateway in gateways:
        restart_until_serving(gateway)
    return gateways


class ArrivalRecorder:
    """Wraps a MusicGeneration stub: keeps each chunk with its arrival time, whichever stream
    (and gateway) brought it."""

    def __init__(self, stub: music_pb2_grpc.MusicGenerationStub):
        self._stub = stub
        self.arrivals: list[tuple[float, music_pb2.AudioChunk]] = []

    def Stream(self, requests, **kwargs):
        return _RecordedCall(self._stub.Stream(requests, **kwargs), self.arrivals)

    def silence_s(self) -> float:
        """What a player would have sat in silence: each chunk plays once, when it first came."""
        first: dict[int, tuple[float, music_pb2.AudioChunk]] = {}
        for arrival_s, chunk in self.arrivals:
            first.setdefault(chunk.sequence, (arrival_s, chunk))
        player = Player()
        for sequence in sorted(first):
            arrival_s, chunk = first[sequence]
            player.receive(arrival_s, chunk.duration_seconds)
        return player.stalled_s


class _RecordedCall:
    def __init__(self, call, arrivals: list):
        self._call = call
        self._arrivals = arrivals

    def __iter__(self):
        for response in self._call:
            if response.WhichOneof("response") == "chunk":
                self._arrivals.append((time.time(), response.chunk))
            yield response

    def cancel(self) -> None:
        self._call.cancel()


@dataclasses.dataclass
class RecordingListener:
    """One `mrt stream` recording in a thread, against every gateway."""

    seed: int
    seconds: float
    out_path: Path
    addresses: list[str]
    summary: Any = None
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            "ipv4:" + ",".join(self.addresses), options=CHANNEL_OPTIONS
        )
        self.stub = ArrivalRecorder(music_pb2_grpc.MusicGenerationStub(self.channel))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with open(os.devnull, "w") as quiet:
                self.summary = stream_to_file(
                    self.stub,
                    seconds=self.seconds,
                    out_path=self.out_path,
                    setup=music_pb2.SessionSetup(encoding=music_pb2.PCM_S16LE),
                    config=music_pb2.GenerationConfig(seed=self.seed),
                    progress_out=quiet,
                )
        except Exception as err:  # judged by the caller
            self.error = err
        finally:
            self.channel.close()

    def file_is_the_reference(self) -> bool:
        """The file holds exactly the chunks of a `mock` session that never moved."""
        return wav_is_mock_session(
            self.out_path, self.seed, self.summary.chunks if self.summary else 0
        )


def wav_is_mock_session(path: Path, seed: int, chunks: int) -> bool:
    """The WAV at ``path`` holds exactly the first ``chunks`` chunks of an unconditioned `mock`
    session with ``seed`` that never moved: no chunk missing, repeated or out of order."""
    audio, rate = soundfile.read(path, dtype="float32")
    expected = np.concatenate(mock_session_audio(seed, chunks)) if chunks else audio[:0]
    return (
        rate == 48000
        and audio.shape == expected.shape
        and float(np.abs(audio - expected).max(initial=0.0)) <= 2 / 32767
    )


def record_listener(seed: int, seconds: float, out_path: Path, addresses: list[str]) -> dict:
    """One listener's whole recording, judged (run in its own process: the bench process
    starts gateways, and forking while gRPC threads run is unsafe)."""
    listener = RecordingListener(seed=seed, seconds=seconds, out_path=out_path, addresses=addresses)
    listener.thread.join()
    error = listener.error
    return {
        "seed": seed,
        "lost": "" if error is None else f"{type(error).__name__}: {error}"[:300],
        "chunks": listener.summary.chunks if listener.summary else 0,
        "reconnects": listener.summary.reconnects if listener.summary else 0,
        "file_equals_reference": error is None and listener.file_is_the_reference(),
        "silence_s": round(listener.stub.silence_s(), 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = report.machine_info()
    work = Path(tempfile.mkdtemp(prefix="mrt-rolling-"))
    config = ClusterConfig(
        model="mock",
        embedder_model="mock",
        log_dir=work / "logs",
        assets_dir=args.assets_dir,
        ready_timeout_s=300,
    ).with_free_ports()
    redis_process, store_url = start_redis(work)
    cluster = Cluster(config)
    per_listener: list[dict] = []
    gateways: list[ServiceProcess] = []
    restarts: list[dict[str, float]] = []
    try:
        cluster.__enter__()
        gateways = shared_store_gateways(cluster, store_url, args.gateways, args.drain_grace_s)
        addresses = [g.address for g in gateways]
        seconds = args.minutes * 60
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=args.listeners, mp_context=multiprocessing.get_context("spawn")
        )
        listeners = [
            pool.submit(record_listener, 100 + i, seconds, work / f"listener-{i}.wav", addresses)
            for i in range(args.listeners)
        ]
        began = time.monotonic()
        turn = 0
        while not all(listener.done() for listener in listeners):
            next_restart = began + (len(restarts) + 1) * args.restart_every_s
            while time.monotonic() < next_restart and not all(
                listener.done() for listener in listeners
            ):
                time.sleep(0.2)
            if time.monotonic() < next_restart or time.monotonic() - began > seconds - 5:
                break
            gateway = gateways[turn % len(gateways)]
            turn += 1
            at_s = time.monotonic() - began
            gateway.terminate()  # SIGTERM: drain, RECONNECT, exit
            code = gateway.wait(args.drain_grace_s + 15)
            if code is None:
                gateway.kill()
            exited_s = time.monotonic() - began
            gateway.release()
            restart_until_serving(gateway)
            restarts.append(
                {
                    "gateway": gateway.name,
                    "at_s": round(at_s, 1),
                    "exited_after_s": round(exited_s - at_s, 2),
                    "exit_code": code,
                    "serving_again_after_s": round(time.monotonic() - began - at_s, 2),
                }
            )
        per_listener = [listener.result(timeout=seconds + 120) for listener in listeners]
        pool.shutdown()
    finally:
        for extra in gateways[1:]:  # the cluster stops its own gateway
            extra.stop()
        cluster.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)
    results = summarize(args, machine, per_listener, restarts)
    json_path = report.write_json(Path(args.results_dir) / "rolling_mock.json", results)
    report.update_docs("rolling", markdown(results, json_path), Path(args.docs))
    print(markdown(results, json_path))
    return results


def summarize(args, machine, per_listener: list[dict], restarts) -> dict[str, Any]:
    return {
        "model": "mock",
        "machine": machine,
        "settings": {
            "minutes": args.minutes,
            "gateways": args.gateways,
            "listeners": args.listeners,
            "restart_every_s": args.restart_every_s,
            "drain_grace_s": args.drain_grace_s,
        },
        "restarts": restarts,
        "listeners": per_listener,
        "totals": {
            "sessions": len(per_listener),
            "sessions_lost": sum(1 for listener in per_listener if listener["lost"]),
            "files_not_continuous": sum(
                1 for listener in per_listener if not listener["file_equals_reference"]
            ),
            "reconnects": sum(listener["reconnects"] for listener in per_listener),
            "silence_total_s": round(sum(listener["silence_s"] for listener in per_listener), 3),
            "silence_max_per_listener_s": max(
                (listener["silence_s"] for listener in per_listener), default=0.0
            ),
        },
    }


def markdown(results: dict[str, Any], json_path: Path) -> str:
    settings, totals = results["settings"], results["totals"]
    rows = [
        [
            r["gateway"],
            f"{r['at_s']:.0f}",
            report.fmt(r["exited_after_s"], 1),
            str(r["exit_code"]),
            report.fmt(r["serving_again_after_s"], 1),
        ]
        for r in results["restarts"]
    ]
    listener_rows = [
        [
            str(listener["seed"]),
            str(listener["chunks"]),
            str(listener["reconnects"]),
            "yes" if listener["file_equals_reference"] else "**no**",
            report.fmt(listener["silence_s"], 2),
            listener["lost"] or "-",
        ]
        for listener in results["listeners"]
    ]
    return "\n".join(
        [
            "### Rolling restart of the gateways, model `mock`",
            "",
            f"Machine: {report.machine_line(results['machine'])}.",
            f"{settings['minutes']:g} min, {settings['gateways']} gateways sharing one Redis "
            f"session store, {settings['listeners']} listeners (`mrt stream`'s recording loop, "
            f"round robin over the gateways) streaming throughout; every "
            f"{settings['restart_every_s']:g} s the next gateway gets SIGTERM (drain grace "
            f"{settings['drain_grace_s']:g} s) and is started again.",
            "",
            f"Sessions: {totals['sessions']}, lost **{totals['sessions_lost']}**; files that differ "
            f"from an uninterrupted session (gap or repeat): **{totals['files_not_continuous']}**; "
            f"resume attempts {totals['reconnects']} (a client's new stream may first reach the "
            f"draining gateway, which refuses it, and is retried); silence heard: {totals['silence_total_s']:.2f} s in "
            f"total, {totals['silence_max_per_listener_s']:.2f} s for the worst listener.",
            "",
            report.markdown_table(
                ["gateway", "SIGTERM at s", "exited after s", "exit code", "serving again after s"],
                rows,
            ),
            "",
            report.markdown_table(
                [
                    "listener seed",
                    "chunks",
                    "resume attempts",
                    "file continuous",
                    "silence s",
                    "lost",
                ],
                listener_rows,
            ),
            "",
            f"Data: `{report.relative(json_path)}`.",
        ]
    )
