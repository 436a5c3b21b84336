"""Small summaries of measured series: percentiles, a growth slope, and a flatness check."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p99": ..., "max": ...}; None for each when there are no values."""
    if len(values) == 0:
        return {**{f"p{q}": None for q in qs}, "max": None}
    array = np.asarray(values, float)
    return {**{f"p{q}": float(np.percentile(array, q)) for q in qs}, "max": float(array.max())}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


@dataclasses.dataclass(frozen=True)
class Flatness:
    """Did a series stay flat? Compares the last quarter's median with the second quarter's."""

    second_quarter_median: float
    last_quarter_median: float
    tolerance: float  # the largest change allowed, in the series' units
    flat: bool

    @property
    def change(self) -> float:
        return self.last_quarter_median - self.second_quarter_median


def flatness(
    series: Sequence[float], *, relative_tolerance: float = 0.0, absolute_tolerance: float = 0.0
) -> Flatness | None:
    """Flat when the last quarter's median exceeds the second quarter's by at most
    max(relative_tolerance * second quarter's median, absolute_tolerance). The first quarter
    is left out: it holds the warm-up. Only growth counts; shrinking is fine. None for series
    too short to have four quarters."""
    values = np.asarray(series, float)
    quarter = len(values) // 4
    if quarter == 0:
        return None
    second = float(np.median(values[quarter : 2 * quarter]))
    last = float(np.median(values[len(values) - quarter :]))
    tolerance = max(relative_tolerance * abs(second), absolute_tolerance)
    return Flatness(
        second_quarter_median=second,
        last_quarter_median=last,
        tolerance=tolerance,
        flat=last - second <= tolerance,
    )
