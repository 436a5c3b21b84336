"""Batch buckets: the padded batch sizes an engine compiles, defined once for the generator.

An engine pads each batch up to the next bucket, so that a few compiled programs serve every
batch size. The buckets grow geometrically so that padding wastes at most
``MAX_PADDING_FRACTION`` of a batch's rows (a batch of 9 runs as 9, not as 16); past 64 they
are multiples of 8, which accelerators' matrix units prefer, and every power of two is a
bucket too (the sizes benchmarks time). The largest bucket is the generator's
``--max-batch-size`` itself.

Within a batch bucket, the rows classifier-free guidance adds (one per session that has a
style and a guidance weight) are padded to one of `guidance_row_buckets`: none, half the
bucket or all of it, so a bucket compiles at most three programs.
"""

from __future__ import annotations

import bisect

MAX_PADDING_FRACTION = 0.15
# The largest --max-batch-size a generator accepts (more rows than any accelerator's memory
# holds for the large model's caches).
LARGEST_BATCH_SIZE = 512
_ALIGNED_FROM = 64
_ALIGNMENT = 8


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The bucket sizes for batches of 1 to ``max_batch_size`` sessions, ascending."""
    if not 1 <= max_batch_size <= LARGEST_BATCH_SIZE:
        raise ValueError(
            f"max batch size must be in [1, {LARGEST_BATCH_SIZE}], got {max_batch_size}"
        )
    buckets = [1]
    while buckets[-1] < max_batch_size:
        previous = buckets[-1]
        # The next bucket pads a batch of previous + 1 by at most MAX_PADDING_FRACTION.
        step = int((previous + 1) / (1 - MAX_PADDING_FRACTION))
        if step >= _ALIGNED_FROM:
            step = step // _ALIGNMENT * _ALIGNMENT
        buckets.append(min(max(step, previous + 1), max_batch_size))
    powers_of_two = (2**i for i in range(max_batch_size.bit_length()))
    return tuple(sorted(set(buckets).union(powers_of_two)))


def bucket_for(batch_size: int, buckets: tuple[int, ...]) -> int:
    """The bucket a batch of ``batch_size`` runs at; ValueError past the largest bucket."""
    index = bisect.bisect_left(buckets, batch_size)
    if batch_size < 1 or index == len(buckets):
        raise ValueError(f"a batch of {batch_size} does not fit the buckets {buckets}")
    return buckets[index]


def guidance_row_buckets(batch_bucket: int) -> tuple[int, ...]:
    """The padded counts of guidance rows a batch of ``batch_bucket`` rows runs with: 0, half
    the bucket (rounded up) and the whole bucket, ascending."""
    if batch_bucket < 1:
        raise ValueError(f"a batch bucket must be positive, got {batch_bucket}")
    return tuple(sorted({0, -(-batch_bucket // 2), batch_bucket}))


def guidance_row_bucket_for(rows: int, batch_bucket: int) -> int:
    """The padded count of guidance rows for ``rows`` of them in a batch of ``batch_bucket``."""
    buckets = guidance_row_buckets(batch_bucket)
    if not 0 <= rows <= batch_bucket:
        raise ValueError(f"{rows} guidance rows do not fit a batch of {batch_bucket}")
    return buckets[bisect.bisect_left(buckets, rows)]
