"""Weighted prompts: validate them, resolve each to an embedding, mix them by weight."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import embedder_pb2, music_pb2
from services.gateway.embedder_client import EmbedderClient, PromptRejected


@dataclasses.dataclass(frozen=True)
class PromptLimits:
    max_prompts: int = 16
    max_text_chars: int = 512
    max_audio_bytes: int = 10 * 1024 * 1024


class PromptError(ValueError):
    """One or more prompts are invalid; ``errors`` has one "prompts[i]: why" line each."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def prompt_weight(prompt: music_pb2.WeightedPrompt) -> float:
    return prompt.weight if prompt.HasField("weight") else 1.0


def validate_prompt(prompt: music_pb2.WeightedPrompt, limits: PromptLimits) -> str | None:
    """Why the prompt is invalid, or None."""
    weight = prompt_weight(prompt)
    if not math.isfinite(weight) or weight < 0:
        return f"weight must be a finite number >= 0, got {weight}"
    source = prompt.WhichOneof("source")
    if source == "text":
        if not prompt.text.strip():
            return "text is empty"
        if len(prompt.text) > limits.max_text_chars:
            return f"text is {len(prompt.text)} characters; the limit is {limits.max_text_chars}"
    elif source == "audio":
        if not prompt.audio:
            return "audio is empty"
        if len(prompt.audio) > limits.max_audio_bytes:
            return f"audio is {len(prompt.audio)} bytes; the limit is {limits.max_audio_bytes}"
    elif source == "embedding":
        values = prompt.embedding.values
        if len(values) != facts.STYLE_EMBEDDING_DIM:
            return f"embedding must have {facts.STYLE_EMBEDDING_DIM} values, got {len(values)}"
        if not all(math.isfinite(v) for v in values):
            return "embedding values must be finite (no NaN / inf)"
    else:
        return "set one of text, audio or embedding"
    return None


def mix_embeddings(embeddings: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray | None:
    """sum(w_i * e_i) / sum(w_i); None (unconditioned) when no weight is positive."""
    total = float(sum(weights))
    if not embeddings or total <= 0:
        return None
    mixed = sum(w * e for w, e in zip(weights, embeddings)) / total
    return np.asarray(mixed, np.float32)


async def resolve_prompts(
    prompts: Sequence[music_pb2.WeightedPrompt], embedder: EmbedderClient, limits: PromptLimits
) -> np.ndarray | None:
    """The mixed style embedding of ``prompts`` (None = unconditioned).

    Raises PromptError listing every invalid prompt, or BackendUnavailable."""
    if len(prompts) > limits.max_prompts:
        raise PromptError([f"at most {limits.max_prompts} prompts, got {len(prompts)}"])
    errors = [
        f"prompts[{i}]: {why}"
        for i, prompt in enumerate(prompts)
        if (why := validate_prompt(prompt, limits)) is not None
    ]
    if errors:
        raise PromptError(errors)
    active = [(i, p) for i, p in enumerate(prompts) if prompt_weight(p) > 0]

    async def embed(index: int, prompt: music_pb2.WeightedPrompt) -> np.ndarray:
        source = prompt.WhichOneof("source")
        if source == "embedding":
            return np.asarray(prompt.embedding.values, np.float32)
        request = (
            embedder_pb2.EmbedRequest(text=prompt.text)
            if source == "text"
            else embedder_pb2.EmbedRequest(audio=prompt.audio)
        )
        try:
            return await embedder.embed(request)
        except PromptRejected as err:
            raise PromptError([f"prompts[{index}]: {err}"]) from None

    embeddings = await asyncio.gather(*(embed(i, p) for i, p in active))
    return mix_embeddings(embeddings, [prompt_weight(p) for _, p in active])
