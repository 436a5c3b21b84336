"""Turns command-line prompt specs ("text[:weight]", "FILE[:weight]") into WeightedPrompt messages.

The weight is split off at the last colon only when what follows is a number, so texts that
contain colons ("live at 5:30 am") pass through untouched.
"""

from __future__ import annotations

import math
from pathlib import Path

from services.common.proto.mrt.v1 import music_pb2


class PromptSpecError(ValueError):
    """A prompt spec that cannot be sent; the message is meant for the user."""


def split_weight(spec: str) -> tuple[str, float | None]:
    """Split "source:weight" into (source, weight); weight is None when the spec has none."""
    source, colon, tail = spec.rpartition(":")
    if not colon:
        return spec, None
    try:
        weight = float(tail)
    except ValueError:
        return spec, None
    if not math.isfinite(weight) or weight < 0:
        raise PromptSpecError(
            f"prompt weight must be a finite number >= 0, got '{tail}' in '{spec}'"
        )
    return source, weight


def text_prompt(spec: str) -> music_pb2.WeightedPrompt:
    """A text prompt from "text" or "text:weight"."""
    text, weight = split_weight(spec)
    if not text.strip():
        raise PromptSpecError(f"prompt text is empty in '{spec}'")
    return music_pb2.WeightedPrompt(text=text, weight=weight)


def audio_prompt(spec: str) -> music_pb2.WeightedPrompt:
    """An audio prompt from "FILE" or "FILE:weight"; the file's bytes are sent as they are."""
    path_text, weight = split_weight(spec)
    path = Path(path_text).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise PromptSpecError(f"cannot read audio prompt '{path_text}': {reason}") from err
    if not data:
        raise PromptSpecError(f"audio prompt '{path_text}' is an empty file")
    return music_pb2.WeightedPrompt(audio=data, weight=weight)
