"""mrt stream --input-audio: the file as a stream of audio_input messages."""

import io

import numpy as np
import pytest
import soundfile

from services.cli.live_input import InputStreamer, read_input_file
from services.cli.options import UsageError
from services.common.proto.mrt.v1 import music_pb2


def test_pieces_of_100_ms_from_position_0_in_order():
    audio = (np.random.default_rng(0).uniform(-0.5, 0.5, (12_345, 2))).astype(np.float32)
    sent = []
    # A lead longer than the audio: every piece is due at once, nothing waits.
    streamer = InputStreamer(audio, sent.append, lead_s=10.0)
    streamer.start()
    streamer._thread.join(timeout=10)
    messages = [request.audio_input for request in sent]
    assert [len(m.data) // 4 for m in messages] == [4800, 4800, 2745]
    assert messages[0].HasField("start_seconds") and messages[0].start_seconds == 0.0
    assert not any(m.HasField("start_seconds") for m in messages[1:])
    assert all(
        m.encoding == music_pb2.PCM_S16LE and m.sample_rate == 48_000 and m.channels == 2
        for m in messages
    )
    pcm = np.frombuffer(b"".join(m.data for m in messages), "<i2").reshape(-1, 2) / 32767.0
    np.testing.assert_allclose(pcm, audio, atol=1 / 32767)


def test_stop_ends_a_stream_that_waits_for_real_time():
    sent = []
    streamer = InputStreamer(np.zeros((48_000 * 60, 2), np.float32), sent.append, lead_s=0.0)
    streamer.start()
    streamer.stop()
    assert not streamer._thread.is_alive() and len(sent) <= 2


def test_files_become_48k_stereo_and_bad_files_are_usage_errors():
    out = io.BytesIO()
    soundfile.write(out, np.zeros(16_000, np.float32), 16_000, format="WAV")
    assert read_input_file(out.getvalue()).shape == (48_000, 2)
    with pytest.raises(UsageError, match="could not be decoded"):
        read_input_file(b"definitely not audio")
