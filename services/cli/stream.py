"""``mrt stream``: open one music session on the gateway and record it to a WAV or .opus file.

The request side is a queue that stays open while audio arrives (a server may treat a
half-closed stream as the listener leaving); it is closed, and the call cancelled, once the
last chunk asked for has been written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import queue
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import grpc

from services.cli.connection import add_connection_options, call_metadata, open_channel
from services.cli.live_input import InputStreamer, read_input_file
from services.cli.options import (
    CommandFailed,
    UsageError,
    add_env_option,
    positive_float,
    user_input_type,
)
from services.cli.prompts import audio_prompt, text_prompt
from services.cli.wavfile import OpusFileWriter, WavWriter
from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

# Chunk durations are floats: treat "within a microsecond of the target" as reaching it.
_SECONDS_TOLERANCE = 1e-6
# --encoding: what the file holds.
ENCODINGS = {"pcm_s16le": music_pb2.PCM_S16LE, "ogg_opus": music_pb2.OGG_OPUS}


class StreamFailed(CommandFailed):
    """The server's stream did not follow the protocol (or ended early)."""


@dataclasses.dataclass
class StreamSummary:
    session_id: str
    chunks: int
    seconds: float
    time_to_first_audio_s: float | None
    reconnects: int = 0  # streams resumed after a loss or a RECONNECT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stream",
        help="stream music from the gateway into a WAV or .opus file",
        description="Open a session, send the prompts and settings, press PLAY, and write "
        "--seconds of audio (rounded up to whole chunks) to a 48 kHz stereo WAV "
        "(or, with --encoding ogg_opus, an Ogg Opus file).",
    )
    add_connection_options(parser)
    parser.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        type=user_input_type(text_prompt),
        metavar="TEXT[:WEIGHT]",
        help="a text prompt, optionally weighted (repeatable)",
    )
    parser.add_argument(
        "--audio-prompt",
        dest="prompts",
        action="append",
        type=user_input_type(audio_prompt),
        metavar="FILE[:WEIGHT]",
        help="a wav / mp3 / ogg file as a prompt, optionally weighted (repeatable)",
    )
    parser.add_argument(
        "--seconds",
        type=user_input_type(positive_float),
        default=20.0,
        help="how much audio to record (default 20)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mrt_stream.wav"),
        help="file to write (default mrt_stream.wav)",
    )
    parser.add_argument(
        "--encoding",
        choices=sorted(ENCODINGS),
        default="pcm_s16le",
        help="audio the server sends and the file holds: pcm_s16le (a WAV, the "
        "default) or ogg_opus (the stream as the server encodes it)",
    )
    parser.add_argument(
        "--opus-bitrate",
        type=int,
        default=0,
        metavar="BPS",
        help="ogg_opus bits per second, 6000-510000 (default: the server's, 128000)",
    )
    add_env_option(
        parser,
        "--chunk-frames",
        type=user_input_type(chunk_frames),
        default=0,
        metavar="N",
        help="codec frames (40 ms each) per chunk, 5-50; shorter chunks let a prompt change be "
        "heard sooner and cost more compute (0: the server's default, 50 = 2 s)",
    )
    parser.add_argument("--model", default="", help="model to use (default: the cluster's)")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0-4")
    parser.add_argument("--top-k", type=int, help="top-k cut, 0-1024 (0: none)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance weight, 0-10")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument(
        "--initial-audio",
        type=Path,
        metavar="FILE",
        help="a wav / mp3 / ogg file whose last 10 s seed the context: the music continues from it",
    )
    parser.add_argument(
        "--input-audio",
        type=Path,
        metavar="FILE",
        help="a wav / mp3 / ogg file streamed as live input in real time; the "
        "model plays along with it",
    )
    parser.add_argument(
        "--input-lead-seconds",
        type=float,
        default=4.0,
        help="how far ahead of playback --input-audio is sent (default 4; a file "
        "can be early, so the model hears it with the output it meets; 0 "
        "sends it like a live microphone)",
    )
    parser.add_argument(
        "--input-feedback",
        type=float,
        help="share of the model's own output mixed with the input, 0-1",
    )
    parser.add_argument(
        "--input-gap-ms",
        type=float,
        help="the newest input of each mix is silenced this long, 0-2000 ms",
    )
    parser.add_argument(
        "--input-offset-ms",
        type=float,
        help="input is mixed with the output this much later, -2000-8000 ms",
    )
    parser.add_argument(
        "--input-style-weight",
        type=float,
        help="weight of the newest 10 s of input as a style prompt, 0-10",
    )
    parser.set_defaults(run=run, prompts=[])


def run(args: argparse.Namespace) -> int:
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: directory {args.out.parent} does not exist")
    if args.opus_bitrate and args.encoding != "ogg_opus":
        raise UsageError("--opus-bitrate needs --encoding ogg_opus")
    config_fields = {
        name: getattr(args, name)
        for name in (
            "temperature",
            "top_k",
            "guidance",
            "seed",
            "input_feedback",
            "input_gap_ms",
            "input_offset_ms",
            "input_style_weight",
        )
        if getattr(args, name) is not None
    }
    if args.input_lead_seconds < 0:
        raise UsageError("--input-lead-seconds must be >= 0")
    initial_audio = _read_file(args.initial_audio, "--initial-audio") if args.initial_audio else b""
    input_audio = (
        read_input_file(_read_file(args.input_audio, "--input-audio")) if args.input_audio else None
    )
    with open_channel(args) as channel:
        summary = stream_to_file(
            music_pb2_grpc.MusicGenerationStub(channel),
            seconds=args.seconds,
            out_path=args.out,
            setup=music_pb2.SessionSetup(
                model=args.model,
                encoding=ENCODINGS[args.encoding],
                opus_bitrate=args.opus_bitrate,
                initial_audio=initial_audio,
                chunk_frames=args.chunk_frames,
            ),
            input_audio=input_audio,
            input_lead_s=args.input_lead_seconds,
            prompts=args.prompts,
            config=music_pb2.GenerationConfig(**config_fields) if config_fields else None,
            metadata=call_metadata(args.api_key),
        )
    first_audio = (
        f"; first audio after {summary.time_to_first_audio_s:.2f} s"
        if summary.time_to_first_audio_s is not None
        else ""
    )
    reconnects = f"; resumed {summary.reconnects} time(s)" if summary.reconnects else ""
    print(
        f"wrote {summary.seconds:.2f} s ({summary.chunks} chunks) of session "
        f"{summary.session_id} to {args.out}{first_audio}{reconnects}",
        file=sys.stderr,
    )
    return 0


def chunk_frames(text: str) -> int:
    """--chunk-frames: 0 (the default) or 5-50, checked here so a typo fails before connecting."""
    value = int(text)
    facts.session_chunk_frames(value)  # raises ValueError, which argparse reports
    return value


def _read_file(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror}") from None


class _RequestQueue:
    """The request side of the stream: messages are put in, and it ends only when closed."""

    _CLOSED = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def put(self, request: music_pb2.StreamRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._CLOSED)

    def __iter__(self) -> Iterator[music_pb2.StreamRequest]:
        while (item := self._queue.get()) is not self._CLOSED:
            yield item


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per chunk otherwise."""

    def __init__(self, out: TextIO):
        self._out = out
        self._in_place = out.isatty()
        self._line_open = False

    def update(self, text: str) -> None:
        if self._in_place:
            self._out.write("\r\033[K" + text)
            self._line_open = True
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        """A message that stays on screen (warnings, prompt status)."""
        self.finish()
        self._out.write(text + "\n")
        self._out.flush()

    def finish(self) -> None:
        if self._line_open:
            self._out.write("\n")
            self._line_open = False


# Codes that mean the stream (or its gateway) was lost, not that the request was wrong: the
# session is resumed with its token.
_RESUMABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# Reconnect backoff: the first retry waits this long, each next one twice as long, up to the cap.
RECONNECT_BACKOFF_S = 0.1
RECONNECT_BACKOFF_CAP_S = 2.0


class _Reconnect(Exception):
    """The gateway asked the client to move (RECONNECT): resume on a new stream now."""


def stream_to_file(
    stub: music_pb2_grpc.MusicGenerationStub,
    *,
    seconds: float,
    out_path: Path | str,
    setup: music_pb2.SessionSetup,
    prompts: Sequence[music_pb2.WeightedPrompt] = (),
    config: music_pb2.GenerationConfig | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    progress_out: TextIO | None = None,
    input_audio=None,
    input_lead_s: float = 4.0,
    max_reconnects: int = 10,
) -> StreamSummary:
    """Record `seconds` of a new session (rounded up to whole chunks) into `out_path`: a WAV
    for PCM_S16LE, the Ogg Opus stream itself for OGG_OPUS (`setup.encoding`).

    Sends setup, prompts (if any), config (if any) and PLAY, then writes chunks as they come;
    progress, warnings and prompt status go to `progress_out` (default: stderr).
    `input_audio` (float32[n, 2] at 48 kHz) is streamed as live input in real time from
    PLAY on, `input_lead_s` ahead of playback.

    A lost stream, or a gateway that asks the client to move (warning RECONNECT), is resumed
    on a new stream with the session's resume token, from the chunk after the last one
    written: the file has no gap and no repeat. Up to `max_reconnects` failed attempts in a
    row, with exponential backoff. With OGG_OPUS each resumed stream starts a new Ogg stream,
    so the file is a chained Ogg Opus file.
    Raises grpc.RpcError when the call fails for good and StreamFailed when the server breaks
    the protocol; audio received before a failure stays in the file.
    """
    recorder = _Recorder(seconds, out_path, setup.encoding, _Progress(progress_out or sys.stderr))
    recorder.requests.put(music_pb2.StreamRequest(setup=setup))
    if prompts:
        recorder.requests.put(
            music_pb2.StreamRequest(prompts=music_pb2.PromptUpdate(prompts=prompts))
        )
    if config is not None:
        recorder.requests.put(music_pb2.StreamRequest(config=config))
    # Live input starts with PLAY, its first piece just before it: the gateway then knows the
    # session plays along before it demands the first chunks, and mixes input into them. It
    # follows the session onto each new stream.
    streamer = (
        InputStreamer(
            input_audio, lambda request: recorder.requests.put(request), lead_s=input_lead_s
        )
        if input_audio is not None
        else None
    )
    if streamer is not None:
        streamer.start()
    recorder.requests.put(
        music_pb2.StreamRequest(
            playback=music_pb2.PlaybackControl(action=music_pb2.PlaybackControl.PLAY)
        )
    )
    failures = 0
    try:
        while True:
            if recorder.token:  # a resume: the session keeps its prompts, config and playback
                requests = recorder.open_requests(
                    [
                        music_pb2.StreamRequest(
                            setup=music_pb2.SessionSetup(
                                resume_token=recorder.token, resume_from_sequence=recorder.chunks
                            )
                        )
                    ]
                )
            else:
                requests = iter(recorder.requests)
            try:
                if recorder.record(stub.Stream(requests, metadata=tuple(metadata))):
                    break
                failures = 0
            except grpc.RpcError as err:
                if (
                    not recorder.token
                    or err.code() not in _RESUMABLE_CODES
                    or failures >= max_reconnects
                ):
                    raise
                delay_s = min(RECONNECT_BACKOFF_CAP_S, RECONNECT_BACKOFF_S * 2**failures)
                failures = 0 if recorder.progressed else failures + 1
                recorder.reconnects += 1
                recorder.progress.note(
                    f"stream lost ({err.code().name}); resuming at chunk "
                    f"{recorder.chunks} in {delay_s:.1f} s"
                )
                time.sleep(delay_s)
    except BaseException:
        if recorder.writer is not None and recorder.writer.frames_written:
            recorder.progress.note(
                f"kept the {recorder.writer.seconds_written:.2f} s received in {out_path}"
            )
        raise
    finally:
        recorder.progress.finish()
        if streamer is not None:
            streamer.stop()
        recorder.close()
    return StreamSummary(
        session_id=recorder.session_id,
        chunks=recorder.chunks,
        seconds=recorder.writer.seconds_written if recorder.writer else 0.0,
        time_to_first_audio_s=recorder.first_audio_s,
        reconnects=recorder.reconnects,
    )


class _Recorder:
    """Writes one session's chunks to a file, across the streams that carry it."""

    def __init__(self, seconds: float, out_path: Path | str, encoding: int, progress: _Progress):
        self.seconds = seconds
        self.out_path = out_path
        self.encoding = encoding
        self.progress = progress
        self.started_s = time.monotonic()
        self.writer: WavWriter | OpusFileWriter | None = None
        self.requests = _RequestQueue()
        self.call = None
        self.session_id = ""
        self.token = ""
        self.chunks = 0  # written so far: the sequence of the next chunk needed
        self.planned_chunks = 0
        self.first_audio_s: float | None = None
        self.reconnects = 0
        self.progressed = False  # the current stream delivered audio
        self._format: music_pb2.SessionStarted | None = None

    def open_requests(
        self, requests: list[music_pb2.StreamRequest]
    ) -> Iterator[music_pb2.StreamRequest]:
        """A fresh request queue holding ``requests`` (the previous stream's is closed)."""
        self.requests.close()
        self.requests = _RequestQueue()
        for request in requests:
            self.requests.put(request)
        return iter(self.requests)

    def record(self, call) -> bool:
        """Write what ``call`` delivers; True once enough audio is written, False to resume
        elsewhere (RECONNECT). Raises StreamFailed when the server ends the stream early."""
        if self.call is not None:
            self.call.cancel()
        self.call, self.progressed = call, False
        for response in call:
            kind = response.WhichOneof("response")
            if kind == "started":
                self._started(response.started)
            elif kind == "chunk":
                if self._write(response.chunk):
                    return True
            elif kind == "prompt_status":
                self.progress.note(_describe_prompt_status(response.prompt_status))
            elif kind == "warning":
                warning = response.warning
                self.progress.note(f"warning [{warning.code}]: {warning.message}")
                if warning.code == "RECONNECT" and self.token:
                    self.reconnects += 1
                    return False
        received = self.writer.seconds_written if self.writer else 0.0
        raise StreamFailed(
            f"server ended the stream after {received:.2f} s of audio, "
            f"before the {self.seconds:g} s asked for"
        )

    def _started(self, started: music_pb2.SessionStarted) -> None:
        if started.encoding != self.encoding:
            raise StreamFailed(
                f"server chose encoding "
                f"{music_pb2.AudioEncoding.Name(started.encoding)}, "
                f"expected {music_pb2.AudioEncoding.Name(self.encoding)}"
            )
        if not started.chunk_seconds > 0 or started.sample_rate <= 0:
            raise StreamFailed(f"server announced an unusable format: {started}")
        self.token = started.resume_token or self.token
        if started.resumed:
            self.progress.note(f"session {started.session_id} resumed at chunk {self.chunks}")
            return
        self.session_id = started.session_id
        self.planned_chunks = math.ceil(self.seconds / started.chunk_seconds - _SECONDS_TOLERANCE)
        self.progress.note(
            f"session {self.session_id}: model {started.model}, "
            f"{started.sample_rate} Hz, {started.channels} channels, "
            f"{started.chunk_seconds:g} s chunks"
        )
        self._format = started

    def _write(self, chunk: music_pb2.AudioChunk) -> bool:
        if self._format is None:
            raise StreamFailed("server sent audio before 'started'")
        if chunk.sequence < self.chunks:
            return False  # already written (a resume asked for it again): never repeat it
        if chunk.sequence != self.chunks:
            self.progress.note(
                f"warning: chunk sequence {chunk.sequence} where {self.chunks} was expected"
            )
        if self.writer is None:  # created on the first chunk: no audio, no file
            self.writer = (
                OpusFileWriter(self.out_path)
                if self.encoding == music_pb2.OGG_OPUS
                else WavWriter(
                    self.out_path,
                    sample_rate_hz=self._format.sample_rate,
                    channels=self._format.channels,
                )
            )
        self.writer.write_chunk(chunk)
        self.chunks = chunk.sequence + 1
        self.progressed = True
        if self.first_audio_s is None:
            self.first_audio_s = time.monotonic() - self.started_s
        self.progress.update(
            f"chunk {self.chunks}/{self.planned_chunks}  "
            f"{self.writer.seconds_written:.1f}/{self.seconds:g} s received  "
            f"first audio after {self.first_audio_s:.2f} s"
        )
        return self.writer.seconds_written >= self.seconds - _SECONDS_TOLERANCE

    def close(self) -> None:
        self.requests.close()
        if self.call is not None:
            self.call.cancel()
        if self.writer is not None:
            self.writer.close()


def _describe_prompt_status(status: music_pb2.PromptStatus) -> str:
    if status.accepted:
        detail = f": {status.message}" if status.message else ""
        return f"prompts accepted (version {status.version}){detail}"
    errors = "".join(f"\n  {error}" for error in status.prompt_errors)
    return f"prompts refused: {status.message or 'no reason given'}{errors}"
