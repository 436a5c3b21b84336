"""The one-command GPU benchmark: its shell is valid, and the benchmark command it runs starts
and writes its report on CPU (with the large model shrunk to the tiny size, one small batch)."""

import json
import re
import shlex
import subprocess
from pathlib import Path

from bench.__main__ import main as bench_main
from services.generator.model import configs

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_generator_bench.sh"


def bench_arguments() -> list[str]:
    """The `python -m bench ...` arguments the script runs, batch sizes given as "1"."""
    exec_line = r'exec "\$VENV/bin/python" -m bench (generator .*?)"\$@"'
    command = re.search(exec_line, SCRIPT.read_text(), re.S)[1]
    return shlex.split(command.replace("\\\n", " ").replace('"$BATCH_SIZES"', "1"))


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_benchmark_it_runs_starts_and_writes_its_report(
    tmp_path, tmp_path_factory, monkeypatch
):
    arguments = bench_arguments()
    assert arguments[:6] == [
        "generator",
        "--model",
        "large",
        "--random-weights",
        "--dtype",
        "bfloat16",
    ]
    monkeypatch.setitem(configs.CONFIGS, "large", configs.CONFIGS["tiny"])
    docs = tmp_path / "benchmarks.md"
    assert (
        bench_main(
            [
                *arguments,
                "--repeats",
                "1",
                "--results-dir",
                str(tmp_path),
                "--docs",
                str(docs),
                "--assets-dir",
                str(tmp_path_factory.getbasetemp() / "assets"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "generator_large-random-weights_bfloat16.json").read_text())
    assert report["model"] == "large-random-weights" and report["dtype"] == "bfloat16"
    assert [row["batch_size"] for row in report["batch_sizes"]] == [1]
    assert report["batch_sizes"][0]["median_s"] > 0
    assert "Generator, model `large-random-weights` (bfloat16" in docs.read_text()
