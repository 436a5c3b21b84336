from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionSnapshot(_message.Message):
    __slots__ = ("context_tokens", "crossfade_tail", "chunk_index")
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CROSSFADE_TAIL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    context_tokens: bytes
    crossfade_tail: bytes
    chunk_index: int
    def __init__(self, context_tokens: _Optional[bytes] = ..., crossfade_tail: _Optional[bytes] = ..., chunk_index: _Optional[int] = ...) -> None: ...

class Style(_message.Message):
    __slots__ = ("embedding", "version")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    version: int
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., version: _Optional[int] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "guidance", "seed", "version")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    guidance: float
    seed: int
    version: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("session_id", "model", "resume_from", "style", "sampling", "chunk_frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    resume_from: SessionSnapshot
    style: Style
    sampling: Sampling
    chunk_frames: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., resume_from: _Optional[_Union[SessionSnapshot, _Mapping]] = ..., style: _Optional[_Union[Style, _Mapping]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., chunk_frames: _Optional[int] = ...) -> None: ...

class PrimeContext(_message.Message):
    __slots__ = ("audio",)
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    def __init__(self, audio: _Optional[bytes] = ...) -> None: ...

class InjectAudio(_message.Message):
    __slots__ = ("mix",)
    MIX_FIELD_NUMBER: _ClassVar[int]
    mix: bytes
    def __init__(self, mix: _Optional[bytes] = ...) -> None: ...

class ChunkDemand(_message.Message):
    __slots__ = ("deadline_unix_s",)
    DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    deadline_unix_s: float
    def __init__(self, deadline_unix_s: _Optional[float] = ...) -> None: ...

class ResetContext(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GeneratorRequest(_message.Message):
    __slots__ = ("open", "style", "sampling", "demand", "reset", "inject", "prime")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    INJECT_FIELD_NUMBER: _ClassVar[int]
    PRIME_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    style: Style
    sampling: Sampling
    demand: ChunkDemand
    reset: ResetContext
    inject: InjectAudio
    prime: PrimeContext
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., style: _Optional[_Union[Style, _Mapping]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., demand: _Optional[_Union[ChunkDemand, _Mapping]] = ..., reset: _Optional[_Union[ResetContext, _Mapping]] = ..., inject: _Optional[_Union[InjectAudio, _Mapping]] = ..., prime: _Optional[_Union[PrimeContext, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "model", "sample_rate", "channels", "chunk_seconds", "generator_id", "audio_input_supported")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    sample_rate: int
    channels: int
    chunk_seconds: float
    generator_id: str
    audio_input_supported: bool
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., chunk_seconds: _Optional[float] = ..., generator_id: _Optional[str] = ..., audio_input_supported: _Optional[bool] = ...) -> None: ...

class GeneratedChunk(_message.Message):
    __slots__ = ("chunk_index", "audio", "snapshot", "style_version", "sampling_version", "queue_wait_seconds", "generation_seconds", "batch_size")
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STYLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    chunk_index: int
    audio: bytes
    snapshot: SessionSnapshot
    style_version: int
    sampling_version: int
    queue_wait_seconds: float
    generation_seconds: float
    batch_size: int
    def __init__(self, chunk_index: _Optional[int] = ..., audio: _Optional[bytes] = ..., snapshot: _Optional[_Union[SessionSnapshot, _Mapping]] = ..., style_version: _Optional[int] = ..., sampling_version: _Optional[int] = ..., queue_wait_seconds: _Optional[float] = ..., generation_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class GeneratorResponse(_message.Message):
    __slots__ = ("opened", "chunk")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    chunk: GeneratedChunk
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., chunk: _Optional[_Union[GeneratedChunk, _Mapping]] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("generator_id", "model", "active_sessions", "capacity_sessions", "free_slots", "recent_real_time_factor", "draining", "max_batch_size")
    GENERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    generator_id: str
    model: str
    active_sessions: int
    capacity_sessions: int
    free_slots: int
    recent_real_time_factor: float
    draining: bool
    max_batch_size: int
    def __init__(self, generator_id: _Optional[str] = ..., model: _Optional[str] = ..., active_sessions: _Optional[int] = ..., capacity_sessions: _Optional[int] = ..., free_slots: _Optional[int] = ..., recent_real_time_factor: _Optional[float] = ..., draining: _Optional[bool] = ..., max_batch_size: _Optional[int] = ...) -> None: ...
