"""The gateway's audio encoders: PCM layouts, and Ogg Opus as one stream cut into chunks."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2
from services.gateway.audio_encoding import OggOpusEncoder, make_encoder
from tests.audio_decoding import ffmpeg_decode, spectral_similarity

FRAME_S = facts.SAMPLES_PER_FRAME / facts.SAMPLE_RATE_HZ  # one codec frame, 40 ms


def _music(chunks: int, seed: int = 0) -> np.ndarray:
    """float32[chunks * 96000, 2]: chords that change every half second, with a little noise."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(chunks * facts.CHUNK_SAMPLES) / facts.SAMPLE_RATE_HZ
    notes = rng.integers(48, 72, (int(np.ceil(seconds[-1] * 2)) + 1, 3))[(seconds * 2).astype(int)]
    tones = np.sin(2 * np.pi * 440.0 * 2 ** ((notes - 69) / 12) * seconds[:, None]).sum(axis=1)
    left = 0.2 * tones + 0.01 * rng.standard_normal(len(seconds))
    right = 0.2 * np.roll(tones, 480) + 0.01 * rng.standard_normal(len(seconds))
    return np.stack([left, right], axis=1).astype(np.float32)


def _chunks(audio: np.ndarray) -> list[np.ndarray]:
    return np.split(audio, len(audio) // facts.CHUNK_SAMPLES)


def test_pcm_encodings_are_interleaved_little_endian():
    samples = np.array([[0.5, -0.5], [1.5, -2.0]], np.float32)
    s16 = np.frombuffer(make_encoder(music_pb2.PCM_S16LE).encode(samples), "<i2")
    assert s16.tolist() == [16384, -16384, 32767, -32767]
    f32 = np.frombuffer(make_encoder(music_pb2.PCM_F32LE).encode(samples), "<f4")
    assert f32.tolist() == [0.5, -0.5, 1.5, -2.0]


def test_the_chunks_of_an_opus_session_concatenate_into_one_stream_of_the_same_music():
    audio = _music(chunks=5)
    encoder = make_encoder(music_pb2.OGG_OPUS)
    pieces = [encoder.encode(chunk) for chunk in _chunks(audio)]
    assert pieces[0].startswith(b"OggS") and b"OpusHead" in pieces[0]
    assert all(pieces) and not any(piece.startswith(b"OpusHead") for piece in pieces[1:])
    decoded = ffmpeg_decode(b"".join(pieces))
    assert abs(len(decoded) - len(audio)) <= facts.SAMPLES_PER_FRAME
    assert spectral_similarity(decoded, audio) > 0.95
    assert spectral_similarity(decoded, _music(chunks=5, seed=1)) < 0.5  # the measure can fail


def test_a_stream_cut_after_any_chunk_decodes_up_to_that_chunk():
    audio = _music(chunks=4)
    encoder = make_encoder(music_pb2.OGG_OPUS)
    received = b""
    for count, chunk in enumerate(_chunks(audio), start=1):
        received += encoder.encode(chunk)
        decoded = ffmpeg_decode(received)
        expected_s = count * facts.CHUNK_SECONDS
        assert expected_s - FRAME_S <= len(decoded) / facts.SAMPLE_RATE_HZ <= expected_s
        assert spectral_similarity(decoded, audio) > 0.95


@pytest.mark.parametrize("bitrate_bps", [32_000, 128_000])
def test_the_bitrate_asked_for_is_what_is_sent(bitrate_bps):
    encoder = make_encoder(music_pb2.OGG_OPUS, bitrate_bps)
    assert encoder.bitrate_bps == bitrate_bps
    audio = _music(chunks=3)
    sent_bytes = sum(len(encoder.encode(chunk)) for chunk in _chunks(audio))
    sent_bps = 8 * sent_bytes / (len(audio) / facts.SAMPLE_RATE_HZ)
    # One Ogg page per 20 ms packet: a 27-byte header and about 2 bytes of segment table each.
    page_overhead_bps = 50 * (27 + 2) * 8
    assert bitrate_bps * 0.8 <= sent_bps - page_overhead_bps <= bitrate_bps * 1.2


@pytest.mark.parametrize(
    "encoding, bitrate_bps, message",
    [
        (music_pb2.OGG_OPUS, 5_999, "6000-510000"),
        (music_pb2.OGG_OPUS, 510_001, "6000-510000"),
        (music_pb2.PCM_S16LE, 64_000, "OGG_OPUS encoding only"),
        (99, 0, "unknown audio encoding 99"),
    ],
)
def test_settings_an_encoder_cannot_take_are_refused(encoding, bitrate_bps, message):
    with pytest.raises(ValueError, match=message):
        make_encoder(encoding, bitrate_bps)


def test_closing_an_opus_encoder_frees_it_and_sends_nothing_more():
    encoder = OggOpusEncoder()
    encoder.encode(_music(chunks=1))
    encoder.close()
    encoder.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(_music(chunks=1))
