"""The load benchmark: how many concurrent listeners one generator keeps in real time.

A trial runs N real listeners for T seconds (their connections spread over a ramp) and
records what they heard (underruns, time to first audio, chunk lateness against the player's
need), what the generator did (batch sizes, generation time, real-time factor, from its
/metrics), and what each service process cost (CPU, RSS). A trial *holds* when every
listener was admitted, got audio and heard no underrun. The search steps N up and bisects to
the largest N that holds, once with batching and once with one session per batch, each on a
freshly started cluster.

A trial also fails when the listeners' buffers drain steadily (chunk lateness trending up by
more than ``LATENESS_TREND_LIMIT_S_PER_MIN``), even if none ran dry before the trial ended.
With ``--model sim`` each cost model is one mode, held against its bound N*.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import psutil

from bench import plots, prometheus, report
from bench.cluster import (
    BenchTarget,
    LocalClusterOptions,
    active_sessions,
    get_load,
    settle,
    start_local_cluster,
    startup_capacity_prediction,
    target_of,
)
from bench.cost_models import parse_cost_models
from bench.listeners import ListenerPool, ListenerResult, ListenerScript
from bench.processes import MIB, ProcessSampler, sample_process
from bench.search import find_largest_held
from bench.stats import percentiles, slope
from services.common import model_facts as facts
from services.generator.sim_engine import SimCost

# A client process this busy (CPU cores) may itself be what delays chunks.
CLIENT_SATURATED_CORES = 0.8
# The generator's own default for --max-batch-size (the warm-up size when it is not set here).
DEFAULT_MAX_BATCH_SIZE = 16
# With --model sim: room for every cost model's N* in one batch.
SIM_MAX_BATCH_SIZE = 256
# A trial whose chunk lateness grows faster than this does not hold: the listeners' 2 s of
# buffer would run dry within ten minutes.
LATENESS_TREND_LIMIT_S_PER_MIN = 0.2
# Chunks at the start of each listener left out of the trend (they fill the buffer).
TREND_SKIPPED_CHUNKS = 2
# Listeners with fewer chunks after those are left out of the trend (too short to show one).
TREND_MIN_CHUNKS = 10
# The search's default range (without a cost model's bound to start from).
DEFAULT_START_SESSIONS, DEFAULT_MAX_SESSIONS = 1, 128
# With a cost model, the search starts at this fraction of N* (the target) and stops at N*.
SIM_START_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    listen_s: float
    ramp_s: float
    max_sessions: int
    start_sessions: int
    budget_s: float  # per mode
    warmup_s: float  # listening time of the unjudged warm-up trial (0: none)
    client_processes: int
    sample_interval_s: float


@dataclasses.dataclass(frozen=True)
class Mode:
    label: str  # "batched" / "unbatched" / "as configured" / a sim cost model's name
    max_batch_size: int | None  # None: not set by the benchmark
    sim_cost: SimCost | None = None  # the cost model of a sim generator

    def generator_flags(self) -> tuple[str, ...]:
        if self.sim_cost is None:
            return ()
        return (
            "--sim-batch-seconds",
            str(self.sim_cost.batch_seconds),
            "--sim-session-seconds",
            str(self.sim_cost.session_seconds),
        )


@dataclasses.dataclass
class Trial:
    sessions: int
    held: bool
    wall_s: float
    admitted: int
    refused: int
    errors: dict[str, int]
    no_audio: int
    underruns: int
    sessions_with_underruns: int
    chunks: int
    time_to_first_audio_s: dict[str, float | None]
    lateness_s: dict[str, float | None]  # arrival minus need; negative = still buffered
    lateness_trend_s_per_min: float | None  # > 0: the listeners' buffers drain
    gateway_underruns: float | None
    batch_size_mean: float | None
    batch_size_counts: dict[str, float]
    chunk_generation_s_mean: float | None
    real_time_factor_gauge: float | None
    real_time_factor_trial: float | None  # audio seconds over compute seconds, all batches
    generator_capacity_reported: int | None
    generator_sessions_left_open: int | None  # after every listener hung up: leaked sessions
    processes: dict[str, dict[str, Any]]
    client_cpu_cores: list[float]


def listener_scripts(sessions: int, settings: LoadSettings, model: str) -> list[ListenerScript]:
    """N listeners connecting evenly over the ramp, each listening ``listen_s`` after PLAY.

    They end with STOP and a half-close, so each session is over on every service when its
    stream ends and the next trial starts clean."""
    return [
        ListenerScript(
            listen_s=settings.listen_s,
            start_delay_s=settings.ramp_s * i / sessions,
            stop_politely=True,
            model=model,
        )
        for i in range(sessions)
    ]


def summarize_listeners(results: list[ListenerResult]) -> dict[str, Any]:
    """What the listeners heard, counted the way a trial is judged."""
    errors: dict[str, int] = {}
    for r in results:
        if r.outcome == "error":
            errors[r.error] = errors.get(r.error, 0) + 1
    admitted = [r for r in results if r.outcome != "refused" and r.open_s is not None]
    return {
        "admitted": len(admitted),
        "refused": sum(r.outcome == "refused" for r in results),
        "errors": errors,
        "no_audio": sum(r.outcome == "ok" and r.chunks == 0 for r in results),
        "underruns": sum(r.underruns for r in results),
        "sessions_with_underruns": sum(r.underruns > 0 for r in results),
        "chunks": sum(r.chunks for r in results),
        "time_to_first_audio_s": percentiles(
            [r.time_to_first_audio_s for r in results if r.time_to_first_audio_s is not None]
        ),
        "lateness_s": percentiles([x for r in results for x in r.lateness_s]),
        "lateness_trend_s_per_min": lateness_trend_s_per_min(results),
    }


def lateness_trend_s_per_min(results: list[ListenerResult]) -> float | None:
    """How fast chunk lateness grows over a trial, pooled over the listeners (seconds per
    minute of listening; None when no listener got enough chunks to show a trend). Steady playback is flat; a generator that
    falls behind shows as a rising line long before a buffer runs dry."""
    xs, ys = [], []
    for r in results:
        if len(r.lateness_s) < TREND_SKIPPED_CHUNKS + TREND_MIN_CHUNKS:
            continue
        for index, lateness in enumerate(r.lateness_s[TREND_SKIPPED_CHUNKS:]):
            xs.append(index * facts.CHUNK_SECONDS / 60)
            ys.append(lateness)
    return slope(xs, ys)


def trial_held(summary: dict[str, Any], sessions: int) -> bool:
    trend = summary["lateness_trend_s_per_min"]
    return (
        summary["admitted"] == sessions
        and summary["refused"] == 0
        and not summary["errors"]
        and summary["no_audio"] == 0
        and summary["underruns"] == 0
        and (trend is None or trend <= LATENESS_TREND_LIMIT_S_PER_MIN)
    )


def generator_activity(before: prometheus.Samples, after: prometheus.Samples) -> dict[str, Any]:
    """Batching and speed of the generator between two scrapes of its /metrics (all None
    when there were no scrapes)."""
    batches = prometheus.histogram_delta(before, after, "mrt_generator_batch_size")
    generation = prometheus.histogram_delta(before, after, "mrt_generator_chunk_generation_seconds")
    trial_rtf = (
        batches.total * facts.CHUNK_SECONDS / generation.total if generation.total > 0 else None
    )
    return {
        "batch_size_mean": batches.mean,
        "batch_size_counts": batches.per_bucket(),
        "chunk_generation_s_mean": generation.mean,
        "real_time_factor_gauge": (
            prometheus.value(after, "mrt_generator_real_time_factor") if after else None
        ),
        "real_time_factor_trial": trial_rtf,
    }


def run_trial(
    target: BenchTarget, pool: ListenerPool, sessions: int, settings: LoadSettings, model: str
) -> Trial:
    def scrape(url: str | None) -> prometheus.Samples:
        return prometheus.scrape(url) if url else {}

    generator_before, gateway_before = (
        scrape(target.generator_metrics_url),
        scrape(target.gateway_metrics_url),
    )
    started = time.monotonic()
    with ProcessSampler(target.pids, settings.sample_interval_s) as sampler:
        results, usage = pool.run(listener_scripts(sessions, settings, model))
    wall_s = time.monotonic() - started
    generator_after, gateway_after = (
        scrape(target.generator_metrics_url),
        scrape(target.gateway_metrics_url),
    )
    heard = summarize_listeners(results)
    return Trial(
        sessions=sessions,
        held=trial_held(heard, sessions),
        wall_s=wall_s,
        **heard,
        gateway_underruns=(
            prometheus.counter_delta(
                gateway_before, gateway_after, "mrt_gateway_buffer_underruns_total"
            )
            if target.gateway_metrics_url
            else None
        ),
        **generator_activity(generator_before, generator_after),
        generator_capacity_reported=(
            get_load(target.generator_address).capacity_sessions
            if target.generator_address
            else None
        ),
        generator_sessions_left_open=None,
        processes={name: s.as_dict() for name, s in sampler.summaries().items()},
        client_cpu_cores=[round(u.cpu_cores, 3) for u in usage],
    )


def describe(trial: Trial) -> str:
    """One progress line."""
    lateness, ttfa = trial.lateness_s, trial.time_to_first_audio_s
    cpu = ", ".join(f"{name} {p['cpu_cores']:.2f}" for name, p in trial.processes.items())
    return (
        f"N={trial.sessions:<4} {'held ' if trial.held else 'FAILED'} underruns {trial.underruns}"
        f" refused {trial.refused} errors {sum(trial.errors.values())}"
        f" | lateness p50 {report.fmt(lateness['p50'])} s p99 {report.fmt(lateness['p99'])} s"
        f" trend {report.fmt(trial.lateness_trend_s_per_min, 3)} s/min"
        f" | first audio p99 {report.fmt(ttfa['p99'])} s"
        f" | batch mean {report.fmt(trial.batch_size_mean, 1)}"
        f" RTF {report.fmt(trial.real_time_factor_trial, 1)}"
        f" | CPU cores: {cpu}{', ' if cpu else ''}client {'+'.join(f'{c:.2f}' for c in trial.client_cpu_cores)}"
    )


def memory_growth(trials: list[Trial]) -> dict[str, float | None]:
    """Per process: MiB of peak RSS added per extra session, fitted over the trials."""
    names = {name for t in trials for name in t.processes}
    return {
        name: slope(
            [t.sessions for t in trials if name in t.processes],
            [t.processes[name]["rss_max_mib"] for t in trials if name in t.processes],
        )
        for name in sorted(names)
    }


def warm_up(
    target: BenchTarget, pool: ListenerPool, mode: Mode, settings: LoadSettings, model: str
) -> Trial:
    """One trial that is not judged, with a full batch of listeners spread over a chunk
    period, so that batch shapes the generator's warm-up did not compile are compiled before
    the search rather than in the middle of a judged trial."""
    sessions = min(mode.max_batch_size or DEFAULT_MAX_BATCH_SIZE, settings.max_sessions)
    result = run_trial(
        target, pool, sessions, dataclasses.replace(settings, listen_s=settings.warmup_s), model
    )
    settle(target)
    print(f"  [{mode.label}] warm-up, not judged: {describe(result)}", flush=True)
    return result


def measure(
    target: BenchTarget,
    mode: Mode,
    settings: LoadSettings,
    model: str,
    capacity_sessions: int | None,
) -> dict[str, Any]:
    """The search for the largest N this cluster holds, and every trial it ran."""
    trials: list[Trial] = []
    idle = {
        name: round(sample_process(psutil.Process(pid), 0.0).rss_bytes / MIB, 1)
        for name, pid in target.pids.items()
    }
    warmup = None
    with ListenerPool(target.gateway_address, settings.client_processes) as pool:
        if settings.warmup_s > 0:
            warmup = warm_up(target, pool, mode, settings, model)

        def trial(sessions: int) -> bool:
            _, generator_before = active_sessions(target)
            result = run_trial(target, pool, sessions, settings, model)
            _, generator_after = settle(target)
            if generator_before is not None and generator_after is not None:
                result.generator_sessions_left_open = generator_after - generator_before
            trials.append(result)
            print(f"  [{mode.label}] {describe(result)}", flush=True)
            if result.generator_sessions_left_open:
                print(
                    f"  [{mode.label}] warning: {result.generator_sessions_left_open} generator "
                    f"session(s) still open after their listeners hung up",
                    flush=True,
                )
            if max(result.client_cpu_cores) > CLIENT_SATURATED_CORES:
                print(
                    f"  [{mode.label}] warning: a client process used "
                    f"{max(result.client_cpu_cores):.2f} cores; the client side may be the "
                    f"bottleneck (try --client-processes)",
                    flush=True,
                )
            return result.held

        search = find_largest_held(
            trial,
            max_sessions=settings.max_sessions,
            budget_s=settings.budget_s,
            start_sessions=settings.start_sessions,
        )
    predicted = None
    if target.generator_log is not None and target.generator_log.exists():
        predicted = startup_capacity_prediction(target.generator_log.read_text())
    return {
        "mode": mode.label,
        "max_batch_size": mode.max_batch_size,
        "sim_cost": None
        if mode.sim_cost is None
        else {
            "batch_seconds": mode.sim_cost.batch_seconds,
            "session_seconds": mode.sim_cost.session_seconds,
            "held_sessions_bound": mode.sim_cost.held_sessions_bound(),
        },
        "capacity_override": capacity_sessions,
        "predicted_capacity_at_startup": predicted,
        # What GetLoad says after the trials: the live prediction, or the override if set.
        "capacity_reported_after_trials": (
            get_load(target.generator_address).capacity_sessions
            if target.generator_address
            else None
        ),
        "largest_held": search.largest_held,
        "smallest_failed": search.smallest_failed,
        "exact": search.exact,
        "out_of_budget": search.out_of_budget,
        "idle_rss_mib": idle,
        "rss_growth_mib_per_session": memory_growth(trials),
        "warmup_trial": None if warmup is None else dataclasses.asdict(warmup),
        "client_saturated": any(max(t.client_cpu_cores) > CLIENT_SATURATED_CORES for t in trials),
        "trials": [dataclasses.asdict(t) for t in trials],
    }


def modes(args: argparse.Namespace) -> list[Mode]:
    if args.address:
        return [Mode("as configured", None)]
    if args.model == "sim":
        return [
            Mode(name, args.max_batch_size or SIM_MAX_BATCH_SIZE, cost)
            for name, cost in parse_cost_models(args.cost_model).items()
        ]
    chosen = {
        "batched": Mode("batched", args.max_batch_size or DEFAULT_MAX_BATCH_SIZE),
        "unbatched": Mode("unbatched", 1),
    }
    return [chosen[name] for name in args.modes.split(",")]


def search_range(args: argparse.Namespace, mode: Mode) -> tuple[int, int]:
    """(first N tried, largest N tried): the flags, else from the cost model's N*, else the
    defaults."""
    if mode.sim_cost is not None:
        bound = max(1, mode.sim_cost.held_sessions_bound())
        start, largest = math.ceil(SIM_START_FRACTION * bound), bound
    else:
        start, largest = DEFAULT_START_SESSIONS, DEFAULT_MAX_SESSIONS
    largest = args.max_sessions or largest
    return min(args.start_sessions or start, largest), largest


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The load benchmark for ``args`` (see ``python -m bench load --help``)."""
    settings = LoadSettings(
        listen_s=args.listen_seconds,
        ramp_s=args.ramp_seconds,
        max_sessions=args.max_sessions or DEFAULT_MAX_SESSIONS,
        start_sessions=args.start_sessions or DEFAULT_START_SESSIONS,
        budget_s=args.budget_minutes * 60,
        warmup_s=args.warmup_seconds,
        client_processes=args.client_processes,
        sample_interval_s=args.sample_interval_s,
    )
    results: dict[str, Any] = {
        "kind": "load",
        "model": args.model,
        "machine": report.machine_info(),
        "settings": dataclasses.asdict(settings)
        | {
            "buffer_ahead_seconds": args.buffer_ahead_seconds,
            "capacity_sessions": args.capacity_sessions,
            "address": args.address,
        },
        "modes": [],
    }
    began = time.monotonic()
    for mode in modes(args):
        start_sessions, max_sessions = search_range(args, mode)
        mode_settings = dataclasses.replace(
            settings, start_sessions=start_sessions, max_sessions=max_sessions
        )
        print(
            f"[load] {args.model}, {mode.label}"
            f"{'' if mode.max_batch_size is None else f' (max batch size {mode.max_batch_size})'}",
            flush=True,
        )
        if args.address:
            target = BenchTarget(
                gateway_address=args.address,
                generator_address=args.generator_address,
                generator_metrics_url=args.generator_metrics_url,
                gateway_metrics_url=args.gateway_metrics_url,
            )
            results["modes"].append(measure(target, mode, mode_settings, args.model, None))
            continue
        capacity = args.capacity_sessions or None
        cluster = start_local_cluster(
            LocalClusterOptions(
                model=args.model,
                embedder_model=args.embedder_model,
                max_batch_size=mode.max_batch_size,
                capacity_sessions=capacity,
                buffer_ahead_seconds=args.buffer_ahead_seconds,
                assets_dir=args.assets_dir,
                generator_flags=("--dtype", args.dtype, *mode.generator_flags()),
            )
        )
        try:
            print(f"  cluster ready; service logs in {cluster.config.log_dir}", flush=True)
            results["modes"].append(
                measure(target_of(cluster), mode, mode_settings, args.model, capacity)
            )
        finally:
            cluster.stop()
    results["runtime_s"] = round(time.monotonic() - began, 1)
    results["batching_gain"] = batching_gain(results["modes"])
    write_outputs(results, Path(args.results_dir), Path(args.docs))
    return results


def batching_gain(mode_results: list[dict[str, Any]]) -> float | None:
    """Sessions held with batching over sessions held one at a time (the issue asks >= 4)."""
    held = {m["mode"]: m["largest_held"] for m in mode_results}
    if held.get("batched") and held.get("unbatched"):
        return held["batched"] / held["unbatched"]
    return None


def write_outputs(results: dict[str, Any], results_dir: Path, docs: Path) -> None:
    stem = f"load_{results['model']}"
    json_path = report.write_json(results_dir / f"{stem}.json", results)
    png_path = plots.plot_load(results, results_dir / f"{stem}.png")
    report.update_docs(f"load:{results['model']}", markdown(results, json_path, png_path), docs)
    print(f"[load] wrote {json_path}, {png_path} and {docs}", flush=True)


def markdown(results: dict[str, Any], json_path: Path, png_path: Path) -> str:
    settings = results["settings"]
    lines = [
        f"### Load, model `{results['model']}`",
        "",
        f"Machine: {report.machine_line(results['machine'])}. Runtime {results['runtime_s']:.0f} s.",
        f"Each trial: N listeners connecting over {settings['ramp_s']:g} s, each listening "
        f"{settings['listen_s']:g} s after PLAY; server buffer-ahead "
        f"{settings['buffer_ahead_seconds'] if settings['buffer_ahead_seconds'] is not None else 'default'}"
        f" s; {settings['client_processes']} client process(es).",
        "",
    ]
    summary_rows = []
    for m in results["modes"]:
        held = f"{m['largest_held']}" + (
            ""
            if m["exact"]
            else (
                " (search hit the maximum)"
                if m["smallest_failed"] is None
                else f" (next tried: {m['smallest_failed']})"
            )
        )
        summary_rows.append(
            [
                m["mode"],
                m["max_batch_size"] or "default",
                held,
                prediction(m) or "-",
                m["capacity_override"] or "measured",
                len(m["trials"]),
                "yes" if m["client_saturated"] else "no",
            ]
        )
    lines.append(
        report.markdown_table(
            [
                "mode",
                "max batch",
                "largest N held (0 underruns)",
                "generator's prediction",
                "admission limit",
                "trials",
                "client saturated",
            ],
            summary_rows,
        )
    )
    sim_rows = [cost_model_row(m) for m in results["modes"] if m.get("sim_cost")]
    if sim_rows:
        lines += [
            "",
            "Held against the bound N* = floor((2 s - a) / b) of each cost model "
            "(a chunk costs a + b x batch size seconds):",
            "",
            report.markdown_table(
                [
                    "cost model",
                    "a s",
                    "b s",
                    "N*",
                    "held",
                    "held / N*",
                    "generator's prediction",
                    "prediction / held",
                ],
                sim_rows,
            ),
        ]
    for m in results["modes"]:
        if m["idle_rss_mib"]:
            growth = m["rss_growth_mib_per_session"]
            lines += [
                "",
                f"Memory, {m['mode']}: RSS after warm-up "
                + ", ".join(
                    f"{name} {mib:.0f} MiB ({_signed(growth.get(name))} MiB per session)"
                    for name, mib in m["idle_rss_mib"].items()
                )
                + ".",
            ]
    if results["batching_gain"] is not None:
        lines += [
            "",
            f"Batching holds **{results['batching_gain']:.1f}x** as many real-time "
            f"sessions as max batch size 1 (the issue's target: at least 4x with `tiny`).",
        ]
    lines += [
        "",
        "Trials (lateness = chunk arrival minus the player's need; negative = audio still "
        "buffered; CPU in cores, RSS peak in MiB):",
        "",
    ]
    rows = []
    for m in results["modes"]:
        for t in sorted(m["trials"], key=lambda t: t["sessions"]):
            procs = "; ".join(
                f"{name} {p['cpu_cores']:.2f} / {p['rss_max_mib']:.0f}"
                for name, p in t["processes"].items()
            )
            rows.append(
                [
                    m["mode"],
                    t["sessions"],
                    "yes" if t["held"] else "no",
                    t["underruns"],
                    t["refused"],
                    sum(t["errors"].values()),
                    report.fmt(t["time_to_first_audio_s"]["p99"]),
                    report.fmt(t["lateness_s"]["p50"]),
                    report.fmt(t["lateness_s"]["p99"]),
                    report.fmt(t.get("lateness_trend_s_per_min"), 3),
                    report.fmt(t["batch_size_mean"], 1),
                    report.fmt(t["real_time_factor_trial"], 1),
                    procs or "-",
                    "+".join(f"{c:.2f}" for c in t["client_cpu_cores"]),
                    "-"
                    if t["generator_sessions_left_open"] is None
                    else t["generator_sessions_left_open"],
                ]
            )
    lines.append(
        report.markdown_table(
            [
                "mode",
                "N",
                "held",
                "underruns",
                "refused",
                "errors",
                "first audio p99 s",
                "lateness p50 s",
                "lateness p99 s",
                "lateness trend s/min",
                "batch mean",
                "RTF",
                "CPU / RSS per service",
                "client CPU",
                "left open",
            ],
            rows,
        )
    )
    lines += [
        "",
        f"Data: `{report.relative(json_path)}`; plot: `{report.relative(png_path)}`.",
        "",
        f"![load, {results['model']}]({report.link_from_docs(png_path)})",
    ]
    return "\n".join(lines)


def cost_model_row(mode_result: dict[str, Any]) -> list[Any]:
    cost, held, predicted = (
        mode_result["sim_cost"],
        mode_result["largest_held"],
        prediction(mode_result),
    )
    bound = cost["held_sessions_bound"]
    return [
        mode_result["mode"],
        f"{cost['batch_seconds']:g}",
        f"{cost['session_seconds']:g}",
        bound,
        held,
        f"{held / bound:.0%}" if bound else "-",
        predicted or "-",
        f"{predicted / held:.2f}" if predicted and held else "-",
    ]


def prediction(mode_result: dict[str, Any]) -> int | None:
    """The generator's own capacity prediction: from its warm-up, else its load report when
    no override hides it."""
    if mode_result["predicted_capacity_at_startup"] is not None:
        return mode_result["predicted_capacity_at_startup"]
    if mode_result["capacity_override"] is None:
        return mode_result.get("capacity_reported_after_trials")
    return None


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
