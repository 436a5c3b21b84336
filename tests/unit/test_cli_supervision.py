"""The supervisor's restart policy, on an injected clock with stand-in processes."""

import signal

from services.cli.supervision import INITIAL_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S, Supervisor


class FakeProcess:
    def __init__(self, name: str):
        self.name = name
        self.returncode: int | None = None
        self.starts = 0
        self.healthy = True

    def exited_unexpectedly(self) -> bool:
        return self.returncode is not None

    def start(self) -> None:
        self.starts += 1
        self.returncode = None
        self.healthy = False

    def check_health(self, timeout_s: float = 1.0) -> bool:
        return self.healthy

    def crash(self) -> None:
        self.returncode = -signal.SIGKILL


class Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make_supervisor(*names):
    clock, messages = Clock(), []
    processes = [FakeProcess(n) for n in names]
    return Supervisor(processes, log=messages.append, clock=clock), processes, clock, messages


def test_a_crashed_service_is_restarted_after_backoff_and_the_others_are_left_alone():
    supervisor, (embedder, generator), clock, messages = make_supervisor("embedder", "generator-0")
    generator.crash()
    supervisor.step()
    assert generator.starts == 0
    assert messages == [
        f"generator-0 exited unexpectedly with signal SIGKILL; restarting it in "
        f"{INITIAL_BACKOFF_S:g} s (crash 1 in a row); the other services keep "
        f"serving"
    ]
    clock.now_s += INITIAL_BACKOFF_S / 2
    supervisor.step()
    assert generator.starts == 0
    clock.now_s += INITIAL_BACKOFF_S / 2
    supervisor.step()
    assert (generator.starts, embedder.starts) == (1, 0)
    assert messages[-1] == "generator-0 restarted"
    supervisor.step()  # not serving yet: nothing said
    generator.healthy = True
    supervisor.step()
    assert messages[-1] == "generator-0 is serving again"
    assert supervisor.restarts == {"embedder": 0, "generator-0": 1}


def test_backoff_doubles_for_crashes_in_a_row_up_to_a_cap_and_resets_once_stable():
    supervisor, (generator,), clock, messages = make_supervisor("generator-0")
    waits = []
    for _ in range(8):
        generator.crash()
        supervisor.step()
        crashed_at = clock.now_s
        while generator.returncode is not None:
            clock.now_s += 0.5
            supervisor.step()
        waits.append(clock.now_s - crashed_at)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    clock.now_s += STABLE_AFTER_S  # it ran fine for a while
    generator.crash()
    supervisor.step()
    assert "in 1 s (crash 1 in a row)" in messages[-1]


def test_a_failed_restart_is_tried_again():
    supervisor, (generator,), clock, messages = make_supervisor("generator-0")

    def cannot_start():
        raise OSError("no such interpreter")

    generator.crash()
    supervisor.step()
    generator.start = cannot_start
    clock.now_s += INITIAL_BACKOFF_S
    supervisor.step()
    assert messages[-1] == "generator-0 could not be restarted: no such interpreter"
    supervisor.step()  # still exited: scheduled again, with a longer back-off
    assert "in 2 s (crash 2 in a row)" in messages[-1]
