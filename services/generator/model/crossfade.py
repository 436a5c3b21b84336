"""From a chunk's new codec frames to its audio: the extra frame and the crossfade.

See docs/model.md, "One chunk". The codec decodes the chunk's new frames (50 by default) with
one frame in front, the last frame of the context, so 50 frames yield 51 frames = 2.04 s. Of
that audio the last 1 920 samples (the last new frame) are held back as the next chunk's
crossfade tail, and the first 1 920 (the repeated frame) are faded in while the previous
chunk's tail fades out, with equal-power ramps. What remains is exactly the chunk's frames
times 1 920 samples (96 000 for 50), and consecutive chunks join without a jump.

On a session's first chunk there is no previous frame; like upstream we decode codes 0 in its
place (its 40 ms fade in from silence), and the same where a restored context's last frame was
never generated.
"""

from __future__ import annotations

import numpy as np

from services.common import model_facts as facts

CROSSFADE_FRAMES = facts.CROSSFADE_SAMPLES // facts.SAMPLES_PER_FRAME  # 1


def crossfade_ramp(num_samples: int) -> np.ndarray:
    """Equal-power fade-in ramp sin(linspace(0, pi/2, n, endpoint=False)), float32[n].

    The fade-out is the same ramp reversed; ramp**2 + reversed**2 = 1 up to the half-sample
    offset of the endpoint-free grid, so the summed power stays level through the join.
    """
    return np.sin(np.linspace(0.0, np.pi / 2, num_samples, endpoint=False, dtype=np.float32))


def frames_to_decode(
    context_tokens: np.ndarray, chunk_indices: np.ndarray, new_codes: np.ndarray
) -> np.ndarray:
    """int32[B, F + 1, 16]: each row's last context frame (or codes 0) then its F new frames.

    context_tokens: int32[B, 250, 16] before this chunk (-1 = never generated);
    chunk_indices: int[B], the chunk being generated; new_codes: int32[B, F, 16].
    """
    previous_frame = context_tokens[:, -CROSSFADE_FRAMES:]
    no_previous = (np.asarray(chunk_indices) == 0) | np.any(previous_frame < 0, axis=(1, 2))
    previous_frame = np.where(no_previous[:, None, None], 0, previous_frame)
    return np.concatenate([previous_frame, new_codes], axis=1).astype(np.int32)


def crossfade_chunks(
    decoded: np.ndarray, previous_tails: np.ndarray, chunk_frames: int = facts.CHUNK_FRAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Split decoded audio into the chunk to play and the tail kept for the next chunk.

    decoded: float32[B, S + 1920, 2] (the chunk's frames plus one, decoded), where
    S = chunk_frames * 1920; previous_tails: float32[B, 1920, 2] from the previous chunk
    (zeros on the first). Returns (chunks float32[B, S, 2], next_tails float32[B, 1920, 2]).
    """
    fade = facts.CROSSFADE_SAMPLES
    chunk_samples = chunk_frames * facts.SAMPLES_PER_FRAME
    expected = (chunk_samples + fade, facts.CHANNELS)
    if decoded.shape[1:] != expected:
        raise ValueError(
            f"decoded audio must be [batch, {expected[0]}, {expected[1]}], got {decoded.shape}"
        )
    if previous_tails.shape != (decoded.shape[0], fade, facts.CHANNELS):
        raise ValueError(f"previous tails must be [batch, {fade}, 2], got {previous_tails.shape}")
    ramp = crossfade_ramp(fade)[:, None]
    chunks = decoded[:, :chunk_samples].astype(np.float32, copy=True)
    chunks[:, :fade] = chunks[:, :fade] * ramp + previous_tails * ramp[::-1]
    next_tails = decoded[:, chunk_samples:].astype(np.float32, copy=True)
    return chunks, next_tails
