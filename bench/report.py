"""Writing results: the machine they came from, JSON files, and sections of docs/benchmarks.md.

Each benchmark owns one section of the Markdown file per model, between two marker comments,
and rewrites only that section; hand-written text around the sections is kept.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DOCS_PATH = PROJECT_ROOT / "docs" / "benchmarks.md"
GIB = 1024**3


def cpu_model(cpuinfo_text: str) -> str:
    """The CPU model name from the text of /proc/cpuinfo ("unknown" when absent)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def git_commit() -> str:
    """The commit the benchmark code ran from, with "+dirty" when the tree had changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return {
        "cpu_model": cpu_model(cpuinfo) if cpuinfo else platform.processor() or "unknown",
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['logical_cores']} logical cores, "
        f"{machine['ram_gib']} GiB RAM; load average {machine['load_average_1m']} at start; "
        f"{machine['date_utc']}; commit {machine['commit']}"
    )


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON; non-finite floats become null (JSON has no inf or NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A number for a table cell; "-" for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key} start -->", f"<!-- bench:{key} end -->"


def replace_section(document: str, key: str, body: str) -> str:
    """``document`` with the section ``key`` set to ``body``, appended if it is not there yet."""
    start, end = section_markers(key)
    block = f"{start}\n{body.strip()}\n{end}"
    head, found, rest = document.partition(start)
    if found and end in rest:
        return head + block + rest.partition(end)[2]
    return document.rstrip("\n") + "\n\n" + block + "\n"


def update_docs(key: str, body: str, path: Path = DOCS_PATH) -> Path:
    document = path.read_text() if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(document, key, body))
    return path


def relative(path: Path) -> str:
    """A path as the docs should show it: relative to the project when inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return path.name


def link_from_docs(path: Path) -> str:
    """A Markdown link target for a result file, from docs/benchmarks.md."""
    try:
        return "../" + str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:  # results written outside the project: no machine paths in the docs
        return path.name
