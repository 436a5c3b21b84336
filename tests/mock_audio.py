"""Comparing a stream's audio with the `mock` engine's reference (bench.mock_reference)."""

from __future__ import annotations

import numpy as np


def assert_same_audio(received: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(received) == len(expected)
    for index, (got, want) in enumerate(zip(received, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"chunk {index} differs")
