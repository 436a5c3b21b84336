"""The chaos run: listeners stream for minutes while generators are killed, hung and drained.

Three generators (by default) serve a few listeners who stream for the whole run. The cluster
is supervised the way `mrt up` supervises it (a generator that exits is started again with
back-off). One disruption at a time, at random: `kill` (SIGKILL), `stop` (SIGSTOP, then
SIGCONT after a while: a hung generator) or `drain` (SIGTERM: the generator drains its
sessions, exits and is started again). The next comes once every generator serves again and a
random pause has passed.

Judged as listeners would: every session must go on (sessions lost: goal 0); its chunks must
be contiguous and, with the `mock` model, each chunk's audio must be exactly what one
generator that never failed would have made (chunks duplicated or skipped: goal 0); silence
is what a player would hear (playback starts at the first chunk; a chunk later than its need
is silence), attributed to the disruption before it. Meanwhile the gateway's and embedder's
memory is sampled: it must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import prometheus, report
from bench.mock_reference import MockReference
from bench.player import Player
from bench.processes import MIB, ProcessSampler
from bench.stats import flatness
from services.cli.launcher import Cluster, ClusterConfig
from services.cli.supervision import Supervisor
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

EVENT_KINDS = ("kill", "stop", "drain")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
]
SUPERVISE_INTERVAL_S = 0.2


@dataclasses.dataclass
class Event:
    kind: str
    generator: str
    at_s: float  # since the run began
    recovered_s: float | None = None  # when every generator served again


@dataclasses.dataclass
class Stall:
    began_s: float  # since the run began: when the player ran dry
    seconds: float


@dataclasses.dataclass
class SessionRecord:
    """One listener session: what arrived, judged as it arrived."""

    listener: int
    seed: int
    chunks: int = 0
    sequence_errors: int = 0  # a sequence number or start time out of order
    audio_mismatches: int = 0  # audio differs from the reference at that position
    duplicated: int = 0  # ... because it repeats the chunk before
    skipped: int = 0  # ... because it is the chunk after
    migrations: int = 0
    stalls: list[Stall] = dataclasses.field(default_factory=list)
    lost: str = ""  # the status it ended with when it ended on its own


class ChaosListener:
    """Streams one session after another until the run ends (a new one if one is lost)."""

    def __init__(self, index: int, address: str, began: float, check_audio: bool):
        self.index, self.address, self.began, self.check_audio = index, address, began, check_audio
        self.sessions: list[SessionRecord] = []

    async def run(self, until: float) -> None:
        while time.time() < until:
            record = SessionRecord(listener=self.index, seed=1000 * self.index + len(self.sessions))
            self.sessions.append(record)
            await self._session(record, until)

    async def _session(self, record: SessionRecord, until: float) -> None:
        reference = MockReference(record.seed) if self.check_audio else None
        previous: np.ndarray | None = None
        upcoming: np.ndarray | None = reference.next_chunk() if reference else None
        player = Player()
        requests: asyncio.Queue = asyncio.Queue()
        for request in (
            music_pb2.StreamRequest(setup=music_pb2.SessionSetup(encoding=music_pb2.PCM_F32LE)),
            music_pb2.StreamRequest(config=music_pb2.GenerationConfig(seed=record.seed)),
            music_pb2.StreamRequest(
                playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
            ),
        ):
            requests.put_nowait(request)

        async def request_stream():
            while (request := await requests.get()) is not None:
                yield request

        async with grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            call = music_pb2_grpc.MusicGenerationStub(channel).Stream(request_stream())
            try:
                while True:
                    left_s = until - time.time()
                    if left_s <= 0:
                        break
                    try:
                        response = await asyncio.wait_for(call.read(), left_s)
                    except TimeoutError:
                        break
                    if response is grpc.aio.EOF:
                        record.lost = "stream ended"
                        return
                    kind = response.WhichOneof("response")
                    if kind == "warning" and response.warning.code == "SESSION_MIGRATED":
                        record.migrations += 1
                    if kind != "chunk":
                        continue
                    chunk = response.chunk
                    arrived = time.time()
                    if (
                        chunk.sequence != record.chunks
                        or abs(chunk.start_seconds - 2.0 * record.chunks) > 1e-6
                    ):
                        record.sequence_errors += 1
                    timing = player.receive(arrived, chunk.duration_seconds)
                    if timing is not None and timing.underrun:
                        record.stalls.append(
                            Stall(arrived - timing.lateness_s - self.began, timing.lateness_s)
                        )
                    if reference is not None:
                        audio = np.frombuffer(chunk.data, "<f4").reshape(-1, 2)
                        following = reference.next_chunk()
                        if not np.array_equal(audio, upcoming):
                            record.audio_mismatches += 1
                            if previous is not None and np.array_equal(audio, previous):
                                record.duplicated += 1
                            elif np.array_equal(audio, following):
                                record.skipped += 1
                        previous, upcoming = upcoming, following
                    record.chunks += 1
            except grpc.aio.AioRpcError as err:
                record.lost = f"{err.code().name}: {err.details()}"
            finally:
                requests.put_nowait(None)
                call.cancel()


class Disruptor:
    """Disrupts one generator at a time and waits for the cluster to recover."""

    def __init__(self, cluster: Cluster, rng: random.Random, began: float):
        self.cluster, self.rng, self.began = cluster, rng, began
        self.events: list[Event] = []

    def disrupt(self) -> Event:
        process = self.rng.choice(self.cluster.generators)
        kind = self.rng.choice(EVENT_KINDS)
        event = Event(kind, process.name, time.time() - self.began)
        print(f"  [{event.at_s:6.1f} s] {kind} {process.name}", flush=True)
        signals = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "drain": signal.SIGTERM}
        os.kill(process.pid, signals[kind])
        self.events.append(event)
        return event

    def continue_stopped(self, event: Event) -> None:
        os.kill(self.cluster.service(event.generator).pid, signal.SIGCONT)

    def all_serving(self) -> bool:
        generators = self.cluster.generators
        if not all(p.is_running() and p.check_health(timeout_s=0.5) for p in generators):
            return False
        gateway = prometheus.scrape(self.cluster.gateway.metrics_url)
        healthy = prometheus.value(gateway, "mrt_gateway_generators", state="healthy")
        return healthy == len(self.cluster.generators)


def run_listeners(
    address: str, count: int, began: float, until: float, check_audio: bool
) -> list[SessionRecord]:
    """All listeners, in their own process (see ``run``): every session they had."""
    listeners = [ChaosListener(i, address, began, check_audio) for i in range(count)]

    async def all_of_them():
        await asyncio.gather(*(listener.run(until) for listener in listeners))

    asyncio.run(all_of_them())
    return [session for listener in listeners for session in listener.sessions]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The chaos run for ``args`` (see ``python -m bench chaos --help``)."""
    machine = report.machine_info()
    rng = random.Random(args.seed)
    print(
        f"[chaos] {args.model}, {args.generators} generators, {args.listeners} listeners, "
        f"{args.minutes:g} min",
        flush=True,
    )
    config = ClusterConfig(
        model=args.model,
        embedder_model=args.embedder_model,
        generators=args.generators,
        assets_dir=args.assets_dir,
        ready_timeout_s=600.0,
        log_dir=Path(tempfile.mkdtemp(prefix="mrt-chaos-logs-")),
    ).with_free_ports()
    cluster = Cluster(config)
    cluster.__enter__()
    try:
        print(f"  cluster ready; service logs in {config.log_dir}", flush=True)
        began = time.time()
        until = began + args.minutes * 60
        # The listeners run in a process of their own: this one forks the restarted services,
        # which is only safe while no other thread of it is busy in gRPC.
        streaming = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        supervisor = Supervisor(
            cluster.services, log=lambda m: print(f"  supervisor: {m}", flush=True)
        )
        disruptor = Disruptor(cluster, rng, began)
        pids = {p.name: p.pid for p in (cluster.gateway, cluster.embedder)}
        with ProcessSampler(pids, args.sample_every_s) as sampler:
            sessions_future = streaming.submit(
                run_listeners,
                cluster.gateway_address,
                args.listeners,
                began,
                until,
                args.model == "mock",
            )
            chaos_loop(disruptor, supervisor, rng, until, args)
            sessions = sessions_future.result()
            streaming.shutdown()
        leftover = settle(cluster)
        restarts = dict(supervisor.restarts)
    finally:
        cluster.stop()
    results = summarize(args, machine, sessions, disruptor.events, sampler, leftover, restarts)
    results_dir, docs = Path(args.results_dir), Path(args.docs)
    json_path = report.write_json(results_dir / f"chaos_{args.model}.json", results)
    report.update_docs(f"chaos:{args.model}", markdown(results, json_path), docs)
    totals = results["totals"]
    print(
        f"[chaos] {len(results['events'])} disruptions; sessions lost {totals['sessions_lost']}; "
        f"duplicated {totals['chunks_duplicated']}, skipped {totals['chunks_skipped']}, "
        f"other audio mismatches {totals['audio_mismatches']}; memory flat: "
        f"{results['memory_flat']}",
        flush=True,
    )
    print(f"[chaos] wrote {json_path} and {docs}", flush=True)
    return results


def chaos_loop(
    disruptor: Disruptor,
    supervisor: Supervisor,
    rng: random.Random,
    until: float,
    args: argparse.Namespace,
) -> None:
    """Disrupt, let the cluster recover, pause, repeat; supervise all along (main thread: the
    services' parent-death signal is tied to the thread that starts them)."""
    next_event_at = time.time() + rng.uniform(args.min_pause_s, args.max_pause_s)
    current: Event | None = None  # the disruption in progress, until the cluster recovered
    continue_at: float | None = None  # when a stopped generator gets SIGCONT
    while time.time() < until:
        supervisor.step()
        now = time.time()
        if current is None:
            if next_event_at <= now < until - args.max_pause_s:
                current = disruptor.disrupt()
                continue_at = now + args.stop_seconds if current.kind == "stop" else None
        elif continue_at is not None:
            if now >= continue_at:
                disruptor.continue_stopped(current)
                continue_at = None
        elif disruptor.all_serving():
            current.recovered_s = now - disruptor.began
            current = None
            next_event_at = now + rng.uniform(args.min_pause_s, args.max_pause_s)
        time.sleep(SUPERVISE_INTERVAL_S)
    if continue_at is not None:
        disruptor.continue_stopped(current)


def settle(cluster: Cluster, timeout_s: float = 30.0) -> dict[str, float]:
    """Sessions still open once every listener has gone (waits for them to close)."""
    deadline = time.time() + timeout_s
    while True:
        open_now = {
            p.name: prometheus.value(prometheus.scrape(p.metrics_url), gauge)
            for p, gauge in [
                (cluster.gateway, "mrt_gateway_active_sessions"),
                *((g, "mrt_generator_active_sessions") for g in cluster.generators),
            ]
            if p.is_running()
        }
        if not any(open_now.values()) or time.time() > deadline:
            return open_now
        time.sleep(0.5)


def summarize(args, machine, sessions, events, sampler, leftover, restarts) -> dict[str, Any]:
    per_event = []
    for index, event in enumerate(events):
        ends_s = events[index + 1].at_s if index + 1 < len(events) else float("inf")
        stalls = [
            (s, stall)
            for s in sessions
            for stall in s.stalls
            if event.at_s <= stall.began_s < ends_s
        ]
        by_session: dict[int, float] = {}
        for session, stall in stalls:
            by_session[id(session)] = by_session.get(id(session), 0.0) + stall.seconds
        per_event.append(
            {
                **dataclasses.asdict(event),
                "silence_total_s": round(sum(st.seconds for _, st in stalls), 3),
                "silence_max_per_listener_s": round(max(by_session.values(), default=0.0), 3),
            }
        )
    before_first = [
        stall
        for s in sessions
        for stall in s.stalls
        if not events or stall.began_s < events[0].at_s
    ]
    memory = {
        name: [round(sample.rss_bytes / MIB, 2) for sample in series]
        for name, series in sampler.series.items()
    }
    verdicts = {
        name: flatness(series, relative_tolerance=args.rss_tolerance)
        for name, series in memory.items()
    }
    return {
        "kind": "chaos",
        "model": args.model,
        "minutes": args.minutes,
        "machine": machine,
        "settings": {
            "generators": args.generators,
            "listeners": args.listeners,
            "stop_seconds": args.stop_seconds,
            "min_pause_s": args.min_pause_s,
            "max_pause_s": args.max_pause_s,
            "seed": args.seed,
            "rss_tolerance": args.rss_tolerance,
        },
        "totals": {
            "sessions": len(sessions),
            "sessions_lost": sum(1 for s in sessions if s.lost),
            "lost_reasons": [s.lost for s in sessions if s.lost],
            "chunks": sum(s.chunks for s in sessions),
            "sequence_errors": sum(s.sequence_errors for s in sessions),
            "chunks_duplicated": sum(s.duplicated for s in sessions),
            "chunks_skipped": sum(s.skipped for s in sessions),
            "audio_mismatches": sum(s.audio_mismatches for s in sessions),
            "audio_checked": args.model == "mock",
            "migrations_seen": sum(s.migrations for s in sessions),
            "silence_total_s": round(sum(st.seconds for s in sessions for st in s.stalls), 3),
            "silence_without_disruption_s": round(sum(st.seconds for st in before_first), 3),
        },
        "events": per_event,
        "restarts": restarts,
        "leftover_sessions": leftover,
        "memory_mib": memory,
        "memory_flatness": {
            name: None if v is None else dataclasses.asdict(v) for name, v in verdicts.items()
        },
        "memory_flat": all(v is not None and v.flat for v in verdicts.values()),
    }


def markdown(results: dict[str, Any], json_path: Path) -> str:
    settings, totals = results["settings"], results["totals"]
    rows = [
        [
            f"{e['at_s']:.0f}",
            e["kind"],
            e["generator"],
            report.fmt(e["recovered_s"] - e["at_s"] if e["recovered_s"] is not None else None, 1),
            report.fmt(e["silence_total_s"], 2),
            report.fmt(e["silence_max_per_listener_s"], 2),
        ]
        for e in results["events"]
    ]
    memory_rows = [
        [
            name,
            report.fmt(v["second_quarter_median"], 1),
            report.fmt(v["last_quarter_median"], 1),
            "flat" if v["flat"] else "**GREW**",
        ]
        if v
        else [name, "-", "-", "too few samples"]
        for name, v in results["memory_flatness"].items()
    ]
    audio = (
        f"chunks duplicated **{totals['chunks_duplicated']}**, skipped "
        f"**{totals['chunks_skipped']}**, other audio mismatches {totals['audio_mismatches']} "
        f"(each chunk compared with the audio one generator that never failed makes)"
        if totals["audio_checked"]
        else "audio not compared (only possible with `mock`)"
    )
    return "\n".join(
        [
            f"### Chaos, model `{results['model']}`",
            "",
            f"Machine: {report.machine_line(results['machine'])}.",
            f"{results['minutes']:g} min, {settings['generators']} generators supervised as by "
            f"`mrt up`, {settings['listeners']} listeners streaming throughout; one disruption at a "
            f"time (kill = SIGKILL, stop = SIGSTOP for {settings['stop_seconds']:g} s then SIGCONT, "
            f"drain = SIGTERM), the next {settings['min_pause_s']:g}-{settings['max_pause_s']:g} s "
            f"after the cluster recovered (seed {settings['seed']}).",
            "",
            f"Sessions: {totals['sessions']}, lost **{totals['sessions_lost']}**; "
            f"{totals['chunks']} chunks, sequence errors {totals['sequence_errors']}; {audio}; "
            f"{totals['migrations_seen']} `SESSION_MIGRATED` warnings; silence heard in total "
            f"{totals['silence_total_s']:.2f} s. Service restarts: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(results['restarts'].items()) if v) or 'none'}. "
            f"Sessions open after the listeners left: "
            f"{', '.join(f'{k} {v:g}' for k, v in results['leftover_sessions'].items())}.",
            "",
            report.markdown_table(
                [
                    "at s",
                    "disruption",
                    "generator",
                    "recovered after s",
                    "silence, all listeners s",
                    "silence, worst listener s",
                ],
                rows,
            ),
            "",
            f"Memory flat: **{'yes' if results['memory_flat'] else 'no'}** (RSS MiB, last quarter "
            f"vs second quarter median, within {settings['rss_tolerance'] * 100:g}%):",
            "",
            report.markdown_table(
                ["process", "2nd quarter median", "last quarter median", "verdict"], memory_rows
            ),
            "",
            f"Data: `{report.relative(json_path)}`.",
        ]
    )
