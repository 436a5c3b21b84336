"""The benchmark's player model: when a listener's buffer runs dry, and how the timeline shifts."""

import pytest

from bench.player import Player


def test_first_chunk_starts_playback_and_is_not_timed():
    player = Player()
    assert player.receive(arrival_s=10.0, duration_s=2.0) is None
    assert player.playing
    assert player.buffered_s(11.0) == pytest.approx(1.0)


def test_chunks_arriving_before_they_are_needed_are_not_underruns():
    player = Player()
    player.receive(0.0, 2.0)
    timing = player.receive(0.5, 2.0)  # needed at 2.0
    assert timing.lateness_s == pytest.approx(-1.5) and not timing.underrun
    timing = player.receive(3.9, 2.0)  # needed at 4.0
    assert timing.lateness_s == pytest.approx(-0.1) and not timing.underrun
    assert player.underruns == 0
    assert player.buffered_s(3.9) == pytest.approx(2.1)


def test_a_late_chunk_is_an_underrun_and_shifts_the_timeline():
    player = Player()
    player.receive(0.0, 2.0)
    timing = player.receive(2.5, 2.0)  # needed at 2.0: the player waited 0.5 s
    assert timing.underrun and timing.lateness_s == pytest.approx(0.5)
    # Playback resumed at 2.5, so the next chunk is needed at 4.5, not 4.0.
    timing = player.receive(4.4, 2.0)
    assert not timing.underrun and timing.lateness_s == pytest.approx(-0.1)
    assert player.underruns == 1
    assert player.stalled_s == pytest.approx(0.5)


def test_buffered_audio_absorbs_a_slow_chunk_after_fast_ones():
    player = Player()
    player.receive(0.0, 2.0)
    for arrival in (0.1, 0.2, 0.3):  # three more chunks buffered at once: 8 s of audio
        player.receive(arrival, 2.0)
    timing = player.receive(7.9, 2.0)  # needed at 8.0
    assert not timing.underrun
    assert player.underruns == 0


def test_running_dry_before_hanging_up_counts_as_an_underrun():
    player = Player()
    player.receive(0.0, 2.0)
    player.receive(1.0, 2.0)  # audio until 4.0
    timing = player.finish(now_s=5.0)  # nothing came for the last second
    assert timing.underrun and timing.lateness_s == pytest.approx(1.0)
    assert player.underruns == 1


def test_hanging_up_with_audio_buffered_is_not_an_underrun():
    player = Player()
    player.receive(0.0, 2.0)
    assert player.finish(now_s=1.5) is None
    assert player.underruns == 0


def test_pause_stops_playback_and_the_first_chunk_after_play_restarts_it():
    player = Player()
    player.receive(0.0, 2.0)
    player.pause()
    assert player.receive(1.0, 2.0) is None  # in flight when paused: not played
    assert player.finish(now_s=20.0) is None  # a paused player is not starving
    player.resume()
    assert player.receive(30.0, 2.0) is None  # restarts playback, nothing was needed
    timing = player.receive(31.0, 2.0)
    assert timing.lateness_s == pytest.approx(-1.0) and not timing.underrun
    assert player.underruns == 0
