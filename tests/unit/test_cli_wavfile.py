"""WAV output of `mrt stream`: exactly the frames received, 48 kHz stereo 16-bit."""

import numpy as np
import pytest
import soundfile

from services.cli.wavfile import WavWriter, decode_pcm_s16le
from services.common import model_facts as facts


def _pcm_chunk(frames: int, seed: int) -> tuple[bytes, np.ndarray]:
    samples = np.random.default_rng(seed).integers(-32768, 32767, size=(frames, 2), dtype=np.int16)
    return samples.astype("<i2").tobytes(), samples


def test_writes_exactly_the_frames_received(tmp_path):
    path = tmp_path / "out.wav"
    chunks = [_pcm_chunk(facts.CHUNK_SAMPLES, seed) for seed in range(2)]
    odd_chunk = _pcm_chunk(1234, seed=7)  # writing must not pad or trim anything
    with WavWriter(path) as writer:
        for data, _ in [*chunks, odd_chunk]:
            writer.write_pcm_s16le(data)
        assert writer.frames_written == 2 * facts.CHUNK_SAMPLES + 1234
        assert writer.seconds_written == pytest.approx((2 * 96_000 + 1234) / 48_000)

    info = soundfile.info(path)
    assert (info.samplerate, info.channels) == (48_000, 2)
    assert (info.format, info.subtype) == ("WAV", "PCM_16")
    assert info.frames == 2 * facts.CHUNK_SAMPLES + 1234
    audio, _ = soundfile.read(path, dtype="int16")
    expected = np.concatenate([samples for _, samples in [*chunks, odd_chunk]])
    np.testing.assert_array_equal(audio, expected)


def test_decode_is_interleaved_little_endian():
    data = np.array([1, -2, 300, -400], dtype="<i2").tobytes()
    np.testing.assert_array_equal(decode_pcm_s16le(data, channels=2), [[1, -2], [300, -400]])


def test_partial_frames_are_refused():
    with pytest.raises(ValueError, match="whole number"):
        decode_pcm_s16le(b"\x00\x01\x02", channels=2)
