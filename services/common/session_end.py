"""Why a generator ended a session stream, beyond its status code.

The generator names the reason in the stream's trailing metadata, so the gateway tells a drain
(move the session, the generator is fine) from a failure (move it and distrust the generator)
without reading the human-readable details.
"""

from __future__ import annotations

from collections.abc import Iterable

REASON_KEY = "mrt-session-end-reason"
DRAINING = "draining"


def reason_metadata(reason: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata naming ``reason``."""
    return ((REASON_KEY, reason),)


def reason_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The reason named in trailing metadata ('' when none)."""
    for key, value in metadata or ():
        if key == REASON_KEY:
            return value.decode() if isinstance(value, bytes) else value
    return ""
