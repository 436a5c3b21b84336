"""What the `mock` engine makes for a session, computed in this process: the reference a
stream's audio is compared with to find chunks lost, repeated or resumed from the wrong state
(the chaos benchmark and the failover tests use it)."""

from __future__ import annotations

import numpy as np

from services.common.sampling import SamplingSettings
from services.common.session_state import SessionState
from services.generator.engine import ChunkJob
from services.generator.mock_engine import MockEngine
from services.generator.sessions import GeneratorSession


class MockReference:
    """An unconditioned session with ``seed`` on one generator that never fails."""

    def __init__(self, seed: int):
        self._engine = MockEngine()
        self._session = GeneratorSession(
            session_id="reference",
            state=SessionState.fresh(),
            sampling=SamplingSettings(seed=seed),
            deliver=lambda result: None,
        )

    def reset_context(self) -> None:
        """RESET_CONTEXT before the next chunk."""
        self._session.reset_requested = True
        self._session.take_reset()

    def next_chunk(self) -> np.ndarray:
        """float32[frames, 2]: the session's next chunk."""
        output = self._engine.generate(
            [ChunkJob(self._session.state, None, self._session.sampling)]
        )[0]
        self._session.state = output.state
        return output.audio


def mock_session_audio(
    seed: int, chunks: int, *, reset_before: int | None = None
) -> list[np.ndarray]:
    """The first ``chunks`` chunks of the reference session; with ``reset_before``,
    RESET_CONTEXT was applied before that chunk."""
    reference = MockReference(seed)
    audio = []
    for index in range(chunks):
        if index == reset_before:
            reference.reset_context()
        audio.append(reference.next_chunk())
    return audio
