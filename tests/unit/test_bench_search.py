"""The search for the largest number of sessions held: step up, bisect, stop on budget."""

import pytest

from bench.search import find_largest_held


def threshold_trial(limit: int, tried: list[int]):
    def trial(sessions: int) -> bool:
        tried.append(sessions)
        return sessions <= limit

    return trial


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 13, 47, 63, 64, 65, 99])
def test_finds_the_exact_limit(limit):
    tried: list[int] = []
    result = find_largest_held(threshold_trial(limit, tried), max_sessions=128, budget_s=1e9)
    assert result.largest_held == limit
    assert result.smallest_failed == limit + 1
    assert result.exact and not result.out_of_budget
    assert [n for n, _ in result.tried] == tried


def test_steps_up_by_doubling_then_bisects():
    tried: list[int] = []
    find_largest_held(threshold_trial(11, tried), max_sessions=128, budget_s=1e9)
    assert tried[:5] == [1, 2, 4, 8, 16]
    assert tried[5:] == [12, 10, 11]


def test_nothing_held():
    result = find_largest_held(lambda n: False, max_sessions=64, budget_s=1e9)
    assert result.largest_held == 0 and result.smallest_failed == 1
    assert result.tried == [(1, False)]


def test_the_maximum_is_tried_even_when_not_a_power_of_two():
    tried: list[int] = []
    result = find_largest_held(threshold_trial(1000, tried), max_sessions=24, budget_s=1e9)
    assert tried == [1, 2, 4, 8, 16, 24]
    assert result.largest_held == 24 and result.smallest_failed is None and not result.exact


def test_starts_where_asked_and_bisects_below_a_failing_start():
    tried: list[int] = []
    result = find_largest_held(
        threshold_trial(5, tried), max_sessions=64, budget_s=1e9, start_sessions=8
    )
    assert tried == [8, 4, 6, 5]
    assert result.largest_held == 5 and result.exact


def test_no_trial_starts_after_the_budget():
    now = [0.0]

    def trial(sessions: int) -> bool:
        now[0] += 10.0  # each trial takes 10 s
        return sessions <= 40

    result = find_largest_held(trial, max_sessions=128, budget_s=35.0, clock=lambda: now[0])
    assert [n for n, _ in result.tried] == [1, 2, 4, 8]
    assert result.out_of_budget
    assert result.largest_held == 8 and result.smallest_failed is None


def test_noisy_results_still_end_with_adjacent_bounds():
    outcomes = {1: True, 2: True, 4: True, 8: False, 6: True, 7: False}
    result = find_largest_held(lambda n: outcomes[n], max_sessions=64, budget_s=1e9)
    assert (result.largest_held, result.smallest_failed) == (6, 7)


def test_rejects_a_start_above_the_maximum():
    with pytest.raises(ValueError):
        find_largest_held(lambda n: True, max_sessions=4, budget_s=1.0, start_sessions=8)
