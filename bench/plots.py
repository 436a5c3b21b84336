"""PNG plots of benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_load(results: dict[str, Any], path: Path) -> Path:
    """Sessions against chunk lateness p99 and against underruns, one line per mode."""
    figure, (lateness_axes, underrun_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in results["modes"]:
        trials = sorted(mode["trials"], key=lambda t: t["sessions"])
        sessions = [t["sessions"] for t in trials]
        label = f"{mode['mode']} (holds {mode['largest_held']})"
        (line,) = lateness_axes.plot(
            sessions, [_nan(t["lateness_s"]["p99"]) for t in trials], "o-", label=label
        )
        underrun_axes.plot(
            sessions, [t["underruns"] for t in trials], "o-", label=label, color=line.get_color()
        )
        if mode["largest_held"]:
            for axes in (lateness_axes, underrun_axes):
                axes.axvline(
                    mode["largest_held"], color=line.get_color(), linestyle=":", linewidth=1
                )
    lateness_axes.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    lateness_axes.set(
        xlabel="concurrent sessions",
        ylabel="chunk lateness p99 (s)",
        title="Lateness against the player's need (> 0 = underrun)",
    )
    underrun_axes.set(
        xlabel="concurrent sessions",
        ylabel="underruns heard (all listeners)",
        title="Underruns per trial",
    )
    underrun_axes.set_ylim(bottom=0)
    for axes in (lateness_axes, underrun_axes):
        axes.set_xscale("log", base=2)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(
        f"Load benchmark, model {results['model']}, "
        f"{results['machine']['logical_cores']} cores, {results['machine']['date_utc']}"
    )
    return _save(figure, path)


def plot_soak(results: dict[str, Any], path: Path) -> Path:
    """RSS, threads and open file descriptors of each service over the soak."""
    metrics = [("rss_mib", "RSS (MiB)"), ("threads", "threads"), ("open_fds", "open fds")]
    figure, all_axes = plt.subplots(1, len(metrics), figsize=(13, 4))
    for axes, (key, label) in zip(all_axes, metrics):
        for name, series in results["series"].items():
            axes.plot([s / 60 for s in series["elapsed_s"]], series[key], label=name)
        axes.set(xlabel="minutes", ylabel=label, title=label)
        axes.grid(True, alpha=0.3)
    all_axes[0].legend()
    figure.suptitle(
        f"Soak, model {results['model']}, {results['minutes']:g} min, "
        f"{results['machine']['date_utc']}"
    )
    return _save(figure, path)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
