"""The `tiny` model's codec and style-quantizer assets, written in the upstream formats.

The offline default model needs a codec and a MusicCoCa quantizer that nobody has to download.
We build them locally, deterministically from fixed seeds, as SavedModels with exactly the
upstream signatures, variable layouts, dtypes and shapes, so they go through the same loading
code as the real assets (`spectrostream`, `style_tokens`).

The tiny codec's decoder network is ours: an additive synthesizer. A frame embedding selects a
few notes of a pentatonic scale (each note a fundamental plus three harmonics) and pans them;
note amplitudes are smoothed over frames and interpolated across each frame, so random codes
sound like an evolving pad rather than noise. Every partial is a multiple of 0.5 Hz, so the
oscillators repeat exactly every 2 s (one chunk hop): the frame decoded at the end of one chunk
and again at the start of the next starts in the same phase, and the crossfade joins cleanly.

The tiny codec's encoder inverts that synthesizer, so that encoding audio and decoding the
codes gives back its notes: it estimates each note's level in each channel from the amplitudes
of the note's partials (a least-squares fit through the analysis window's leakage), turns level
and pan into the logits the decoder would need, and solves for an embedding that produces them.
The codebooks live in the subspace the decoder reads (the span of its note and pan kernels, plus
one direction that sets the embedding's overall scale), so 16 quantizer levels reproduce what
the encoder wrote.

Builds are idempotent and safe when processes race: each SavedModel is written into a temporary
directory beside its target and renamed into place; the loser of a race discards its copy.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.common import model_facts as facts
from services.common.assets import AssetStore, move_into_place
from services.generator.model import spectrostream
from services.generator.model.spectrostream import import_tensorflow_cpu_only
from services.generator.model.style_tokens import SAVED_VARIABLE_ORDER, STYLE_QUANTIZER_ASSET

log = logging.getLogger(__name__)

CODEC_SEED = 1920
STYLE_QUANTIZER_SEED = 768

# Synthesizer design of the tiny codec decoder.
SCALE_STEPS_SEMITONES = (0, 2, 4, 7, 9)  # major pentatonic
LOWEST_NOTE_HZ = 110.0  # A2
NOTES = 24  # a bit under five octaves
HARMONICS = 4  # harmonic h has gain 1/h
WAVE_PERIOD_SAMPLES = 2 * facts.SAMPLE_RATE_HZ  # every partial is a multiple of 0.5 Hz
NOTE_THRESHOLD = 1.2  # note logits are ~N(0, 1): about 3 of 24 notes sound at a time
NOTE_SHARPNESS = 4.0
ENVELOPE_DECAY_PER_FRAME = 0.7  # amplitude smoothing over the last few frames
ENVELOPE_FRAMES = 6
OUTPUT_GAIN = 0.3  # before tanh, which keeps the output inside (-1, 1)

# Analysis of the tiny codec encoder: each frame is read through a Hann window four frames long
# centred on it (fine enough to separate the lowest notes), after undoing the output tanh.
ANALYSIS_FRAMES = 4
LEAKAGE_REGULARIZATION = 1e-3
LEVEL_CLIP = 0.002  # levels and pans are kept inside (0.002, 0.998) before inverting sigmoids
PAN_MIN_LEVEL = 0.1  # quieter notes are panned towards the middle
PAN_CLIP = 0.1
EMBEDDING_SCALE = 0.2  # unit-RMS embeddings (length 16) scaled to the codebook vectors' lengths

# Codebook vectors have a fixed length per level (so nearest neighbour = largest dot product
# with the residual, whatever the input scale), shrinking with depth like a trained RVQ. They
# lie in the span of the decoder's kernels plus one scale direction weighted this much.
CODEC_CODE_NORM = 1.0
CODEC_NORM_DECAY = 0.85
SCALE_DIRECTION_WEIGHT = 6.0
STYLE_CODE_NORM = 0.5
STYLE_NORM_DECAY = 0.8


def ensure_tiny_assets(store: AssetStore) -> AssetStore:
    """Build whatever tiny asset is missing; return a store rooted at the tiny assets."""
    root = store.tiny_root()
    ensure_tiny_codec(root)
    ensure_tiny_style_quantizer(root)
    return AssetStore(root)


def ensure_tiny_codec(root: Path) -> None:
    """The tiny SpectroStream encoder, decoder and quantizer under `root`, built if missing."""
    build_directory_once(root / spectrostream.QUANTIZER_ASSET, _save_codec_quantizer)
    build_directory_once(root / spectrostream.DECODER_ASSET, _save_codec_decoder)
    build_directory_once(root / spectrostream.ENCODER_ASSET, _save_codec_encoder)


def ensure_tiny_style_quantizer(root: Path) -> None:
    """The tiny MusicCoCa quantizer (12 codebooks of 1024 x 768) under `root`, built if missing."""
    build_directory_once(root / STYLE_QUANTIZER_ASSET, _save_style_quantizer)


@functools.cache
def synth_kernels() -> tuple[np.ndarray, np.ndarray]:
    """The decoder's note and pan kernels, float32[256, NOTES] each (embedding -> logits)."""
    dim = spectrostream.CODEC_EMBEDDING_DIM
    # Unit-RMS input times N(0, 1/dim) weights -> ~N(0, 1) logits.
    kernels = np.random.default_rng(CODEC_SEED + 1).standard_normal((2, dim, NOTES)) / np.sqrt(dim)
    return kernels[0].astype(np.float32), kernels[1].astype(np.float32)


@functools.cache
def _decoder_subspace() -> tuple[np.ndarray, np.ndarray]:
    """(orthonormal basis float64[256, 2 * NOTES] of the kernels' span, a unit vector outside it)."""
    basis, _ = np.linalg.qr(np.concatenate(synth_kernels(), axis=1).astype(np.float64))
    scale_direction = np.random.default_rng(CODEC_SEED + 2).standard_normal(basis.shape[0])
    scale_direction -= basis @ (basis.T @ scale_direction)
    return basis, scale_direction / np.linalg.norm(scale_direction)


@functools.cache
def tiny_codec_codebooks() -> np.ndarray:
    """The tiny codec's codebooks, float32[64, 1024, 256] (what the quantizer asset holds)."""
    basis, scale_direction = _decoder_subspace()
    rng = np.random.default_rng(CODEC_SEED)
    levels, size = spectrostream.CODEC_RVQ_DEPTH, facts.CODEBOOK_SIZE
    vectors = (
        rng.standard_normal((levels, size, basis.shape[1])) @ basis.T
        + SCALE_DIRECTION_WEIGHT * rng.standard_normal((levels, size, 1)) * scale_direction
    )
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    vectors *= CODEC_CODE_NORM * CODEC_NORM_DECAY ** np.arange(levels)[:, None, None]
    vectors = vectors.astype(np.float32)
    vectors.flags.writeable = False  # cached: shared by every caller
    return vectors


@functools.cache
def tiny_style_codebooks() -> np.ndarray:
    """The tiny MusicCoCa codebooks, float32[12, 1024, 768], in level order."""
    return _fixed_norm_codebooks(
        np.random.default_rng(STYLE_QUANTIZER_SEED),
        facts.STYLE_RVQ_LEVELS_TOTAL,
        facts.STYLE_EMBEDDING_DIM,
        STYLE_CODE_NORM,
        STYLE_NORM_DECAY,
    )


def _fixed_norm_codebooks(
    rng: np.random.Generator, levels: int, dim: int, first_norm: float, decay: float
) -> np.ndarray:
    directions = rng.standard_normal((levels, facts.CODEBOOK_SIZE, dim), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    directions *= first_norm * decay ** np.arange(levels, dtype=np.float32)[:, None, None]
    directions.flags.writeable = False  # cached: shared by every caller
    return directions


def build_directory_once(target: Path, fill: Callable[[Path], None]) -> None:
    """Create directory `target` by `fill(tmp_dir)` and a rename, unless it already exists.

    Readers never see a half-written directory, and when two processes race the first rename
    wins and the other discards its copy.
    """
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("building %s", target)
        fill(tmp_dir)
        move_into_place(tmp_dir, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _save_codec_quantizer(directory: Path) -> None:
    tf = import_tensorflow_cpu_only()
    dim = spectrostream.CODEC_EMBEDDING_DIM

    class Codebook(tf.Module):
        def __init__(self, codebook: np.ndarray):
            super().__init__()
            self.embeddings = tf.Variable(codebook.T, name="embeddings")  # stored [256, 1024]

    class ResidualVectorQuantizer(tf.Module):
        def __init__(self, codebooks: np.ndarray):
            super().__init__()
            self._quantizers = [Codebook(codebook) for codebook in codebooks]

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, dim], tf.float32),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def inference_encoding_with_tf_function(self, embeddings, num_quantizers):
            # Level by level: the nearest code to the residual, then subtract it. Later levels
            # never change earlier codes, so computing all and keeping the first n is exact.
            residual = embeddings
            codes, residuals = [], [residual]
            for quantizer in self._quantizers:
                codebook = quantizer.embeddings  # [256, 1024]
                distances = tf.reduce_sum(tf.square(codebook), axis=0) - 2.0 * tf.einsum(
                    "bsd,dv->bsv", residual, codebook
                )
                level_codes = tf.argmin(distances, axis=-1, output_type=tf.int32)
                residual = residual - tf.gather(tf.transpose(codebook), level_codes)
                codes.append(level_codes)
                residuals.append(residual)
            quantized = embeddings - tf.gather(tf.stack(residuals), num_quantizers)
            return tf.stack(codes)[:num_quantizers], quantized

    tf.saved_model.save(ResidualVectorQuantizer(tiny_codec_codebooks()), str(directory))


def _note_half_hertz() -> np.ndarray:
    """Fundamental of each note of the scale in units of 0.5 Hz (rounded), int64[NOTES]."""
    steps = len(SCALE_STEPS_SEMITONES)
    semitones = np.array(
        [12 * (n // steps) + SCALE_STEPS_SEMITONES[n % steps] for n in range(NOTES)]
    )
    return np.round(2.0 * LOWEST_NOTE_HZ * 2.0 ** (semitones / 12.0)).astype(np.int64)


def _note_wavetable() -> np.ndarray:
    """One 2 s period of every note's waveform (fundamental + harmonics), float32[96000, NOTES]."""
    harmonics = np.arange(1, HARMONICS + 1)
    partial_half_hz = _note_half_hertz()[:, None] * harmonics[None, :]  # [NOTES, HARMONICS]
    sample = np.arange(WAVE_PERIOD_SAMPLES, dtype=np.int64)[:, None, None]
    # Exact phase: partial_half_hz * 0.5 Hz * t / 48 kHz cycles = k * t / 96000 cycles.
    phase_cycles = (sample * partial_half_hz) % WAVE_PERIOD_SAMPLES / WAVE_PERIOD_SAMPLES
    waves = np.sin(2.0 * np.pi * phase_cycles) / harmonics
    return waves.sum(axis=-1).astype(np.float32)


def _save_codec_decoder(directory: Path) -> None:
    tf = import_tensorflow_cpu_only()
    dim, frame = spectrostream.CODEC_EMBEDDING_DIM, facts.SAMPLES_PER_FRAME
    envelope_taps = ENVELOPE_DECAY_PER_FRAME ** np.arange(ENVELOPE_FRAMES)
    envelope_taps /= envelope_taps.sum()

    class AdditiveSynthDecoder(tf.Module):
        def __init__(self):
            super().__init__()
            note_kernel, pan_kernel = synth_kernels()
            self.note_kernel = tf.Variable(note_kernel, name="note_kernel")
            self.pan_kernel = tf.Variable(pan_kernel, name="pan_kernel")
            self.wavetable = tf.Variable(_note_wavetable(), name="wavetable")

        @tf.function(input_signature=[tf.TensorSpec([None, None, dim], tf.float32)])
        def __call__(self, embeddings):
            batch, frames = tf.shape(embeddings)[0], tf.shape(embeddings)[1]
            unit = embeddings * tf.math.rsqrt(
                tf.reduce_mean(tf.square(embeddings), axis=-1, keepdims=True) + 1e-6
            )
            note_logits = tf.einsum("bsd,dn->bsn", unit, self.note_kernel)
            loudness = tf.sigmoid(NOTE_SHARPNESS * (note_logits - NOTE_THRESHOLD))
            pan = tf.sigmoid(tf.einsum("bsd,dn->bsn", unit, self.pan_kernel)) * (np.pi / 2)
            # Smooth over the last ENVELOPE_FRAMES frames (the first frame stands in for history).
            history = tf.concat(
                [tf.repeat(loudness[:, :1], ENVELOPE_FRAMES - 1, axis=1), loudness], axis=1
            )
            start = ENVELOPE_FRAMES - 1
            loudness = tf.add_n(
                [
                    float(tap) * history[:, start - lag : start - lag + frames]
                    for lag, tap in enumerate(envelope_taps)
                ]
            )
            gains = tf.stack([loudness * tf.cos(pan), loudness * tf.sin(pan)], axis=-1)
            previous_gains = tf.concat([gains[:, :1], gains[:, :-1]], axis=1)
            # Oscillators: sample index modulo the 2 s period, looked up in the wavetable.
            sample_index = tf.reshape(tf.range(frames * frame), [frames, frame])
            notes = tf.gather(self.wavetable, sample_index % WAVE_PERIOD_SAMPLES)  # [S, 1920, N]
            # Gains glide linearly from the previous frame's to this frame's across the frame.
            glide = (tf.range(frame, dtype=tf.float32) + 0.5) / frame
            audio = tf.einsum(
                "bsnc,sjn->bsjc", previous_gains, notes * (1.0 - glide)[:, None]
            ) + tf.einsum("bsnc,sjn->bsjc", gains, notes * glide[:, None])
            audio = tf.reshape(audio, [batch, frames * frame, facts.CHANNELS])
            return tf.tanh(OUTPUT_GAIN * audio)

    tf.saved_model.save(AdditiveSynthDecoder(), str(directory))


def _analysis_partials_hz() -> np.ndarray:
    """Every partial of every note, ascending; partials closer than 2 Hz (a rounded scale note
    and another note's harmonic) are one: no 160 ms window tells them apart."""
    partials = np.sort((_note_half_hertz()[:, None] * np.arange(1, HARMONICS + 1)).ravel() / 2.0)
    merged = [partials[0]]
    for hz in partials[1:]:
        if hz - merged[-1] >= 2.0:
            merged.append(hz)
    return np.array(merged)


def _encoder_constants() -> dict[str, np.ndarray]:
    """What the encoder graph multiplies by: analysis bases, leakage inverse, note fit, kernels."""
    window_samples = ANALYSIS_FRAMES * facts.SAMPLES_PER_FRAME
    partial_hz = _analysis_partials_hz()
    # Time centred on the window, so a partial's response to another is real: W(f_q - f_p).
    t = (np.arange(window_samples) - (window_samples - 1) / 2) / facts.SAMPLE_RATE_HZ
    window = np.hanning(window_samples)
    cos_basis = window[:, None] * np.cos(2 * np.pi * t[:, None] * partial_hz)
    sin_basis = window[:, None] * np.sin(2 * np.pi * t[:, None] * partial_hz)
    # A partial of amplitude a at f_q projects a/2 * W(f_q - f_p) onto partial p.
    difference = partial_hz[None, :] - partial_hz[:, None]
    leakage = 0.5 * (window[None, None, :] * np.cos(2 * np.pi * difference[..., None] * t)).sum(-1)
    unleak = np.linalg.solve(
        leakage.T @ leakage + LEAKAGE_REGULARIZATION * np.eye(len(partial_hz)), leakage.T
    ).T  # [partials (measured), partials (true)]
    # Partial amplitudes of the notes sounding at unit level: note n's harmonic h has 1/h.
    note_partials = np.zeros((NOTES, len(partial_hz)))
    for note, half_hz in enumerate(_note_half_hertz()):
        for harmonic in range(1, HARMONICS + 1):
            nearest = np.abs(partial_hz - half_hz * harmonic / 2.0).argmin()
            note_partials[note, nearest] += 1 / harmonic
    _, scale_direction = _decoder_subspace()
    kernels = np.concatenate(synth_kernels(), axis=1).astype(np.float64)
    return {
        name: value.astype(np.float32)
        for name, value in dict(
            cos_basis=cos_basis,
            sin_basis=sin_basis,
            unleak=unleak,
            partials_to_notes=np.linalg.pinv(note_partials),  # [partials, NOTES]
            logits_to_embedding=np.linalg.pinv(kernels.T).T,  # [2 NOTES, 256]
            scale_direction=scale_direction,
        ).items()
    }


def _save_codec_encoder(directory: Path) -> None:
    tf = import_tensorflow_cpu_only()
    frame, dim = facts.SAMPLES_PER_FRAME, spectrostream.CODEC_EMBEDDING_DIM
    constants = _encoder_constants()
    before = (ANALYSIS_FRAMES - 1) * frame // 2  # window centred on each frame

    def logit(p):
        p = tf.clip_by_value(p, LEVEL_CLIP, 1.0 - LEVEL_CLIP)
        return tf.math.log(p) - tf.math.log(1.0 - p)

    class SynthAnalysisEncoder(tf.Module):
        def __init__(self):
            super().__init__()
            for name, value in constants.items():
                setattr(self, name, tf.Variable(value, name=name))

        @tf.function(input_signature=[tf.TensorSpec([None, None, facts.CHANNELS], tf.float32)])
        def __call__(self, samples):
            length = tf.shape(samples)[1]
            frames = (length + frame - 1) // frame
            # Undo the decoder's output tanh, then one window per frame, per channel.
            linear = tf.atanh(tf.clip_by_value(samples, -0.999, 0.999)) / OUTPUT_GAIN
            padded = tf.pad(
                linear,
                [
                    [0, 0],
                    [before, frames * frame - length + ANALYSIS_FRAMES * frame - before - frame],
                    [0, 0],
                ],
            )
            windows = tf.signal.frame(
                tf.transpose(padded, [0, 2, 1]), ANALYSIS_FRAMES * frame, frame
            )[:, :, :frames]  # [B, 2, S, window]
            measured_re = windows @ self.cos_basis
            measured_im = windows @ self.sin_basis
            amplitude = tf.sqrt(
                tf.square(measured_re @ self.unleak) + tf.square(measured_im @ self.unleak) + 1e-12
            )
            levels = tf.nn.relu(amplitude @ self.partials_to_notes)  # [B, 2, S, NOTES]
            left, right = levels[:, 0], levels[:, 1]
            loudness = tf.sqrt(tf.square(left) + tf.square(right))
            # Pan in (0, 1); a note too quiet to place sits in the middle.
            pan = tf.atan2(right, left) / (np.pi / 2)
            pan = 0.5 + (pan - 0.5) * tf.minimum(1.0, loudness / PAN_MIN_LEVEL)
            pan = tf.clip_by_value(pan, PAN_CLIP, 1.0 - PAN_CLIP)
            logits = tf.concat([NOTE_THRESHOLD + logit(loudness) / NOTE_SHARPNESS, logit(pan)], -1)
            # The embedding whose unit-RMS form gives these logits: the kernels' pseudo-inverse,
            # plus the scale direction (which no logit reads) to make its RMS exactly 1.
            core = logits @ self.logits_to_embedding
            spare = tf.sqrt(
                tf.nn.relu(float(dim) - tf.reduce_sum(tf.square(core), -1, keepdims=True))
            )
            return EMBEDDING_SCALE * (core + spare * self.scale_direction)

    tf.saved_model.save(SynthAnalysisEncoder(), str(directory))


def _save_style_quantizer(directory: Path) -> None:
    tf = import_tensorflow_cpu_only()
    codebooks = tiny_style_codebooks()
    # Upstream's SavedModel is a root object whose `variables` list holds the 12 codebooks
    # transposed ([768, 1024]), in the order SAVED_VARIABLE_ORDER describes.
    root = tf.__internal__.tracking.AutoTrackable()
    saved = [None] * len(SAVED_VARIABLE_ORDER)
    for level, position in enumerate(SAVED_VARIABLE_ORDER):
        saved[position] = tf.Variable(codebooks[level].T)
    root.variables = saved
    tf.saved_model.save(root, str(directory))
