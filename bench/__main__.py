"""python -m bench: benchmarks of the serving cluster.

  python -m bench [load] [options]   listeners per generator, batched vs one at a time (default)
  python -m bench generator          seconds per chunk and real-time factor by batch size
  python -m bench soak --minutes 10  sessions coming and going; do the processes stay flat?
  python -m bench encoding           bandwidth and gateway CPU per listener, by audio encoding
  python -m bench latency            prompt-to-audio latency by chunk length (--chunk-frames)
  python -m bench chaos --minutes 10 generators killed, hung and drained under listeners
  python -m bench rolling            gateways restarted one by one under listeners (shared Redis)
  python -m bench all                generator, load and a short soak

Results go to bench/results/ (JSON, PNG) and to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

from bench import report
from bench.cost_models import COST_MODELS
from services.common.config import parse_chunk_frames_list
from services.common.models import MODEL_NAMES

SUBCOMMANDS = ("load", "generator", "soak", "encoding", "latency", "chaos", "rolling", "all")
# Load options whose default depends on the model: (name, default, default with sim).
LOAD_DEFAULTS = (
    ("listen_seconds", 20.0, 60.0),
    ("ramp_seconds", 2.0, 30.0),
    ("warmup_seconds", 20.0, 0.0),
)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="tiny",
        choices=MODEL_NAMES,
        help="model the generator serves (default: tiny, the offline default; "
        "mock for a quick check of the benchmark itself)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="activation dtype of the model (default: float32)",
    )
    parser.add_argument(
        "--assets-dir",
        default=None,
        help="model assets directory (default: the services' own default)",
    )
    parser.add_argument(
        "--results-dir",
        default=str(report.RESULTS_DIR),
        help="where JSON and PNG results are written (default: bench/results)",
    )
    parser.add_argument(
        "--docs",
        default=str(report.DOCS_PATH),
        help="Markdown file whose sections are updated (default: docs/benchmarks.md)",
    )


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedder-model",
        default=None,
        choices=MODEL_NAMES,
        help="model the embedder serves (default: mock with --model mock, otherwise tiny)",
    )


def add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("load benchmark")
    group.add_argument(
        "--address",
        default=None,
        help="gateway host:port of a running cluster to load instead of starting "
        "one (then only one mode, as that cluster is configured)",
    )
    group.add_argument(
        "--generator-address",
        default=None,
        help="with --address: the generator's host:port, for its load reports",
    )
    group.add_argument(
        "--generator-metrics-url",
        default=None,
        help="with --address: the generator's /metrics URL, for batch sizes and RTF",
    )
    group.add_argument(
        "--gateway-metrics-url",
        default=None,
        help="with --address: the gateway's /metrics URL, for its underrun count",
    )
    group.add_argument(
        "--modes",
        default="batched,unbatched",
        help="comma-separated: batched (--max-batch-size) and/or unbatched "
        "(max batch size 1); default both (with --model sim: one batched "
        "mode per cost model)",
    )
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="the generator's --max-batch-size in the batched mode (default 16; "
        "256 with --model sim)",
    )
    group.add_argument(
        "--cost-model",
        default=",".join(COST_MODELS),
        help="with --model sim: comma-separated cost models to measure, of "
        f"{', '.join(COST_MODELS)} (default all), each held against its "
        "bound N* = floor((2 s - a) / b)",
    )
    group.add_argument(
        "--capacity-sessions",
        type=int,
        default=1000,
        help="the generator's --capacity-sessions: admit this many sessions so the "
        "benchmark finds what it really holds (default 1000); 0 = let the "
        "generator admit only what it predicts it can hold",
    )
    group.add_argument(
        "--buffer-ahead-seconds",
        type=float,
        default=2.0,
        help="the gateway's --buffer-ahead-seconds: how far ahead of the player "
        "chunks are sent (default 2.0)",
    )
    group.add_argument(
        "--listen-seconds",
        type=float,
        default=None,
        help="how long each listener listens after PLAY, per trial (default 20; "
        "60 with --model sim)",
    )
    group.add_argument(
        "--ramp-seconds",
        type=float,
        default=None,
        help="listeners connect evenly over this many seconds (default 2.0, one "
        "chunk, so their deadlines are spread over a chunk period; 30 with "
        "--model sim: near N* a crowd arriving within one period needs "
        "more chunks at once than N* allows)",
    )
    group.add_argument(
        "--start-sessions",
        type=int,
        default=None,
        help="first N tried; N then doubles until a trial fails (default 1; "
        "with --model sim, 90%% of the cost model's N*)",
    )
    group.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        help="largest N tried (default 128; with --model sim, N*)",
    )
    group.add_argument(
        "--budget-minutes",
        type=float,
        default=10.0,
        help="time budget of the search, per mode; no trial starts after it (default 10)",
    )
    group.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        help="before the search, one unjudged trial with a full batch of "
        "listeners for this long, so the generator compiles its batch "
        "shapes first (default 20; 0 = none, the default with --model sim, "
        "which compiles nothing)",
    )
    group.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="spread the listeners over this many client processes (default 1; "
        "raise it when the report says the client process was saturated)",
    )
    group.add_argument(
        "--sample-interval-s",
        type=float,
        default=1.0,
        help="how often service processes are sampled during a trial (default 1.0)",
    )


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generator micro-benchmark")
    group.add_argument(
        "--batch-sizes",
        default="1,2,4,8,16,32",
        help="comma-separated batch sizes to time (default 1,2,4,8,16,32)",
    )
    group.add_argument(
        "--chunk-frames",
        type=parse_chunk_frames_list,
        default=(50,),
        help="comma-separated chunk lengths in frames of 40 ms (5-50) to time each batch "
        "size at, e.g. 50,25,10,5 (default 50)",
    )
    group.add_argument(
        "--random-weights",
        action="store_true",
        help="base / large with random weights and the tiny codec, for their speed "
        "where the upstream files are not (e.g. an offline GPU host)",
    )
    group.add_argument(
        "--without-style",
        action="store_true",
        help="time sessions without a style (no prompt), which run no guidance rows "
        "(default: prompted sessions, one guidance row each)",
    )
    group.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed steps per batch size after the warm-up; the median is reported (default 3)",
    )


def add_encoding_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("audio encodings")
    group.add_argument(
        "--chunks", type=int, default=5, help="chunks of one session to encode (default 5)"
    )
    group.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="encodings of them per encoding; CPU is their mean (default 20)",
    )


def add_latency_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompt-to-audio latency")
    group.add_argument(
        "--chunk-frames",
        type=parse_chunk_frames_list,
        default=(50, 25, 10),
        help="comma-separated chunk lengths in frames of 40 ms (5-50) to measure side by "
        "side (default 50,25,10)",
    )
    group.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds; each runs one session per chunk length, in rotating order (default 2)",
    )
    group.add_argument(
        "--changes",
        type=int,
        default=8,
        help="prompt changes per session, each timed (default 8)",
    )
    group.add_argument(
        "--buffer-ahead-seconds",
        type=float,
        default=2.0,
        help="the gateway's --buffer-ahead-seconds (for 2 s chunks; shorter chunks get "
        "proportionally less) (default 2.0)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the prompt changes' timing (default 0)"
    )


def add_soak_options(parser: argparse.ArgumentParser, default_minutes: float) -> None:
    group = parser.add_argument_group("soak")
    group.add_argument(
        "--minutes",
        type=float,
        default=default_minutes,
        help=f"how long sessions keep coming and going (default {default_minutes:g})",
    )
    group.add_argument(
        "--concurrent", type=int, default=4, help="listeners connected at a time (default 4)"
    )
    group.add_argument(
        "--min-session-s",
        type=float,
        default=5.0,
        help="shortest session, seconds after PLAY (default 5)",
    )
    group.add_argument(
        "--max-session-s",
        type=float,
        default=40.0,
        help="longest session, seconds after PLAY (default 40)",
    )
    group.add_argument(
        "--sample-every-s",
        type=float,
        default=5.0,
        help="how often RSS, threads and open fds are sampled (default 5)",
    )
    group.add_argument(
        "--rss-tolerance",
        type=float,
        default=0.05,
        help="RSS growth allowed, as a fraction of the second quarter's median (default 0.05)",
    )
    group.add_argument(
        "--count-tolerance",
        type=int,
        default=2,
        help="growth in threads or open fds allowed (default 2)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the random session scripts (default 0)"
    )


def add_chaos_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chaos")
    group.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="how long listeners stream while generators are disrupted (default 10)",
    )
    group.add_argument("--generators", type=int, default=3, help="generators (default 3)")
    group.add_argument(
        "--listeners", type=int, default=6, help="listeners streaming throughout (default 6)"
    )
    group.add_argument(
        "--stop-seconds",
        type=float,
        default=8.0,
        help="how long a stopped (SIGSTOP) generator stays hung (default 8)",
    )
    group.add_argument(
        "--min-pause-s",
        type=float,
        default=5.0,
        help="shortest pause between recovery and the next disruption (default 5)",
    )
    group.add_argument(
        "--max-pause-s",
        type=float,
        default=15.0,
        help="longest pause between recovery and the next disruption (default 15)",
    )
    group.add_argument(
        "--sample-every-s",
        type=float,
        default=5.0,
        help="how often the gateway's and embedder's memory is sampled (default 5)",
    )
    group.add_argument(
        "--rss-tolerance",
        type=float,
        default=0.05,
        help="RSS growth allowed, as a fraction of the second quarter's median (default 0.05)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the disruptions' choice and timing (default 0)"
    )


def add_rolling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rolling restart")
    group.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="how long listeners stream while gateways restart (default 10)",
    )
    group.add_argument("--gateways", type=int, default=2, help="gateways (default 2)")
    group.add_argument(
        "--listeners", type=int, default=4, help="listeners streaming throughout (default 4)"
    )
    group.add_argument(
        "--restart-every-s",
        type=float,
        default=60.0,
        help="a gateway is restarted this often, each in turn (default 60)",
    )
    group.add_argument(
        "--drain-grace-s",
        type=float,
        default=20.0,
        help="the gateways' --drain-grace-s (default 20)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="{load,generator,soak,encoding,latency,chaos,rolling,all}"
    )
    load = subparsers.add_parser(
        "load",
        help="the load benchmark (the default)",
        description="How many concurrent listeners one generator keeps "
        "in real time, with batching and without.",
    )
    generator = subparsers.add_parser(
        "generator",
        help="the generator micro-benchmark",
        description="Seconds per chunk and real-time factor of the "
        "engine by batch size, in process.",
    )
    soak = subparsers.add_parser(
        "soak",
        help="sessions opening and closing for minutes",
        description="Do the service processes stay flat (RSS, threads, "
        "open fds) while sessions come and go?",
    )
    encoding = subparsers.add_parser(
        "encoding",
        help="bandwidth and CPU by audio encoding",
        description="Bytes per second and the gateway's CPU per "
        "listener for each audio encoding, in process.",
    )
    latency = subparsers.add_parser(
        "latency",
        help="prompt-to-audio latency by chunk length",
        description="How soon a prompt change is heard, for sessions of each "
        "chunk length side by side in one cluster.",
    )
    chaos = subparsers.add_parser(
        "chaos",
        help="generators killed, hung and drained under load",
        description="Listeners stream while generators are killed, "
        "stopped and continued, and drained at random: "
        "sessions lost, silence, chunks duplicated or "
        "skipped, memory. --model defaults to mock here.",
    )
    rolling = subparsers.add_parser(
        "rolling",
        help="gateways restarted one by one under listeners",
        description="Gateways sharing a Redis session store are "
        "restarted (SIGTERM) one by one while listeners "
        "stream: sessions lost, gaps or repeats in the "
        "files, silence. The `mock` model only.",
    )
    add_rolling_options(rolling)
    rolling.set_defaults(model="mock")  # its audio is compared with the mock reference
    rolling.add_argument(
        "--assets-dir",
        default=None,
        help="model assets directory (default: the services' own default)",
    )
    rolling.add_argument(
        "--results-dir",
        default=str(report.RESULTS_DIR),
        help="where JSON results are written (default: bench/results)",
    )
    rolling.add_argument(
        "--docs",
        default=str(report.DOCS_PATH),
        help="Markdown file whose sections are updated (default: docs/benchmarks.md)",
    )
    everything = subparsers.add_parser(
        "all",
        help="generator, load and a short soak",
        description="The generator micro-benchmark, the load "
        "benchmark and a short soak, in that order.",
    )
    for sub in (load, generator, soak, encoding, latency, chaos, everything):
        add_common_options(sub)
    for sub in (load, soak, latency, chaos, everything):
        add_cluster_options(sub)
    add_latency_options(latency)
    chaos.set_defaults(model="mock")  # its audio can be checked chunk by chunk
    add_chaos_options(chaos)
    add_load_options(load)
    add_load_options(everything)
    add_generator_options(generator)
    add_generator_options(everything)
    add_soak_options(soak, default_minutes=10.0)
    add_soak_options(everything, default_minutes=2.0)
    add_encoding_options(encoding)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; with no subcommand, the options are the load benchmark's."""
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["load", *argv]
    args = build_parser().parse_args(argv)
    sim = args.model == "sim"
    for name, real_default, sim_default in LOAD_DEFAULTS:
        if getattr(args, name, "unset") is None:
            setattr(args, name, sim_default if sim else real_default)
    if getattr(args, "embedder_model", "unset") is None:
        args.embedder_model = "mock" if args.model in ("mock", "sim") else "tiny"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Imported here so that --help answers without loading gRPC clients or models.
    from bench import chaos, encoding, generator_speed, latency, load, rolling, soak
    from services.cli.launcher import ClusterError

    try:
        if args.command in ("generator", "all"):
            generator_speed.run(args)
        if args.command in ("load", "all"):
            load.run(args)
        if args.command in ("soak", "all"):
            soak.run(args)
        if args.command == "encoding":
            encoding.run(args)
        if args.command == "latency":
            latency.run(args)
        if args.command == "chaos":
            chaos.run(args)
        if args.command == "rolling":
            rolling.run(args)
    except ClusterError as err:  # a service failed to start or died: its log says why
        print(f"python -m bench: the cluster failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
