"""The token side of chunk generation: pure NumPy functions.

Codes are raw codebook indices in [0, 1024) (-1 = not generated yet); tokens are ids of the
model's one shared vocabulary (codec level k, code c -> 2 + k * 1024 + c).
"""

from __future__ import annotations

import numpy as np

from services.common import model_facts as facts

_CODEC_LEVEL_OFFSETS = facts.CODEC_TOKEN_OFFSET + facts.CODEBOOK_SIZE * np.arange(
    facts.DECODER_RVQ_LEVELS, dtype=np.int32
)
_STYLE_LEVEL_OFFSETS = facts.STYLE_TOKEN_OFFSET + facts.CODEBOOK_SIZE * np.arange(
    facts.STYLE_RVQ_LEVELS, dtype=np.int32
)


def _check_shape(name: str, array: np.ndarray, tail: tuple[int, ...]) -> None:
    if array.ndim != len(tail) + 1 or array.shape[1:] != tail:
        raise ValueError(f"{name} must be [batch, {', '.join(map(str, tail))}], got {array.shape}")


def build_encoder_tokens(context_tokens: np.ndarray, style_tokens: np.ndarray) -> np.ndarray:
    """int32[B, 1006]: the 250 context frames' first 4 levels (frame-major) then 6 style tokens.

    context_tokens: int32[B, 250, 16] codes, -1 where not generated yet (-> MASK).
    style_tokens: int32[B, 6] MusicCoCa RVQ codes, -1 for "no style" (-> MASK).
    """
    context_tokens = np.asarray(context_tokens)
    style_tokens = np.asarray(style_tokens)
    _check_shape("context_tokens", context_tokens, (facts.CONTEXT_FRAMES, facts.DECODER_RVQ_LEVELS))
    _check_shape("style_tokens", style_tokens, (facts.STYLE_RVQ_LEVELS,))
    context = context_tokens[:, :, : facts.ENCODER_RVQ_LEVELS]
    context = np.where(
        context < 0, facts.MASK_TOKEN, context + _CODEC_LEVEL_OFFSETS[: facts.ENCODER_RVQ_LEVELS]
    )
    style = np.where(style_tokens < 0, facts.MASK_TOKEN, style_tokens + _STYLE_LEVEL_OFFSETS)
    return np.concatenate([context.reshape(len(context), -1), style], axis=1).astype(np.int32)


def cfg_uncond_copy(encoder_tokens: np.ndarray) -> np.ndarray:
    """The classifier-free-guidance partner of each row: the same context, style all MASK."""
    uncond = np.array(encoder_tokens, dtype=np.int32, copy=True)
    uncond[:, -facts.STYLE_RVQ_LEVELS :] = facts.MASK_TOKEN
    return uncond


def codes_from_tokens(tokens: np.ndarray) -> np.ndarray:
    """int32[B, 50, 16] codes from int32[B, 800] decoder tokens: remove the level offset,
    modulo 1 024 (which is also how upstream wraps tokens sampled outside their level)."""
    tokens = np.asarray(tokens)
    _check_shape("tokens", tokens, (facts.DECODER_STEPS,))
    codes = (tokens - facts.CODEC_TOKEN_OFFSET) % facts.CODEBOOK_SIZE
    return codes.reshape(len(tokens), facts.CHUNK_FRAMES, facts.DECODER_RVQ_LEVELS).astype(np.int32)


def tokens_from_codes(codes: np.ndarray) -> np.ndarray:
    """int32[B, 800] decoder tokens (frame-major) from int32[B, 50, 16] codes."""
    codes = np.asarray(codes)
    _check_shape("codes", codes, (facts.CHUNK_FRAMES, facts.DECODER_RVQ_LEVELS))
    return (codes + _CODEC_LEVEL_OFFSETS).reshape(len(codes), -1).astype(np.int32)


def append_to_context(context_tokens: np.ndarray, new_codes: np.ndarray) -> np.ndarray:
    """The context after a chunk of F frames (1 to 50): the oldest F frames dropped, the new
    F appended."""
    context_tokens = np.asarray(context_tokens)
    new_codes = np.asarray(new_codes)
    _check_shape("context_tokens", context_tokens, (facts.CONTEXT_FRAMES, facts.DECODER_RVQ_LEVELS))
    frames = new_codes.shape[1] if new_codes.ndim == 3 else 0
    if not 1 <= frames <= facts.CHUNK_FRAMES:
        raise ValueError(f"new_codes must be [batch, 1..50, 16], got {new_codes.shape}")
    _check_shape("new_codes", new_codes, (frames, facts.DECODER_RVQ_LEVELS))
    return np.concatenate([context_tokens[:, frames:], new_codes], axis=1).astype(np.int32)
