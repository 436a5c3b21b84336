"""SessionState <-> the SessionSnapshot message, shared by generator and gateway.

The state is the ~31 KB a session needs between chunks (docs/model.md).
"""

from __future__ import annotations

import numpy as np

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import generator_pb2
from services.common.session_state import SessionState


def state_to_snapshot(state: SessionState) -> generator_pb2.SessionSnapshot:
    return generator_pb2.SessionSnapshot(
        context_tokens=state.context_tokens.astype("<i4").tobytes(),
        crossfade_tail=state.crossfade_tail.astype("<f4").tobytes(),
        chunk_index=state.chunk_index,
    )


def snapshot_to_state(snapshot: generator_pb2.SessionSnapshot) -> SessionState:
    """Decode and validate a snapshot; raises ValueError when it is not a valid state."""
    context_bytes = facts.CONTEXT_FRAMES * facts.DECODER_RVQ_LEVELS * 4
    tail_bytes = facts.CROSSFADE_SAMPLES * facts.CHANNELS * 4
    if len(snapshot.context_tokens) != context_bytes:
        raise ValueError(
            f"snapshot context_tokens must be {context_bytes} bytes, "
            f"got {len(snapshot.context_tokens)}"
        )
    if len(snapshot.crossfade_tail) != tail_bytes:
        raise ValueError(
            f"snapshot crossfade_tail must be {tail_bytes} bytes, "
            f"got {len(snapshot.crossfade_tail)}"
        )
    state = SessionState(
        context_tokens=np.frombuffer(snapshot.context_tokens, "<i4")
        .astype(np.int32)
        .reshape(facts.CONTEXT_FRAMES, facts.DECODER_RVQ_LEVELS),
        crossfade_tail=np.frombuffer(snapshot.crossfade_tail, "<f4")
        .astype(np.float32)
        .reshape(facts.CROSSFADE_SAMPLES, facts.CHANNELS),
        chunk_index=int(snapshot.chunk_index),
    )
    state.validate()
    return state
