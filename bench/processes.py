"""Sampling service processes with psutil: CPU, resident memory, threads, open files.

A background thread samples every process every ``interval_s``. The load benchmark reads one
summary per trial (CPU cores used, peak and final RSS); the soak keeps the whole series.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import psutil

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ProcessSample:
    elapsed_s: float  # since the sampler started
    rss_bytes: int
    threads: int
    open_fds: int
    cpu_seconds: float  # user + system, cumulative since the process started


@dataclasses.dataclass(frozen=True)
class ProcessSummary:
    """One process over a sampling window."""

    cpu_cores: float  # CPU seconds used per wall second (1.0 = one core busy)
    rss_max_mib: float
    rss_last_mib: float
    threads_last: int
    open_fds_last: int

    def as_dict(self) -> dict:
        return {
            "cpu_cores": round(self.cpu_cores, 3),
            "rss_max_mib": round(self.rss_max_mib, 1),
            "rss_last_mib": round(self.rss_last_mib, 1),
            "threads": self.threads_last,
            "open_fds": self.open_fds_last,
        }


def sample_process(process: psutil.Process, elapsed_s: float) -> ProcessSample:
    with process.oneshot():
        cpu = process.cpu_times()
        return ProcessSample(
            elapsed_s=elapsed_s,
            rss_bytes=process.memory_info().rss,
            threads=process.num_threads(),
            open_fds=process.num_fds(),
            cpu_seconds=cpu.user + cpu.system,
        )


def summarize(series: list[ProcessSample]) -> ProcessSummary | None:
    if not series:
        return None
    first, last = series[0], series[-1]
    wall_s = last.elapsed_s - first.elapsed_s
    cpu_cores = (last.cpu_seconds - first.cpu_seconds) / wall_s if wall_s > 0 else 0.0
    return ProcessSummary(
        cpu_cores=cpu_cores,
        rss_max_mib=max(s.rss_bytes for s in series) / MIB,
        rss_last_mib=last.rss_bytes / MIB,
        threads_last=last.threads,
        open_fds_last=last.open_fds,
    )


class ProcessSampler:
    """Samples named processes in a background thread; use as a context manager."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0):
        self.interval_s = interval_s
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.series: dict[str, list[ProcessSample]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> ProcessSampler:
        self._started = time.monotonic()
        self._sample_all()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_all()  # a final sample so the window ends now

    def summaries(self) -> dict[str, ProcessSummary]:
        return {
            name: summary
            for name, series in self.series.items()
            if (summary := summarize(series)) is not None
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_all()

    def _sample_all(self) -> None:
        elapsed_s = time.monotonic() - self._started
        for name, process in self._processes.items():
            try:
                self.series[name].append(sample_process(process, elapsed_s))
            except psutil.NoSuchProcess:
                pass  # it ended; the benchmark notices through its own checks
