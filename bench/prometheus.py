"""Reading the services' /metrics: samples, and what a histogram gained between two scrapes.

A benchmark trial scrapes before and after; the difference of a histogram's buckets, count
and sum is exactly what happened during the trial, whatever ran before it.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)
Samples = dict[SampleKey, float]


def parse_samples(text: str) -> Samples:
    """Prometheus text format -> {(name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_samples(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(
        v for (n, sample_labels), v in samples.items() if n == name and wanted <= set(sample_labels)
    )


def counter_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@dataclasses.dataclass(frozen=True)
class HistogramDelta:
    """Observations a histogram gained between two scrapes."""

    count: float
    total: float
    cumulative: dict[float, float]  # upper bound -> observations <= it (cumulative, +inf last)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def per_bucket(self) -> dict[str, float]:
        """Observations in each bucket (not cumulative), keyed by the bucket's upper bound."""
        out, below = {}, 0.0
        for bound, cumulative in sorted(self.cumulative.items()):
            label = "+Inf" if math.isinf(bound) else f"{bound:g}"
            out[label] = cumulative - below
            below = cumulative
        return {k: v for k, v in out.items() if v > 0}

    def quantile_upper_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (what buckets can tell)."""
        if self.count <= 0:
            return None
        for bound, cumulative in sorted(self.cumulative.items()):
            if cumulative >= q * self.count:
                return bound
        return math.inf


def histogram_delta(before: Samples, after: Samples, name: str) -> HistogramDelta:
    """What histogram ``name`` gained, summed over any labels it has."""
    buckets: dict[float, float] = {}
    for (sample_name, labels), v in after.items():
        if sample_name == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + v - before.get((sample_name, labels), 0.0)
    return HistogramDelta(
        count=counter_delta(before, after, f"{name}_count"),
        total=counter_delta(before, after, f"{name}_sum"),
        cumulative=buckets,
    )
