from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PCM_S16LE: _ClassVar[AudioEncoding]
    PCM_F32LE: _ClassVar[AudioEncoding]
    OGG_OPUS: _ClassVar[AudioEncoding]
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding
OGG_OPUS: AudioEncoding

class StreamRequest(_message.Message):
    __slots__ = ("setup", "prompts", "config", "playback", "report", "audio_input")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_FIELD_NUMBER: _ClassVar[int]
    setup: SessionSetup
    prompts: PromptUpdate
    config: GenerationConfig
    playback: PlaybackControl
    report: ClientReport
    audio_input: AudioInput
    def __init__(self, setup: _Optional[_Union[SessionSetup, _Mapping]] = ..., prompts: _Optional[_Union[PromptUpdate, _Mapping]] = ..., config: _Optional[_Union[GenerationConfig, _Mapping]] = ..., playback: _Optional[_Union[PlaybackControl, _Mapping]] = ..., report: _Optional[_Union[ClientReport, _Mapping]] = ..., audio_input: _Optional[_Union[AudioInput, _Mapping]] = ...) -> None: ...

class SessionSetup(_message.Message):
    __slots__ = ("model", "encoding", "opus_bitrate", "initial_audio", "resume_token", "resume_from_sequence", "chunk_frames")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OPUS_BITRATE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_AUDIO_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    encoding: AudioEncoding
    opus_bitrate: int
    initial_audio: bytes
    resume_token: str
    resume_from_sequence: int
    chunk_frames: int
    def __init__(self, model: _Optional[str] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., opus_bitrate: _Optional[int] = ..., initial_audio: _Optional[bytes] = ..., resume_token: _Optional[str] = ..., resume_from_sequence: _Optional[int] = ..., chunk_frames: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class WeightedPrompt(_message.Message):
    __slots__ = ("text", "audio", "embedding", "weight")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    text: str
    audio: bytes
    embedding: Embedding
    weight: float
    def __init__(self, text: _Optional[str] = ..., audio: _Optional[bytes] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class PromptUpdate(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[WeightedPrompt]
    def __init__(self, prompts: _Optional[_Iterable[_Union[WeightedPrompt, _Mapping]]] = ...) -> None: ...

class GenerationConfig(_message.Message):
    __slots__ = ("temperature", "top_k", "guidance", "seed", "input_feedback", "input_gap_ms", "input_offset_ms", "input_style_weight")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    INPUT_GAP_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    guidance: float
    seed: int
    input_feedback: float
    input_gap_ms: float
    input_offset_ms: float
    input_style_weight: float
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., input_feedback: _Optional[float] = ..., input_gap_ms: _Optional[float] = ..., input_offset_ms: _Optional[float] = ..., input_style_weight: _Optional[float] = ...) -> None: ...

class PlaybackControl(_message.Message):
    __slots__ = ("action",)
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[PlaybackControl.Action]
        PLAY: _ClassVar[PlaybackControl.Action]
        PAUSE: _ClassVar[PlaybackControl.Action]
        STOP: _ClassVar[PlaybackControl.Action]
        RESET_CONTEXT: _ClassVar[PlaybackControl.Action]
    ACTION_UNSPECIFIED: PlaybackControl.Action
    PLAY: PlaybackControl.Action
    PAUSE: PlaybackControl.Action
    STOP: PlaybackControl.Action
    RESET_CONTEXT: PlaybackControl.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: PlaybackControl.Action
    def __init__(self, action: _Optional[_Union[PlaybackControl.Action, str]] = ...) -> None: ...

class AudioInput(_message.Message):
    __slots__ = ("data", "encoding", "sample_rate", "channels", "start_seconds")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: AudioEncoding
    sample_rate: int
    channels: int
    start_seconds: float
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., start_seconds: _Optional[float] = ...) -> None: ...

class ClientReport(_message.Message):
    __slots__ = ("played_seconds", "underruns", "buffered_seconds")
    PLAYED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNDERRUNS_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    played_seconds: float
    underruns: int
    buffered_seconds: float
    def __init__(self, played_seconds: _Optional[float] = ..., underruns: _Optional[int] = ..., buffered_seconds: _Optional[float] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("started", "chunk", "prompt_status", "warning")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_STATUS_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    chunk: AudioChunk
    prompt_status: PromptStatus
    warning: Warning
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., chunk: _Optional[_Union[AudioChunk, _Mapping]] = ..., prompt_status: _Optional[_Union[PromptStatus, _Mapping]] = ..., warning: _Optional[_Union[Warning, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "model", "sample_rate", "channels", "chunk_seconds", "encoding", "buffer_ahead_seconds", "opus_bitrate", "audio_input_supported", "resume_token", "resumed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BUFFER_AHEAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPUS_BITRATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    sample_rate: int
    channels: int
    chunk_seconds: float
    encoding: AudioEncoding
    buffer_ahead_seconds: float
    opus_bitrate: int
    audio_input_supported: bool
    resume_token: str
    resumed: bool
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., chunk_seconds: _Optional[float] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., buffer_ahead_seconds: _Optional[float] = ..., opus_bitrate: _Optional[int] = ..., audio_input_supported: _Optional[bool] = ..., resume_token: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("sequence", "data", "start_seconds", "duration_seconds", "prompt_version", "config_version")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    start_seconds: float
    duration_seconds: float
    prompt_version: int
    config_version: int
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ..., start_seconds: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., prompt_version: _Optional[int] = ..., config_version: _Optional[int] = ...) -> None: ...

class PromptStatus(_message.Message):
    __slots__ = ("accepted", "message", "version", "prompt_errors")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    version: int
    prompt_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ..., version: _Optional[int] = ..., prompt_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class Warning(_message.Message):
    __slots__ = ("code", "message", "resume_token")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    resume_token: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., resume_token: _Optional[str] = ...) -> None: ...

class EmbedStyleRequest(_message.Message):
    __slots__ = ("text", "audio")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    text: str
    audio: bytes
    def __init__(self, text: _Optional[str] = ..., audio: _Optional[bytes] = ...) -> None: ...

class EmbedStyleResponse(_message.Message):
    __slots__ = ("embedding",)
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "loaded", "available", "sample_rate", "chunk_seconds", "channels", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    loaded: bool
    available: bool
    sample_rate: int
    chunk_seconds: float
    channels: int
    description: str
    def __init__(self, name: _Optional[str] = ..., loaded: _Optional[bool] = ..., available: _Optional[bool] = ..., sample_rate: _Optional[int] = ..., chunk_seconds: _Optional[float] = ..., channels: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...
