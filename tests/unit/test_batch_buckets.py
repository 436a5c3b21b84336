"""One definition of the batch buckets: bounded padding, every size up to the maximum."""

import pytest

from services.generator.batch_buckets import (
    LARGEST_BATCH_SIZE,
    MAX_PADDING_FRACTION,
    batch_buckets,
    bucket_for,
    guidance_row_bucket_for,
    guidance_row_buckets,
)


@pytest.mark.parametrize("max_batch_size", [1, 2, 16, 100, 256, LARGEST_BATCH_SIZE])
def test_every_batch_pads_by_at_most_the_bound_and_the_largest_is_the_maximum(max_batch_size):
    buckets = batch_buckets(max_batch_size)
    assert buckets[0] == 1 and buckets[-1] == max_batch_size
    assert list(buckets) == sorted(set(buckets))
    for size in range(1, max_batch_size + 1):
        bucket = bucket_for(size, buckets)
        assert size <= bucket and (bucket - size) / bucket <= MAX_PADDING_FRACTION


def test_a_batch_of_nine_is_not_padded_to_sixteen():
    assert bucket_for(9, batch_buckets(16)) == 9


def test_sizes_outside_the_buckets_are_refused():
    with pytest.raises(ValueError):
        bucket_for(17, batch_buckets(16))
    for bad in (0, LARGEST_BATCH_SIZE + 1):
        with pytest.raises(ValueError, match="max batch size"):
            batch_buckets(bad)


def test_guidance_rows_pad_to_none_half_or_all_of_the_bucket():
    assert guidance_row_buckets(1) == (0, 1)
    assert guidance_row_buckets(9) == (0, 5, 9)
    assert [guidance_row_bucket_for(rows, 9) for rows in (0, 1, 5, 6, 9)] == [0, 5, 5, 9, 9]
    with pytest.raises(ValueError, match="do not fit"):
        guidance_row_bucket_for(10, 9)
