"""Finding the largest number of concurrent sessions a cluster holds, within a time budget.

Step up by doubling (1, 2, 4, 8, ... up to the maximum) until a trial fails, then bisect
between the largest count that held and the smallest that failed. A trial is only started
while budget is left, so the search ends on time with the best answer known so far.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass
class SearchResult:
    largest_held: int = 0  # 0: not even the first count held
    smallest_failed: int | None = None  # None: nothing failed up to the last count tried
    tried: list[tuple[int, bool]] = dataclasses.field(default_factory=list)  # (sessions, held)
    out_of_budget: bool = False

    @property
    def exact(self) -> bool:
        """True when the limit is pinned down: the count above the largest held failed."""
        return self.smallest_failed is not None and self.smallest_failed == self.largest_held + 1


def find_largest_held(
    trial: Callable[[int], bool],
    *,
    max_sessions: int,
    budget_s: float,
    start_sessions: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Largest N <= max_sessions for which ``trial(N)`` holds, stepping up from start_sessions."""
    if not 1 <= start_sessions <= max_sessions:
        raise ValueError(
            f"need 1 <= start_sessions ({start_sessions}) <= max_sessions ({max_sessions})"
        )
    deadline = clock() + budget_s
    result = SearchResult()

    def run(sessions: int) -> bool | None:
        if clock() >= deadline:
            result.out_of_budget = True
            return None
        held = trial(sessions)
        result.tried.append((sessions, held))
        if held:
            result.largest_held = max(result.largest_held, sessions)
        else:
            result.smallest_failed = min(sessions, result.smallest_failed or sessions)
        return held

    sessions = start_sessions
    while True:  # step up
        held = run(sessions)
        if held is None:
            return result
        if not held or sessions == max_sessions:
            break
        sessions = min(sessions * 2, max_sessions)
    while result.smallest_failed is not None and result.smallest_failed - result.largest_held > 1:
        if run((result.largest_held + result.smallest_failed) // 2) is None:
            break
    return result
