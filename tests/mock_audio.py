"""What the `mock` engine makes for a session, computed in process: the reference the
integration tests compare a stream's audio against (failover, STOP, RESET, idle release)."""

from __future__ import annotations

import numpy as np

from services.generator.engine import ChunkJob, SamplingParams, SessionState
from services.generator.mock_engine import MockEngine
from services.generator.sessions import GeneratorSession


def mock_session_audio(seed: int, chunks: int, *, reset_before: int | None = None) -> list[np.ndarray]:
    """The first ``chunks`` chunks of an unconditioned session with ``seed`` on one generator
    that never failed; with ``reset_before``, RESET_CONTEXT was applied before that chunk."""
    engine = MockEngine()
    session = GeneratorSession(session_id="reference", state=SessionState.fresh(),
                               sampling=SamplingParams(seed=seed), deliver=lambda result: None)
    audio = []
    for index in range(chunks):
        if index == reset_before:
            session.reset_requested = True
            session.take_reset()
        output = engine.generate([ChunkJob(session.state, None, session.sampling)])[0]
        audio.append(output.audio)
        session.state = output.state
    return audio


def assert_same_audio(received: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(received) == len(expected)
    for index, (got, want) in enumerate(zip(received, expected)):
        np.testing.assert_array_equal(got, want, err_msg=f"chunk {index} differs")
