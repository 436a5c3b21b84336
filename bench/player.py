"""A listener's audio player, modelled exactly: when would its buffer have run dry?

The player starts playing when the first chunk arrives and then consumes audio in real time.
Each later chunk is *needed* at the moment the player finishes the audio before it. A chunk
that arrives after that moment is an underrun the listener hears: the player waits for it and
resumes when it arrives, so everything after shifts by the gap. The server's buffer-ahead
setting is what normally keeps chunks arriving well before they are needed.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChunkTiming:
    """How one chunk arrived against the player's need."""

    lateness_s: float  # arrival minus need: negative = that much audio was still buffered
    underrun: bool


class Player:
    """Tracks one listener's playback timeline from chunk arrival times (seconds, any clock)."""

    def __init__(self) -> None:
        self._needed_at_s: float | None = None  # when the next chunk's first sample is due
        self._paused = False
        self.underruns = 0
        self.stalled_s = 0.0  # total time the player sat waiting with an empty buffer
        self.played_chunks = 0

    @property
    def playing(self) -> bool:
        return self._needed_at_s is not None

    def receive(self, arrival_s: float, duration_s: float) -> ChunkTiming | None:
        """Queue a chunk that arrived at ``arrival_s``; None for a chunk that starts playback
        (nothing was needed before it) or one that arrives while paused."""
        if self._paused:
            return None
        self.played_chunks += 1
        if self._needed_at_s is None:
            self._needed_at_s = arrival_s + duration_s
            return None
        lateness_s = arrival_s - self._needed_at_s
        underrun = lateness_s > 0
        if underrun:
            self.underruns += 1
            self.stalled_s += lateness_s
        self._needed_at_s = max(arrival_s, self._needed_at_s) + duration_s
        return ChunkTiming(lateness_s=lateness_s, underrun=underrun)

    def buffered_s(self, now_s: float) -> float:
        """Audio left to play at ``now_s`` (0 when not playing or run dry)."""
        if self._needed_at_s is None:
            return 0.0
        return max(0.0, self._needed_at_s - now_s)

    def pause(self) -> None:
        """The listener paused: playback stops, and chunks in flight are not played."""
        self._needed_at_s = None
        self._paused = True

    def resume(self) -> None:
        """The listener pressed play again: the next chunk to arrive restarts playback."""
        self._paused = False

    def finish(self, now_s: float) -> ChunkTiming | None:
        """The listener stops listening at ``now_s``. If the buffer ran dry before then while
        the next chunk was still missing, that silence is an underrun too."""
        if self._needed_at_s is None or self._paused:
            return None
        lateness_s = now_s - self._needed_at_s
        if lateness_s <= 0:
            return None
        self.underruns += 1
        self.stalled_s += lateness_s
        self._needed_at_s = None
        return ChunkTiming(lateness_s=lateness_s, underrun=True)
