"""Keeping a local cluster's services running, the way Kubernetes keeps pods running.

A service that exits without being asked to is started again on the same ports after a
back-off that doubles with each crash in a row (1 s, 2 s, 4 s ... up to 30 s); a service that
has stayed up for a while starts over at the shortest back-off. The other services keep
serving meanwhile, so sessions on a lost generator move to the others, and the restarted
generator takes new sessions once it reports SERVING again. Every event is logged.

The supervisor works in rounds (``step``) on an injected clock, so its policy can be tested
without waiting for it; ``run`` loops the rounds until interrupted (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from services.cli.launcher import describe_returncode

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# A service that has run this long since its last start counts as healthy again: its next
# crash waits only the initial back-off.
STABLE_AFTER_S = 60.0
POLL_INTERVAL_S = 0.5


class SupervisedProcess(Protocol):
    """What the supervisor needs of a service (launcher.ServiceProcess has it)."""

    name: str
    returncode: int | None

    def exited_unexpectedly(self) -> bool: ...
    def start(self) -> None: ...
    def check_health(self, timeout_s: float = 1.0) -> bool: ...


@dataclasses.dataclass
class _Record:
    started_at_s: float
    crashes_in_a_row: int = 0
    restart_at_s: float | None = None  # set while a restart is pending
    serving: bool = True  # False from a restart until the first SERVING health check


def backoff_s(crashes_in_a_row: int) -> float:
    """How long to wait before restarting a service that crashed this many times in a row."""
    return min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** max(0, crashes_in_a_row - 1))


class Supervisor:
    def __init__(
        self,
        processes: Sequence[SupervisedProcess],
        *,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.processes = list(processes)
        self.log = log
        self.clock = clock
        now = clock()
        self._records = {p.name: _Record(started_at_s=now) for p in self.processes}
        self.restarts: dict[str, int] = {p.name: 0 for p in self.processes}

    def step(self) -> None:
        """One round: notice exits, start what is due, report services that are back."""
        now = self.clock()
        for process in self.processes:
            record = self._records[process.name]
            if record.restart_at_s is None and process.exited_unexpectedly():
                if now - record.started_at_s >= STABLE_AFTER_S:
                    record.crashes_in_a_row = 0
                record.crashes_in_a_row += 1
                delay_s = backoff_s(record.crashes_in_a_row)
                record.restart_at_s = now + delay_s
                self.log(
                    f"{process.name} exited unexpectedly with "
                    f"{describe_returncode(process.returncode)}; restarting it in "
                    f"{delay_s:g} s (crash {record.crashes_in_a_row} in a row); the other "
                    f"services keep serving"
                )
            elif record.restart_at_s is not None and now >= record.restart_at_s:
                record.restart_at_s = None
                record.started_at_s = now
                record.serving = False
                self.restarts[process.name] += 1
                try:
                    process.start()
                except Exception as err:  # e.g. the interpreter vanished: try again later
                    self.log(f"{process.name} could not be restarted: {err}")
                    continue
                self.log(f"{process.name} restarted")
            elif (
                not record.serving
                and record.restart_at_s is None
                and process.check_health(timeout_s=0.2)
            ):
                record.serving = True
                self.log(f"{process.name} is serving again")

    def run(
        self, sleep: Callable[[float], None] = time.sleep, poll_interval_s: float = POLL_INTERVAL_S
    ) -> None:
        """Supervise until interrupted (KeyboardInterrupt propagates)."""
        while True:
            self.step()
            sleep(poll_interval_s)
