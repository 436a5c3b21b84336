"""`mrt stream`, `mrt embed` and `mrt models` against an in-test MusicGeneration server."""

import json
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile

from services.cli.main import main
from services.common import model_facts as facts
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc

TLS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "cli_tls"
MAX_CHUNKS = 50  # the fake never streams forever, even if a client forgets to cancel


def chunk_samples(sequence: int) -> np.ndarray:
    """The int16[96000, 2] audio of chunk `sequence`, different for every chunk."""
    rng = np.random.default_rng(sequence)
    return rng.integers(-32768, 32767, size=(facts.CHUNK_SAMPLES, 2), dtype=np.int16)


class FakeMusicGeneration(music_pb2_grpc.MusicGenerationServicer):
    """Records what clients send; streams numbered chunks as fast as the client reads them."""

    def __init__(self):
        self.requests: list[music_pb2.StreamRequest] = []
        self.metadata: dict[str, str] = {}
        self.abort_after_chunks: tuple[int, grpc.StatusCode, str] | None = None
        self.end_after_chunks: int | None = None
        self.chunks_sent = 0
        self.request_side_ended_after_chunks: int | None = None
        self.request_side_ended = threading.Event()
        self.embed_requests: list[music_pb2.EmbedStyleRequest] = []

    def Stream(self, request_iterator, context):
        self.metadata = dict(context.invocation_metadata())
        for request in request_iterator:
            self.requests.append(request)
            if request.WhichOneof("request") == "setup":
                yield music_pb2.StreamResponse(
                    started=music_pb2.SessionStarted(
                        session_id="s-1",
                        model=request.setup.model or "tiny",
                        sample_rate=facts.SAMPLE_RATE_HZ,
                        channels=facts.CHANNELS,
                        chunk_seconds=facts.CHUNK_SECONDS,
                        encoding=request.setup.encoding,
                    )
                )
            if request.WhichOneof("request") == "prompts":
                yield music_pb2.StreamResponse(
                    prompt_status=music_pb2.PromptStatus(accepted=True, version=1)
                )
            if request.playback.action == music_pb2.PlaybackControl.PLAY:
                break
        threading.Thread(target=self._drain_requests, args=(request_iterator,)).start()
        yield music_pb2.StreamResponse(
            warning=music_pb2.Warning(code="SESSION_MIGRATED", message="moved to generator-1")
        )
        for sequence in range(MAX_CHUNKS):
            if self.end_after_chunks == sequence:
                return
            if self.abort_after_chunks and self.abort_after_chunks[0] == sequence:
                context.abort(*self.abort_after_chunks[1:])
            self.chunks_sent = sequence + 1
            yield music_pb2.StreamResponse(
                chunk=music_pb2.AudioChunk(
                    sequence=sequence,
                    data=chunk_samples(sequence).astype("<i2").tobytes(),
                    start_seconds=sequence * facts.CHUNK_SECONDS,
                    duration_seconds=facts.CHUNK_SECONDS,
                )
            )

    def _drain_requests(self, request_iterator):
        try:
            for request in request_iterator:
                self.requests.append(request)
        except Exception:  # a cancelled call ends the request side with an error: same meaning
            pass
        self.request_side_ended_after_chunks = self.chunks_sent
        self.request_side_ended.set()

    def EmbedStyle(self, request, context):
        self.metadata = dict(context.invocation_metadata())
        self.embed_requests.append(request)
        if request.text == "refuse me":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text must not be empty")
        return music_pb2.EmbedStyleResponse(
            embedding=np.linspace(-1, 1, facts.STYLE_EMBEDDING_DIM, dtype=np.float32)
        )

    def ListModels(self, request, context):
        return music_pb2.ListModelsResponse(
            default_model="tiny",
            models=[
                music_pb2.ModelInfo(
                    name="tiny",
                    loaded=True,
                    available=True,
                    sample_rate=48_000,
                    chunk_seconds=2.0,
                    channels=2,
                    description="offline default",
                ),
                music_pb2.ModelInfo(
                    name="large",
                    loaded=False,
                    available=False,
                    sample_rate=48_000,
                    chunk_seconds=2.0,
                    channels=2,
                    description="upstream large",
                ),
            ],
        )


def _serve(servicer, credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    music_pb2_grpc.add_MusicGenerationServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fake():
    servicer = FakeMusicGeneration()
    server, address = _serve(servicer)
    servicer.address = address
    yield servicer
    server.stop(grace=None)


def _kinds(requests):
    return [r.WhichOneof("request") for r in requests]


def test_stream_sends_the_session_and_writes_the_chunks_received(fake, tmp_path, capsys):
    clip = tmp_path / "clip.ogg"
    clip.write_bytes(b"OggS not really")
    out = tmp_path / "disco.wav"
    code = main(
        [
            "stream",
            "--address",
            fake.address,
            "--api-key",
            "k-123",
            "--model",
            "base",
            "--prompt",
            "disco:0.7",
            "--audio-prompt",
            f"{clip}:0.2",
            "--prompt",
            "funk",
            "--temperature",
            "1.3",
            "--top-k",
            "30",
            "--guidance",
            "4",
            "--seed",
            "7",
            "--seconds",
            "5",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err

    setup, prompts, config, playback = fake.requests[:4]
    assert _kinds(fake.requests[:4]) == ["setup", "prompts", "config", "playback"]
    assert setup.setup == music_pb2.SessionSetup(model="base", encoding=music_pb2.PCM_S16LE)
    sent = prompts.prompts.prompts
    assert [p.WhichOneof("source") for p in sent] == ["text", "audio", "text"]
    assert (sent[0].text, sent[1].audio, sent[2].text) == ("disco", b"OggS not really", "funk")
    assert sent[0].weight == pytest.approx(0.7) and sent[1].weight == pytest.approx(0.2)
    assert not sent[2].HasField("weight")
    assert config.config.temperature == pytest.approx(1.3)
    assert (config.config.top_k, config.config.guidance, config.config.seed) == (30, 4.0, 7)
    assert playback.playback.action == music_pb2.PlaybackControl.PLAY
    assert fake.metadata["authorization"] == "Bearer k-123"

    # 5 s rounds up to 3 whole chunks; the request side stayed open until then.
    assert fake.request_side_ended.wait(10)
    assert fake.request_side_ended_after_chunks >= 3
    assert len(fake.requests) == 4
    info = soundfile.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (48_000, 2, "PCM_16")
    audio, _ = soundfile.read(out, dtype="int16")
    np.testing.assert_array_equal(audio, np.concatenate([chunk_samples(i) for i in range(3)]))

    assert "chunk 1/3" in err and "chunk 3/3" in err and "6.0/5 s received" in err
    assert "first audio after" in err
    assert "prompts accepted (version 1)" in err
    assert "warning [SESSION_MIGRATED]: moved to generator-1" in err
    assert f"wrote 6.00 s (3 chunks) of session s-1 to {out}" in err


def test_stream_without_prompts_or_config_sends_setup_then_play(fake, tmp_path, capsys):
    out = tmp_path / "plain.wav"
    assert main(["stream", "--address", fake.address, "--seconds", "2", "--out", str(out)]) == 0
    assert _kinds(fake.requests) == ["setup", "playback"]
    assert fake.requests[0].setup.model == ""  # the cluster's default
    assert "authorization" not in fake.metadata
    assert soundfile.info(out).frames == facts.CHUNK_SAMPLES


def test_invalid_argument_exits_non_zero_without_traceback(fake, tmp_path, capsys):
    fake.abort_after_chunks = (0, grpc.StatusCode.INVALID_ARGUMENT, "prompts[0]: empty text")
    out = tmp_path / "never.wav"
    code = main(["stream", "--address", fake.address, "--prompt", "x", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "mrt stream: error: INVALID_ARGUMENT: prompts[0]: empty text" in err
    assert "Traceback" not in err
    assert not out.exists()  # no audio received, no file written


def test_error_mid_stream_keeps_the_audio_received(fake, tmp_path, capsys):
    fake.abort_after_chunks = (2, grpc.StatusCode.UNAVAILABLE, "generator lost")
    out = tmp_path / "partial.wav"
    code = main(["stream", "--address", fake.address, "--seconds", "10", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "UNAVAILABLE: generator lost" in err
    assert f"kept the 4.00 s received in {out}" in err
    assert soundfile.info(out).frames == 2 * facts.CHUNK_SAMPLES


def test_stream_ended_early_by_the_server_is_an_error(fake, tmp_path, capsys):
    fake.end_after_chunks = 1
    out = tmp_path / "short.wav"
    code = main(["stream", "--address", fake.address, "--seconds", "6", "--out", str(out)])
    assert code == 1
    assert "server ended the stream after 2.00 s of audio, before the 6 s asked for" in (
        capsys.readouterr().err
    )
    assert soundfile.info(out).frames == facts.CHUNK_SAMPLES


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_gateway_down_is_unavailable(tmp_path, capsys):
    out = tmp_path / "down.wav"
    assert main(["stream", "--address", _unused_address(), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "mrt stream: error: UNAVAILABLE:" in err and "Traceback" not in err
    assert not out.exists()


def test_stream_over_tls(tmp_path, capsys):
    servicer = FakeMusicGeneration()
    credentials = grpc.ssl_server_credentials(
        [((TLS_DIR / "server.key").read_bytes(), (TLS_DIR / "server.crt").read_bytes())]
    )
    server, address = _serve(servicer, credentials)
    try:
        out = tmp_path / "tls.wav"
        assert (
            main(
                [
                    "stream",
                    "--address",
                    address,
                    "--tls-ca",
                    str(TLS_DIR / "server.crt"),
                    "--seconds",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert soundfile.info(out).frames == facts.CHUNK_SAMPLES
        # Without the CA the client must refuse the server's certificate.
        assert main(["stream", "--address", address, "--seconds", "2", "--out", str(out)]) == 1
    finally:
        server.stop(grace=None)


def test_unreadable_tls_ca_is_a_usage_error(capsys, tmp_path):
    code = main(["models", "--tls-ca", str(tmp_path / "missing.pem")])
    assert code == 2
    assert "cannot read --tls-ca file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--tls-cert", "client.crt", "--tls-key", "client.key"], "need --tls-ca"),
        (["--tls-ca", "ca.crt", "--tls-cert", "client.crt"], "must be given together"),
    ],
)
def test_a_client_certificate_needs_its_key_and_a_ca(options, message, capsys):
    assert main(["models", *options]) == 2
    assert message in capsys.readouterr().err


def test_embed_text_prints_json(fake, capsys):
    assert main(["embed", "--address", fake.address, "--api-key", "k", "--text", "lofi"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert len(values) == 768 and values[0] == -1.0 and values[-1] == 1.0
    assert fake.embed_requests[0].text == "lofi"
    assert fake.metadata["authorization"] == "Bearer k"


def test_embed_audio_saves_npy(fake, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF....WAVE")
    out = tmp_path / "style.npy"
    assert main(["embed", "--address", fake.address, "--audio", str(clip), "--out", str(out)]) == 0
    assert fake.embed_requests[0].audio == b"RIFF....WAVE"
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (768,)
    np.testing.assert_array_equal(saved, np.linspace(-1, 1, 768, dtype=np.float32))


def test_embed_refused_by_server(fake, capsys):
    assert main(["embed", "--address", fake.address, "--text", "refuse me"]) == 1
    assert "INVALID_ARGUMENT: text must not be empty" in capsys.readouterr().err


def test_models_prints_a_table(fake, capsys):
    assert main(["models", "--address", fake.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "LOADED", "AVAILABLE"]
    assert lines[1].split() == [
        "tiny",
        "*",
        "yes",
        "yes",
        "48000",
        "Hz",
        "2",
        "2",
        "s",
        "offline",
        "default",
    ]
    assert lines[2].split()[:3] == ["large", "no", "no"]
    assert lines[-1] == "* default model: tiny"


def test_out_in_a_missing_directory_is_a_usage_error(fake, tmp_path, capsys):
    code = main(["stream", "--address", fake.address, "--out", str(tmp_path / "no" / "x.wav")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert fake.requests == []  # refused before any session was opened


def test_an_opus_bitrate_needs_the_opus_encoding(fake, tmp_path, capsys):
    code = main(
        [
            "stream",
            "--address",
            fake.address,
            "--opus-bitrate",
            "64000",
            "--out",
            str(tmp_path / "x.wav"),
        ]
    )
    assert code == 2
    assert "--opus-bitrate needs --encoding ogg_opus" in capsys.readouterr().err
    assert fake.requests == []


def test_stream_asks_for_opus_and_writes_the_stream_as_received(fake, tmp_path, capsys):
    out = tmp_path / "x.opus"
    code = main(
        [
            "stream",
            "--address",
            fake.address,
            "--encoding",
            "ogg_opus",
            "--opus-bitrate",
            "96000",
            "--seconds",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert fake.requests[0].setup == music_pb2.SessionSetup(
        encoding=music_pb2.OGG_OPUS, opus_bitrate=96_000
    )
    # The fake's chunks are whatever bytes it sends: the file is them, in order.
    expected = b"".join(chunk_samples(i).tobytes() for i in range(2))
    assert out.read_bytes() == expected
