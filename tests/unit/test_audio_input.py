"""Decoding audio prompts: formats, channel mixing, resampling, the first 10 s, and every refusal."""

import io

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from services.embedder import audio_input
from services.embedder.audio_input import (
    AudioChannelCountError,
    AudioEmptyError,
    AudioFormatError,
    AudioInputError,
    AudioLimits,
    AudioNonFiniteError,
    AudioSampleRateError,
    AudioTooLargeError,
    AudioTruncatedError,
    decode_audio_prompt,
)

PROMPT_SAMPLES = 160_000


def encode(
    samples: np.ndarray, sample_rate_hz: int, fmt: str = "WAV", subtype: str = "PCM_16"
) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate_hz, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tone(
    seconds: float, sample_rate_hz: int, frequency_hz: float = 440.0, amplitude: float = 0.3
) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "fmt, subtype",
    [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS")],
)
def test_each_format_decodes_to_the_same_16khz_audio(fmt, subtype):
    reference = tone(3.0, 16_000)
    prompt = decode_audio_prompt(encode(tone(3.0, 44_100), 44_100, fmt, subtype))
    assert prompt.shape == (PROMPT_SAMPLES,) and prompt.dtype == np.float32
    # Lossy codecs shift the waveform by a few samples at most: compare the best alignment.
    head = prompt[: len(reference)]
    best = max(
        correlation(np.roll(head, shift)[2000:-2000], reference[2000:-2000])
        for shift in range(-2000, 2001, 1)
    )
    assert best > 0.99
    assert np.all(prompt[len(reference) + 2000 :] == 0.0)  # zero-padded to 10 s


def test_stereo_is_mixed_to_mono_by_averaging():
    left, right = tone(2.0, 16_000, 440.0), tone(2.0, 16_000, 660.0)
    prompt = decode_audio_prompt(encode(np.stack([left, right], axis=1), 16_000, subtype="FLOAT"))
    np.testing.assert_allclose(prompt[:32_000], (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("sample_rate_hz", [8_000, 22_050, 44_100, 48_000, 96_000, 192_000])
def test_sample_rates_are_resampled_to_16khz(sample_rate_hz):
    prompt = decode_audio_prompt(encode(tone(2.0, sample_rate_hz, 1000.0), sample_rate_hz))
    spectrum = np.abs(np.fft.rfft(prompt[:32_000]))
    peak_hz = np.argmax(spectrum) * 16_000 / 32_000
    assert abs(peak_hz - 1000.0) <= 1.0
    assert 0.2 < np.abs(prompt[1000:31_000]).max() < 0.4  # amplitude kept
    assert np.abs(prompt[32_100:]).max() < 1e-3  # silence after the 2 s tone


def test_silence_decodes_to_zeros():
    prompt = decode_audio_prompt(encode(np.zeros(16_000, np.float32), 16_000))
    assert np.array_equal(prompt, np.zeros(PROMPT_SAMPLES, np.float32))


def test_only_the_first_ten_seconds_are_used_and_decoded(monkeypatch):
    first, rest = tone(10.0, 16_000, 440.0), tone(20.0, 16_000, 880.0)
    data = encode(np.concatenate([first, rest]), 16_000, subtype="FLOAT")
    frames_read = []
    real_read = soundfile.SoundFile.read

    def recording_read(self, frames=-1, **kwargs):
        frames_read.append(frames)
        return real_read(self, frames, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", recording_read)
    prompt = decode_audio_prompt(data)
    np.testing.assert_allclose(prompt, first, atol=1e-6)
    assert frames_read == [160_000]  # not the whole 30 s file


def test_a_shorter_decode_limit_pads_the_rest():
    data = encode(tone(8.0, 16_000), 16_000, subtype="FLOAT")
    prompt = decode_audio_prompt(data, AudioLimits(max_seconds_decoded=5.0))
    np.testing.assert_allclose(prompt[:80_000], tone(5.0, 16_000), atol=1e-6)
    assert np.all(prompt[80_000:] == 0.0)


def test_oversized_input_is_refused_before_decoding():
    data = b"\0" * 2048
    with pytest.raises(AudioTooLargeError, match="audio prompt is 2048 bytes; the limit is 1024"):
        decode_audio_prompt(data, AudioLimits(max_bytes=1024))


def test_the_default_size_limit_is_ten_mebibytes():
    with pytest.raises(AudioTooLargeError, match="31457280 bytes; the limit is 10485760"):
        decode_audio_prompt(bytes(30 * 1024 * 1024))


def test_empty_input_is_refused():
    with pytest.raises(AudioEmptyError, match="empty"):
        decode_audio_prompt(b"")


def test_a_file_with_no_samples_is_refused():
    with pytest.raises(AudioEmptyError):
        decode_audio_prompt(encode(np.zeros((0, 1), np.float32), 16_000))


@pytest.mark.parametrize(
    "fmt, subtype, keep_fraction",
    [
        ("WAV", "PCM_16", 0.00005),  # cut inside the header
        ("WAV", "PCM_16", 0.5),
        ("WAVEX", "FLOAT", 0.5),
        ("OGG", "VORBIS", 0.5),
        ("MP3", "MPEG_LAYER_III", 0.5),
        ("MP3", "MPEG_LAYER_III", 0.005),
    ],
)
def test_truncated_files_are_refused(fmt, subtype, keep_fraction):
    data = encode(tone(4.0, 44_100), 44_100, fmt, subtype)
    with pytest.raises(AudioInputError):
        decode_audio_prompt(data[: int(len(data) * keep_fraction)])


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("MP3", "MPEG_LAYER_III")])
def test_a_truncated_file_says_so(fmt, subtype):
    data = encode(tone(4.0, 44_100), 44_100, fmt, subtype)
    with pytest.raises(AudioTruncatedError, match="truncated: its header announces 176400 frames"):
        decode_audio_prompt(data[: len(data) // 2])


def test_a_cut_after_the_first_ten_seconds_does_not_matter():
    data = encode(tone(20.0, 16_000), 16_000)
    assert decode_audio_prompt(data[: len(data) * 3 // 4]).shape == (PROMPT_SAMPLES,)


def test_a_wav_of_unannounced_length_is_read_as_it_comes():
    data = bytearray(encode(tone(2.0, 16_000), 16_000))
    data_chunk = data.index(b"data")
    data[data_chunk + 4 : data_chunk + 8] = b"\xff\xff\xff\xff"  # as streaming writers leave it
    np.testing.assert_allclose(
        decode_audio_prompt(bytes(data))[:32_000], tone(2.0, 16_000), atol=1e-4
    )


def test_random_bytes_are_refused():
    data = np.random.default_rng(0).bytes(50_000)
    with pytest.raises(AudioFormatError, match="could not be decoded"):
        decode_audio_prompt(data)


def test_formats_outside_the_accepted_list_are_refused():
    flac = encode(tone(1.0, 16_000), 16_000, "FLAC", "PCM_16")
    with pytest.raises(AudioFormatError, match="audio prompt is FLAC"):
        decode_audio_prompt(flac)
    assert decode_audio_prompt(flac, AudioLimits(formats=("FLAC",))).shape == (PROMPT_SAMPLES,)


@pytest.mark.parametrize("sample_rate_hz", [4_000, 200_000])
def test_sample_rates_out_of_range_are_refused(sample_rate_hz):
    with pytest.raises(AudioSampleRateError, match=f"{sample_rate_hz} Hz"):
        decode_audio_prompt(encode(tone(1.0, sample_rate_hz), sample_rate_hz))


def test_too_many_channels_are_refused():
    nine_channels = np.zeros((1600, 9), np.float32)
    with pytest.raises(AudioChannelCountError, match="9 channels; accepted: 1..8"):
        decode_audio_prompt(encode(nine_channels, 16_000))


def test_non_finite_samples_are_refused():
    samples = tone(1.0, 16_000)
    samples[100] = np.nan
    with pytest.raises(AudioNonFiniteError):
        decode_audio_prompt(encode(samples, 16_000, subtype="FLOAT"))


def test_every_refusal_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)
    for name in (
        "AudioTooLargeError",
        "AudioEmptyError",
        "AudioFormatError",
        "AudioTruncatedError",
        "AudioSampleRateError",
        "AudioChannelCountError",
        "AudioNonFiniteError",
    ):
        assert issubclass(getattr(audio_input, name), AudioInputError)


_VALID_FILES = [
    encode(tone(1.0, 22_050), 22_050, fmt, subtype)
    for fmt, subtype in [
        ("WAV", "PCM_16"),
        ("WAV", "FLOAT"),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ]
]


def _decode_or_refuse(data: bytes) -> None:
    """Either a well-formed prompt or an AudioInputError; anything else fails the test."""
    try:
        prompt = decode_audio_prompt(data)
    except AudioInputError:
        return
    assert prompt.shape == (PROMPT_SAMPLES,) and prompt.dtype == np.float32
    assert np.isfinite(prompt).all()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from([b"", b"RIFF", b"OggS", b"ID3", b"\xff\xfb"]))
def test_arbitrary_bytes_never_raise_anything_but_audio_input_error(noise, magic):
    _decode_or_refuse(magic + noise)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(_VALID_FILES))), st.data())
def test_damaged_files_never_raise_anything_but_audio_input_error(which, data):
    damaged = bytearray(_VALID_FILES[which])
    positions = data.draw(st.lists(st.integers(0, len(damaged) - 1), min_size=1, max_size=30))
    for position in positions:
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    _decode_or_refuse(bytes(damaged[:cut]))
