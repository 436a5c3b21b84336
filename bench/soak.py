"""The soak: sessions coming and going for minutes; does any service process grow?

A few listener slots each run one random session after another (random length, prompt and
config changes, pause / play, context resets, hanging up by cancelling or by STOP and
half-close). Meanwhile every service process's RSS, thread count and open file descriptors
are sampled. A series is flat when its last quarter's median has not grown past its second
quarter's by more than a small tolerance (the first quarter holds the warm-up). After the
soak, no session may be left open on the gateway or the generator.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

from bench import plots, report
from bench.cluster import LocalClusterOptions, settle, start_local_cluster, target_of
from bench.listeners import (
    Action,
    ListenerResult,
    ListenerScript,
    ScriptedRequest,
    listen,
    playback,
)
from bench.processes import MIB, ProcessSample, ProcessSampler
from bench.stats import flatness
from services.common.proto.mrt.v1 import music_pb2

PROMPT_TEXTS = (
    "ambient pads",
    "jazz piano trio",
    "techno",
    "lo-fi hip hop",
    "string quartet",
    "synthwave",
    "drum and bass",
    "flamenco guitar",
)


def random_script(
    rng: random.Random, min_session_s: float, max_session_s: float, model: str = ""
) -> ListenerScript:
    """One listener's random session: changes at random times, a pause always followed by play."""
    listen_s = rng.uniform(min_session_s, max_session_s)
    requests = []
    at_s = rng.uniform(0.5, 4.0)
    while at_s < listen_s - 1.0:
        kind = rng.choice(["prompts", "config", "pause", "reset"])
        if kind == "prompts":
            prompts = [
                music_pb2.WeightedPrompt(text=text, weight=rng.uniform(0.2, 2.0))
                for text in rng.sample(PROMPT_TEXTS, rng.randint(1, 3))
            ]
            requests.append(
                ScriptedRequest(
                    at_s, music_pb2.StreamRequest(prompts=music_pb2.PromptUpdate(prompts=prompts))
                )
            )
        elif kind == "config":
            requests.append(
                ScriptedRequest(
                    at_s,
                    music_pb2.StreamRequest(
                        config=music_pb2.GenerationConfig(
                            temperature=rng.uniform(0.5, 2.0),
                            top_k=rng.randint(1, 200),
                            guidance=rng.uniform(0.0, 8.0),
                        )
                    ),
                )
            )
        elif kind == "pause":
            resume_s = min(at_s + rng.uniform(0.5, 3.0), listen_s - 0.5)
            requests += [
                ScriptedRequest(at_s, playback(Action.PAUSE)),
                ScriptedRequest(resume_s, playback(Action.PLAY)),
            ]
            at_s = resume_s
        else:
            requests.append(ScriptedRequest(at_s, playback(Action.RESET_CONTEXT)))
        at_s += rng.uniform(2.0, 8.0)
    return ListenerScript(
        listen_s=listen_s, requests=tuple(requests), stop_politely=rng.random() < 0.5, model=model
    )


async def run_sessions(
    address: str,
    seconds: float,
    concurrent: int,
    rng: random.Random,
    min_session_s: float,
    max_session_s: float,
    model: str,
) -> list[ListenerResult]:
    """Keep ``concurrent`` listeners busy with one random session after another."""
    loop = asyncio.get_running_loop()
    end_at = loop.time() + seconds
    results: list[ListenerResult] = []

    async def slot(index: int) -> None:
        await asyncio.sleep(index * 0.7)  # stagger, so sessions do not start and end together
        while (left_s := end_at - loop.time()) > min_session_s:
            script = random_script(rng, min_session_s, min(max_session_s, left_s), model)
            results.append(await listen(address, script))
            if len(results) % 10 == 0:
                print(f"  {len(results)} sessions done, {left_s / 60:.1f} min left", flush=True)

    await asyncio.gather(*(slot(i) for i in range(concurrent)))
    return results


def series_of(samples: list[ProcessSample]) -> dict[str, list[float]]:
    return {
        "elapsed_s": [round(s.elapsed_s, 1) for s in samples],
        "rss_mib": [round(s.rss_bytes / MIB, 2) for s in samples],
        "threads": [s.threads for s in samples],
        "open_fds": [s.open_fds for s in samples],
    }


def judge(
    series: dict[str, dict[str, list[float]]], rss_tolerance: float, count_tolerance: int
) -> dict[str, dict[str, Any]]:
    """Per service and measure: the flatness verdict (None when the series is too short)."""
    verdicts: dict[str, dict[str, Any]] = {}
    for name, s in series.items():
        verdicts[name] = {}
        for key, tolerances in (
            ("rss_mib", {"relative_tolerance": rss_tolerance}),
            ("threads", {"absolute_tolerance": count_tolerance}),
            ("open_fds", {"absolute_tolerance": count_tolerance}),
        ):
            verdict = flatness(s[key], **tolerances)
            verdicts[name][key] = (
                None
                if verdict is None
                else {
                    "second_quarter_median": verdict.second_quarter_median,
                    "last_quarter_median": verdict.last_quarter_median,
                    "tolerance": verdict.tolerance,
                    "flat": verdict.flat,
                }
            )
    return verdicts


def session_totals(results: list[ListenerResult]) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for r in results:
        key = r.outcome if r.outcome != "error" else f"error: {r.error}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "sessions": len(results),
        "outcomes": outcomes,
        "chunks": sum(r.chunks for r in results),
        "underruns": sum(r.underruns for r in results),
        "warnings": sum(r.warnings for r in results),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The soak for ``args`` (see ``python -m bench soak --help``)."""
    began, machine = time.monotonic(), report.machine_info()
    print(
        f"[soak] {args.model}, {args.minutes:g} min, {args.concurrent} concurrent listeners",
        flush=True,
    )
    cluster = start_local_cluster(
        LocalClusterOptions(
            model=args.model,
            embedder_model=args.embedder_model,
            assets_dir=args.assets_dir,
            generator_flags=("--dtype", args.dtype),
        )
    )
    try:
        target = target_of(cluster)
        print(f"  cluster ready; service logs in {cluster.config.log_dir}", flush=True)
        with ProcessSampler(target.pids, args.sample_every_s) as sampler:
            results = asyncio.run(
                run_sessions(
                    target.gateway_address,
                    args.minutes * 60,
                    args.concurrent,
                    random.Random(args.seed),
                    args.min_session_s,
                    args.max_session_s,
                    args.model,
                )
            )
        gateway_left, generator_left = settle(target)
        leftover = {"gateway": gateway_left, "generator": generator_left}
        cluster.check_running()
    finally:
        cluster.stop()
    series = {name: series_of(samples) for name, samples in sampler.series.items()}
    verdicts = judge(series, args.rss_tolerance, args.count_tolerance)
    results_json = {
        "kind": "soak",
        "model": args.model,
        "minutes": args.minutes,
        "machine": machine,
        "settings": {
            "concurrent": args.concurrent,
            "min_session_s": args.min_session_s,
            "max_session_s": args.max_session_s,
            "sample_every_s": args.sample_every_s,
            "rss_tolerance": args.rss_tolerance,
            "count_tolerance": args.count_tolerance,
            "seed": args.seed,
        },
        "totals": session_totals(results),
        "leftover_sessions": leftover,
        "flatness": verdicts,
        "all_flat": all(v is not None and v["flat"] for m in verdicts.values() for v in m.values()),
        "sessions_leaked": bool(gateway_left or generator_left),
        "series": series,
        "runtime_s": round(time.monotonic() - began, 1),
    }
    results_dir, docs = Path(args.results_dir), Path(args.docs)
    json_path = report.write_json(results_dir / f"soak_{args.model}.json", results_json)
    png_path = plots.plot_soak(results_json, results_dir / f"soak_{args.model}.png")
    report.update_docs(f"soak:{args.model}", markdown(results_json, json_path, png_path), docs)
    print(
        f"[soak] {results_json['totals']['sessions']} sessions; all flat: "
        f"{results_json['all_flat']}; sessions left open after the soak: {leftover}",
        flush=True,
    )
    print(f"[soak] wrote {json_path}, {png_path} and {docs}", flush=True)
    return results_json


def markdown(results: dict[str, Any], json_path: Path, png_path: Path) -> str:
    settings, totals = results["settings"], results["totals"]
    rows = []
    for name, measures in results["flatness"].items():
        for key, v in measures.items():
            if v is None:
                rows.append([name, key, "-", "-", "-", "too few samples"])
                continue
            rows.append(
                [
                    name,
                    key,
                    report.fmt(v["second_quarter_median"], 1),
                    report.fmt(v["last_quarter_median"], 1),
                    report.fmt(v["tolerance"], 1),
                    "flat" if v["flat"] else "**GREW**",
                ]
            )
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(totals["outcomes"].items()))
    return "\n".join(
        [
            f"### Soak, model `{results['model']}`",
            "",
            f"Machine: {report.machine_line(results['machine'])}.",
            f"{results['minutes']:g} min, {settings['concurrent']} listener slots, sessions of "
            f"{settings['min_session_s']:g}-{settings['max_session_s']:g} s with prompt / config "
            f"changes, pause / play and context resets; sampled every {settings['sample_every_s']:g} s.",
            f"Sessions: {totals['sessions']} ({outcomes}); {totals['chunks']} chunks; "
            f"{totals['underruns']} underruns heard; {totals['warnings']} warnings.",
            "",
            f"All flat: **{'yes' if results['all_flat'] else 'no'}** (RSS within "
            f"{settings['rss_tolerance'] * 100:g}%, threads and fds within "
            f"{settings['count_tolerance']} of the second quarter's median). Sessions still open "
            f"after every listener had gone: gateway {results['leftover_sessions']['gateway']:.0f}, "
            f"generator {results['leftover_sessions']['generator']}"
            f"{' (**leaked**)' if results['sessions_leaked'] else ''}.",
            "",
            report.markdown_table(
                [
                    "process",
                    "measure",
                    "2nd quarter median",
                    "last quarter median",
                    "tolerance",
                    "verdict",
                ],
                rows,
            ),
            "",
            f"Data: `{report.relative(json_path)}`; plot: `{report.relative(png_path)}`.",
            "",
            f"![soak, {results['model']}]({report.link_from_docs(png_path)})",
        ]
    )
