"""The Lyria RealTime wire protocol, translated to and from the cluster's ``mrt.v1`` messages.

Lyria RealTime clients (Google's ``google-genai`` and ``@google/genai`` SDKs, or any app written
against the hosted API) send JSON text frames with camelCase fields, one of:

- ``{"setup": {"model": "models/lyria-realtime-exp"}}`` first, answered by ``{"setupComplete": {}}``;
- ``{"clientContent": {"weightedPrompts": [{"text": ..., "weight": ...}]}}``;
- ``{"musicGenerationConfig": {...}}``: replaces the whole config, unset fields return to defaults;
- ``{"playbackControl": "PLAY" | "PAUSE" | "STOP" | "RESET_CONTEXT"}``.

The server sends ``{"serverContent": {"audioChunks": [{"data": <base64 PCM>, "mimeType": ...,
"sourceMetadata": ...}]}}``, ``{"filteredPrompt": {"text", "filteredReason"}}`` and
``{"warning": "..."}``. Everything here is pure translation; ``bridge`` does the I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import secrets
from typing import Any

from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2

AUDIO_MIME_TYPE = f"audio/l16;rate={facts.SAMPLE_RATE_HZ};channels={facts.CHANNELS}"

# Lyria config fields the served models have no control for: answered by a warning.
UNSUPPORTED_CONFIG_FIELDS = (
    "bpm",
    "density",
    "brightness",
    "scale",
    "muteBass",
    "muteDrums",
    "onlyBassAndDrums",
    "musicGenerationMode",
)
_SUPPORTED_CONFIG_FIELDS = ("temperature", "topK", "guidance", "seed")
# Values that mean "not set" for the unsupported fields (the SDKs may send enum defaults).
_UNSET_VALUES = (None, "SCALE_UNSPECIFIED", "MUSIC_GENERATION_MODE_UNSPECIFIED")

_PLAYBACK_ACTIONS = {
    "PLAY": music_pb2.PlaybackControl.PLAY,
    "PAUSE": music_pb2.PlaybackControl.PAUSE,
    "STOP": music_pb2.PlaybackControl.STOP,
    "RESET_CONTEXT": music_pb2.PlaybackControl.RESET_CONTEXT,
}
_PROMPT_ERROR = re.compile(r"prompts\[(\d+)\]: (.*)", re.S)

# WebSocket close codes (RFC 6455) used for errors.
CLOSE_NORMAL = 1000
CLOSE_INVALID_PAYLOAD = 1007  # a malformed or out-of-order message, an unknown model
CLOSE_POLICY = 1008  # a missing, unknown or revoked API key
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # no generator with room, the backend unreachable
_MAX_CLOSE_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes


class ProtocolError(Exception):
    """A client message this endpoint cannot accept; the socket is closed with ``code``."""

    def __init__(self, reason: str, code: int = CLOSE_INVALID_PAYLOAD):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry (UTF-8, at most 123 bytes)."""
    data = text.encode("utf-8")
    if len(data) <= _MAX_CLOSE_REASON_BYTES:
        return text
    return data[: _MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def parse_client_message(text: str | bytes) -> tuple[str, Any]:
    """A client frame -> (kind, value): kind is setup, clientContent, musicGenerationConfig or
    playbackControl. ProtocolError for anything else."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"message is not JSON: {err}") from None
    if not isinstance(message, dict) or len(message) != 1:
        raise ProtocolError(
            "a message must be a JSON object with exactly one of setup, "
            "clientContent, musicGenerationConfig, playbackControl"
        )
    ((kind, value),) = message.items()
    if kind not in ("setup", "clientContent", "musicGenerationConfig", "playbackControl"):
        raise ProtocolError(f"unknown message {kind!r}")
    return kind, value


def model_name(setup: Any, cluster_models: set[str]) -> str:
    """The cluster model a Lyria ``setup`` asks for: its name without ``models/`` when the
    cluster serves a model of that name, else "" (the cluster's default model)."""
    if not isinstance(setup, dict):
        raise ProtocolError("setup must be an object")
    requested = setup.get("model") or ""
    if not isinstance(requested, str):
        raise ProtocolError("setup.model must be a string")
    name = requested.removeprefix("models/")
    return name if name in cluster_models else ""


def playback_request(value: Any) -> music_pb2.StreamRequest:
    if value not in _PLAYBACK_ACTIONS:
        raise ProtocolError(
            f"playbackControl must be one of {', '.join(_PLAYBACK_ACTIONS)}, got {value!r}"
        )
    return music_pb2.StreamRequest(
        playback=music_pb2.PlaybackControl(action=_PLAYBACK_ACTIONS[value])
    )


@dataclasses.dataclass(frozen=True)
class PromptUpdate:
    """A translated ``clientContent``: the request, and each prompt's text for filteredPrompt."""

    request: music_pb2.StreamRequest
    texts: tuple[str, ...]
    echo: dict[str, Any]  # the prompts as chunks' sourceMetadata reports them


def prompts_request(content: Any) -> PromptUpdate:
    """``clientContent`` -> a PromptUpdate with weights normalized to sum 1, as Lyria does.

    Besides Lyria's ``text`` prompts, a prompt may carry ``audio`` (``{"data": <base64 wav /
    mp3 / ogg>}``), which this cluster's model can be steered with."""
    if not isinstance(content, dict) or not isinstance(content.get("weightedPrompts"), list):
        raise ProtocolError("clientContent must be an object with a weightedPrompts list")
    prompts = content["weightedPrompts"]
    if not prompts:
        raise ProtocolError("weightedPrompts must hold at least one prompt")
    weights, sources, texts = [], [], []
    for index, prompt in enumerate(prompts):
        where = f"weightedPrompts[{index}]"
        if not isinstance(prompt, dict):
            raise ProtocolError(f"{where} must be an object")
        weight = prompt.get("weight", 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ProtocolError(f"{where}.weight must be a number > 0, got {weight!r}")
        if isinstance(prompt.get("text"), str):
            sources.append({"text": prompt["text"]})
            texts.append(prompt["text"])
        elif isinstance(prompt.get("audio"), dict) and isinstance(prompt["audio"].get("data"), str):
            try:
                audio = base64.b64decode(prompt["audio"]["data"], validate=True)
            except ValueError:
                raise ProtocolError(f"{where}.audio.data is not base64") from None
            sources.append({"audio": audio})
            texts.append(prompt["audio"].get("name", f"audio prompt {index}"))
        else:
            raise ProtocolError(f"{where} needs a text (or an audio object with base64 data)")
        weights.append(float(weight))
    total = sum(weights)
    normalized = [w / total for w in weights]
    request = music_pb2.StreamRequest(
        prompts=music_pb2.PromptUpdate(
            prompts=[
                music_pb2.WeightedPrompt(weight=w, **source)
                for w, source in zip(normalized, sources)
            ]
        )
    )
    echo = {"weightedPrompts": [{"text": text, "weight": w} for text, w in zip(texts, normalized)]}
    return PromptUpdate(request, tuple(texts), echo)


@dataclasses.dataclass(frozen=True)
class ConfigUpdate:
    request: music_pb2.StreamRequest
    unsupported: tuple[str, ...]  # fields set that the model cannot honour
    echo: dict[str, Any]  # the config as chunks' sourceMetadata reports it


def config_request(config: Any) -> ConfigUpdate:
    """``musicGenerationConfig`` -> a complete GenerationConfig: Lyria replaces the whole
    config, so unset fields go back to their defaults (an unset seed becomes a new random one).
    Values out of the model's range are refused by the gateway (answered by a warning)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ProtocolError("musicGenerationConfig must be an object")
    unknown = sorted(set(config) - set(_SUPPORTED_CONFIG_FIELDS) - set(UNSUPPORTED_CONFIG_FIELDS))
    if unknown:
        raise ProtocolError(f"musicGenerationConfig has unknown field(s) {', '.join(unknown)}")
    unsupported = tuple(
        name for name in UNSUPPORTED_CONFIG_FIELDS if config.get(name) not in _UNSET_VALUES
    )
    values = {
        "temperature": config.get("temperature", facts.DEFAULT_TEMPERATURE),
        "topK": config.get("topK", facts.DEFAULT_TOP_K),
        "guidance": config.get("guidance", facts.DEFAULT_GUIDANCE),
        "seed": config.get("seed", secrets.randbits(31)),
    }
    for name in ("temperature", "guidance"):
        if isinstance(values[name], bool) or not isinstance(values[name], (int, float)):
            raise ProtocolError(f"musicGenerationConfig.{name} must be a number")
    for name in ("topK", "seed"):
        if isinstance(values[name], bool) or not isinstance(values[name], int):
            raise ProtocolError(f"musicGenerationConfig.{name} must be an integer")
    if not -(2**63) <= values["seed"] < 2**63 or not -(2**31) <= values["topK"] < 2**31:
        raise ProtocolError("musicGenerationConfig.seed or topK is out of range")
    request = music_pb2.StreamRequest(
        config=music_pb2.GenerationConfig(
            temperature=values["temperature"],
            top_k=values["topK"],
            guidance=values["guidance"],
            seed=values["seed"],
        )
    )
    echo = {name: config[name] for name in _SUPPORTED_CONFIG_FIELDS if name in config}
    return ConfigUpdate(request, unsupported, echo)


def unsupported_warning(fields: tuple[str, ...]) -> dict[str, Any]:
    return {
        "warning": f"this model cannot honour {', '.join(fields)}; "
        f"{'it is' if len(fields) == 1 else 'they are'} ignored"
    }


def setup_complete() -> dict[str, Any]:
    return {"setupComplete": {}}


def audio_message(
    chunk: music_pb2.AudioChunk, source_metadata: dict[str, Any] | None
) -> dict[str, Any]:
    audio: dict[str, Any] = {
        "data": base64.b64encode(chunk.data).decode("ascii"),
        "mimeType": AUDIO_MIME_TYPE,
    }
    if source_metadata:
        audio["sourceMetadata"] = source_metadata
    return {"serverContent": {"audioChunks": [audio]}}


def prompt_status_messages(
    status: music_pb2.PromptStatus, texts: tuple[str, ...]
) -> list[dict[str, Any]]:
    """A refused prompt update -> one filteredPrompt per refused prompt (or one for the update
    when no single prompt is to blame); an accepted one needs no message."""
    if status.accepted:
        return []
    messages = []
    for error in status.prompt_errors:
        match = _PROMPT_ERROR.fullmatch(error)
        index = int(match.group(1)) if match else -1
        text = texts[index] if 0 <= index < len(texts) else ""
        messages.append(
            {"filteredPrompt": {"text": text, "filteredReason": match.group(2) if match else error}}
        )
    if not messages:
        messages.append(
            {"filteredPrompt": {"text": "; ".join(texts), "filteredReason": status.message}}
        )
    return messages


def warning_message(warning: music_pb2.Warning) -> dict[str, Any]:
    return {"warning": f"{warning.code}: {warning.message}"}
