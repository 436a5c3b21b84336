"""The listener-side injection algorithm: input and output on one timeline, and the mix."""

import numpy as np
import pytest

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2
from services.gateway.audio_injection import (
    AudioInjector,
    AudioInputRejected,
    InjectionSettings,
    TimelineAudio,
    decode_initial_audio,
    merge_injection_config,
    mix_live_style,
)

SR, F, C = facts.SAMPLE_RATE_HZ, facts.SAMPLES_PER_FRAME, facts.CHUNK_SAMPLES
MIX = facts.INJECTION_MIX_SAMPLES


def noise(samples: int, seed: int, scale: float = 0.3) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((samples, 2))).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_mix_is_the_heard_with_input_plus_fed_back_raw_output():
    """Chunk k+1 at P: 66 frames ending one frame after P, of the output before the crossfade
    (chunk minus its first frame, then the tail) and the input at the same positions."""
    injector = AudioInjector()
    injector.settings = InjectionSettings(feedback=0.5)
    chunks = [noise(C, seed) for seed in range(3)]
    tails = [noise(F, 10 + seed) for seed in range(3)]
    for k in range(3):
        injector.add_output(k * C, chunks[k], tails[k])
    heard = noise(4 * C, 99)  # the listener's input, from timeline position 0
    injector.add_input(
        music_pb2.AudioInput(
            data=pcm16(heard), encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
        ),
        1 << 24,
    )
    heard = np.round(np.clip(heard, -1, 1) * 32767) / 32768  # as the wire carries it

    mix = injector.mix_for_chunk(3 * C)

    # Independently: the raw output stream is each chunk from its second frame, then its tail.
    raw = np.concatenate([np.concatenate([chunks[k][F:], tails[k]]) for k in range(3)])
    raw_start = F  # raw[i] sits at timeline position F + i
    end = 3 * C + F
    expected = heard[end - MIX : end] + 0.5 * raw[end - MIX - raw_start : end - raw_start]
    np.testing.assert_allclose(mix, expected, atol=1e-6)


def test_offset_reads_older_input_and_gap_fades_out_the_newest():
    injector = AudioInjector()
    injector.settings = InjectionSettings(feedback=0.0, offset_ms=500.0, gap_ms=300.0)
    ramp_input = np.repeat(np.linspace(0, 1, 6 * C, dtype=np.float32)[:, None], 2, axis=1)
    injector.add_input(
        music_pb2.AudioInput(
            data=ramp_input.astype("<f4").tobytes(),
            encoding=music_pb2.PCM_F32LE,
            sample_rate=SR,
            channels=2,
        ),
        1 << 26,
    )
    mix = injector.mix_for_chunk(2 * C)
    offset, gap = SR // 2, round(0.3 * SR)
    end = 2 * C + F - offset
    window = ramp_input[end - MIX : end]
    envelope = np.concatenate([np.ones(MIX - gap), np.linspace(1, 0, 100), np.zeros(gap - 100)])
    np.testing.assert_allclose(mix, window * envelope[:, None], atol=1e-6)
    assert np.all(mix[-(gap - 100) :] == 0)


def test_no_input_in_the_window_means_no_injection():
    injector = AudioInjector()
    injector.add_output(0, noise(C, 1), noise(F, 2))
    assert injector.mix_for_chunk(C) is None
    one_second = noise(SR, 3)
    injector.add_input(
        music_pb2.AudioInput(
            data=pcm16(one_second), encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
        ),
        1 << 24,
    )
    assert injector.mix_for_chunk(C) is not None
    assert injector.mix_for_chunk(3 * C) is None  # the input stopped: the model goes on alone


def test_mono_and_other_rates_become_48k_stereo_and_continue_each_other():
    injector = AudioInjector()
    tone = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000).astype(np.float32) * 0.5
    for piece in np.split(tone, 4):
        receipt = injector.add_input(
            music_pb2.AudioInput(
                data=piece.astype("<f4").tobytes(),
                encoding=music_pb2.PCM_F32LE,
                sample_rate=16_000,
                channels=1,
            ),
            1 << 20,
        )
        assert receipt.dropped_s == 0
    # Streaming resampling holds back a few samples, so a little less than 1 s so far.
    assert 0.95 * SR < injector.next_input_position <= SR
    audio, any_input = injector.inputs.read(SR // 4, SR // 2)
    assert any_input and np.array_equal(audio[:, 0], audio[:, 1])
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    assert abs(np.argmax(spectrum) * SR / len(audio) - 440) < 8


@pytest.mark.parametrize(
    "fields, why",
    [
        (dict(sample_rate=1000, channels=2), "sample_rate"),
        (dict(sample_rate=SR, channels=3), "channels"),
        (dict(sample_rate=SR, channels=2, encoding=music_pb2.OGG_OPUS), "encoding"),
        (dict(sample_rate=SR, channels=2, data=b"\0" * 6), "whole number"),
        (dict(sample_rate=SR, channels=2, data=b"\0" * 4096), "limit"),
        (dict(sample_rate=SR, channels=2, start_seconds=-1.0), "start_seconds"),
    ],
)
def test_bad_input_is_refused_with_the_reason(fields, why):
    message = music_pb2.AudioInput(**{"data": b"\0" * 8, **fields})
    with pytest.raises(AudioInputRejected, match=why):
        AudioInjector().add_input(message, max_message_bytes=1024)


def test_input_faster_than_real_time_drops_the_oldest_and_counts_it():
    injector = AudioInjector(input_history_seconds=4.0)
    second = pcm16(noise(SR, 5))
    dropped = [
        injector.add_input(
            music_pb2.AudioInput(
                data=second, encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
            ),
            1 << 24,
        ).dropped_s
        for _ in range(6)
    ]
    assert dropped == [0, 0, 0, 0, 1.0, 1.0]  # 6 s sent at once into 4 s: the first 2 s lost
    assert injector.inputs.read(0, 2 * SR)[1] is False
    assert injector.inputs.read(2 * SR, 6 * SR)[1] is True
    # Input the mixer has already read is not counted when it ages out.
    injector.mix_for_chunk(5 * C)
    assert (
        injector.add_input(
            music_pb2.AudioInput(
                data=second, encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
            ),
            1 << 24,
        ).dropped_s
        == 0
    )


def test_timeline_audio_reads_zeros_where_nothing_was_written():
    timeline = TimelineAudio(10)
    timeline.write(3, np.ones((4, 2), np.float32))
    audio, any_input = timeline.read(0, 10)
    assert any_input and audio[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]


def test_injection_settings_are_range_checked():
    merged = merge_injection_config(
        InjectionSettings(), music_pb2.GenerationConfig(input_feedback=0.2, input_offset_ms=-100)
    )
    assert merged.feedback == pytest.approx(0.2) and merged.offset_ms == -100
    assert merged.gap_ms == facts.DEFAULT_INPUT_GAP_MS
    with pytest.raises(ValueError, match="input_gap_ms"):
        merge_injection_config(merged, music_pb2.GenerationConfig(input_gap_ms=5000))


def test_initial_audio_is_the_last_ten_seconds_at_48k_stereo(tmp_path):
    import soundfile

    clip = np.arange(12 * 8000, dtype=np.float32) / (12 * 8000)  # a 12 s ramp, mono 8 kHz
    soundfile.write(tmp_path / "clip.wav", clip, 8000, subtype="FLOAT")
    audio = decode_initial_audio((tmp_path / "clip.wav").read_bytes(), 1 << 24)
    assert audio.shape == (10 * SR, 2)
    assert audio[SR:-SR, 0].min() > 0.18  # starts about 2 s into the ramp
    with pytest.raises(AudioInputRejected, match="could not be decoded"):
        decode_initial_audio(b"not audio at all", 1 << 24)


def test_live_style_joins_the_prompt_mix_with_its_weight():
    prompts, live = np.full(768, 1.0, np.float32), np.full(768, 4.0, np.float32)
    # Prompts of total weight 3 mixed to `prompts`; the input at weight 1: (3 * 1 + 1 * 4) / 4.
    np.testing.assert_allclose(mix_live_style(prompts, 3.0, live, 1.0), 1.75)
    np.testing.assert_array_equal(mix_live_style(None, 0.0, live, 0.5), live)
    assert mix_live_style(prompts, 3.0, live, 0.0) is prompts
    assert mix_live_style(None, 0.0, None, 1.0) is None


def test_recent_input_is_the_newest_ten_seconds_as_wav():
    import io

    import soundfile

    injector = AudioInjector()
    assert injector.recent_input_wav() is None
    injector.add_input(
        music_pb2.AudioInput(
            data=pcm16(noise(12 * SR, 4)), encoding=music_pb2.PCM_S16LE, sample_rate=SR, channels=2
        ),
        1 << 26,
    )
    audio, rate = soundfile.read(io.BytesIO(injector.recent_input_wav()))
    assert rate == SR and audio.shape == (10 * SR, 2)
