"""The web service against real processes: the official Lyria RealTime SDKs, a browser, and the
Node.js gRPC client, all on one TLS cluster (`mock` models) whose gateway takes API keys.

The Python SDK only speaks ``wss``, so the web service serves TLS with the cluster's test
certificate; a second web service in plaintext in front of the same gateway serves the browser
test (Chromium trusts no test CA).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import websockets
from google import genai
from google.genai import types

from services.cli.launcher import (
    GATEWAY,
    Cluster,
    ClusterConfig,
    ClusterTLS,
    ServiceProcess,
    wait_until_serving,
)
from tests.certificates import CertificateAuthority
from tests.integration.conftest import metric, scrape

pytestmark = pytest.mark.filterwarnings("ignore:Realtime music generation is experimental")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "lyria-test-key-5d1e9c0b7a3f"
FRAMES_PER_CHUNK = 96_000  # 2 s at 48 kHz
LYRIA_MODEL = "models/lyria-realtime-exp"


@dataclasses.dataclass(frozen=True)
class WebCluster:
    cluster: Cluster
    ca_file: Path
    plain_web: ServiceProcess  # plaintext web service in front of the same gateway

    @property
    def wss_url(self) -> str:
        return self.cluster.web_url.replace("https://", "wss://") + (
            "ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateMusic"
        )


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> WebCluster:
    pki_dir = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(pki_dir, "test-ca")
    server = ca.issue("server")
    keys = pki_dir / "api-keys"
    keys.write_text(f"tester {API_KEY}\n")
    config = ClusterConfig(
        model="mock",
        embedder_model="mock",
        web_port=8080,
        log_dir=tmp_path_factory.mktemp("logs"),
        assets_dir=str(tmp_path_factory.getbasetemp() / "assets"),
        tls=ClusterTLS(server.cert, server.key, ca.cert),
        ready_timeout_s=240,
    ).with_free_ports()
    specs = [
        dataclasses.replace(spec, argv=spec.argv + ("--api-keys-file", str(keys)))
        if spec.role == GATEWAY
        else spec
        for spec in config.service_specs()
    ]
    cluster = Cluster(config, specs=specs).__enter__()
    plain_port = ClusterConfig(web_port=8080).with_free_ports().web_port
    plain_spec = dataclasses.replace(
        cluster.web.spec,
        name="web-plain",
        port=plain_port,
        metrics_port=plain_port,
        http_scheme="http",
        argv=(
            sys.executable,
            "-m",
            "services.web",
            "--port",
            str(plain_port),
            "--gateway-address",
            cluster.gateway_address,
            "--internal-tls-ca-file",
            str(ca.cert),
        ),
    )
    plain_web = ServiceProcess(plain_spec, log_dir=config.log_dir)
    try:
        plain_web.start()
        wait_until_serving([plain_web], 60)
    except BaseException:
        plain_web.stop()
        cluster.stop()
        raise
    yield WebCluster(cluster, ca.cert, plain_web)
    plain_web.stop()
    cluster.stop()


def pcm_frames(chunks: list[types.AudioChunk]) -> np.ndarray:
    return np.frombuffer(b"".join(c.data for c in chunks), dtype="<i2").reshape(-1, 2)


async def next_chunks(session, count: int) -> list[types.AudioChunk]:
    chunks = []
    async for message in session.receive():
        if message.server_content and message.server_content.audio_chunks:
            chunks += message.server_content.audio_chunks
            if len(chunks) >= count:
                return chunks


def test_the_python_sdk_runs_the_lyria_flow_over_tls(web, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(web.ca_file))  # the SDK's TLS trusts the test CA
    client = genai.Client(
        api_key=API_KEY, http_options={"base_url": web.cluster.web_url, "api_version": "v1alpha"}
    )

    async def flow():
        async with client.aio.live.music.connect(model=LYRIA_MODEL) as session:
            await session.set_weighted_prompts(
                prompts=[
                    types.WeightedPrompt(text="minimal techno", weight=1.0),
                    types.WeightedPrompt(text="piano", weight=3.0),
                ]
            )
            await session.set_music_generation_config(
                config=types.LiveMusicGenerationConfig(
                    temperature=0.9, top_k=30, guidance=4.0, seed=7
                )
            )
            await session.play()
            first = await asyncio.wait_for(next_chunks(session, 3), 120)
            await session.pause()
            await session.play()
            resumed = await asyncio.wait_for(next_chunks(session, 1), 60)
            await session.reset_context()
            after_reset = await asyncio.wait_for(next_chunks(session, 1), 60)
            await session.stop()
            return first + resumed + after_reset

    chunks = asyncio.run(flow())
    assert all(c.mime_type == "audio/l16;rate=48000;channels=2" for c in chunks)
    audio = pcm_frames(chunks)
    assert audio.shape == (FRAMES_PER_CHUNK * len(chunks), 2)
    assert np.abs(audio).max() > 300  # the mock model's tones, not silence
    metadata = chunks[-1].source_metadata
    assert metadata.music_generation_config.temperature == pytest.approx(0.9)
    assert metadata.music_generation_config.top_k == 30
    assert [p.text for p in metadata.client_content.weighted_prompts] == ["minimal techno", "piano"]
    assert [p.weight for p in metadata.client_content.weighted_prompts] == pytest.approx(
        [0.25, 0.75]
    )  # normalized, as Lyria does
    samples = scrape(web.cluster.web.metrics_url)  # https, trusted through SSL_CERT_FILE
    assert metric(samples, "mrt_web_chunks_sent_total") >= len(chunks)


def _raw_session(web: WebCluster, *, key: str | None = API_KEY, query_key: bool = False):
    """A WebSocket to the endpoint with the library the Python SDK uses, for what the SDK's
    typed messages do not show (warnings, close codes)."""
    context = ssl.create_default_context(cafile=str(web.ca_file))
    url = web.wss_url + (f"?key={key}" if query_key and key else "")
    headers = {"x-goog-api-key": key} if key and not query_key else {}
    return websockets.connect(url, ssl=context, additional_headers=headers)


async def _receive_json(socket) -> dict:
    return json.loads(await asyncio.wait_for(socket.recv(), 30))


def test_unsupported_fields_are_named_in_a_warning_and_refused_prompts_are_filtered(web):
    async def exchange():
        async with _raw_session(web, query_key=True) as socket:
            await socket.send(json.dumps({"setup": {"model": LYRIA_MODEL}}))
            assert await _receive_json(socket) == {"setupComplete": {}}
            await socket.send(
                json.dumps(
                    {
                        "musicGenerationConfig": {
                            "bpm": 120,
                            "scale": "D_MAJOR_B_MINOR",
                            "muteDrums": True,
                            "temperature": 1.0,
                        }
                    }
                )
            )
            warning = await _receive_json(socket)
            await socket.send(
                json.dumps(
                    {
                        "clientContent": {
                            "weightedPrompts": [
                                {"text": "jazz", "weight": 1},
                                {"text": "x" * 600, "weight": 1},
                            ]
                        }
                    }
                )
            )
            filtered = await _receive_json(socket)
            await socket.send(json.dumps({"musicGenerationConfig": {"temperature": 9.5}}))
            refused_config = await _receive_json(socket)
            return warning, filtered, refused_config

    warning, filtered, refused_config = asyncio.run(exchange())
    assert "bpm" in warning["warning"] and "scale" in warning["warning"]
    assert "muteDrums" in warning["warning"] and "temperature" not in warning["warning"]
    assert filtered["filteredPrompt"]["text"] == "x" * 600
    assert "512" in filtered["filteredPrompt"]["filteredReason"]
    assert "temperature" in refused_config["warning"]


@pytest.mark.parametrize(
    "key, first_message, code, reason",
    [
        (None, {"setup": {}}, 1008, "UNAUTHENTICATED"),
        ("not-a-key-0000000000", {"setup": {}}, 1008, "UNAUTHENTICATED"),
        (API_KEY, {"playbackControl": "PLAY"}, 1007, "first message must be setup"),
        (API_KEY, {"setup": {}, "clientContent": {}}, 1007, "exactly one"),
    ],
)
def test_errors_close_the_socket_with_a_code_and_a_reason(web, key, first_message, code, reason):
    async def exchange():
        async with _raw_session(web, key=key) as socket:
            await socket.send(json.dumps(first_message))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 30)
            return closed.value.rcvd

    received = asyncio.run(exchange())
    assert received.code == code and reason in received.reason


def test_the_js_sdk_the_node_client_and_the_browser_player(web, tmp_path):
    """`node --test` runs the JavaScript tests against this cluster: the official @google/genai
    SDK, clients/node (gRPC), and the player page in headless Chromium."""
    node = shutil.which("node")
    assert node, "Node.js is needed (see README)"
    env = dict(
        os.environ,
        NODE_EXTRA_CA_CERTS=str(web.ca_file),
        MRT_API_KEY=API_KEY,
        MRT_ADDRESS=web.cluster.gateway_address,
        MRT_TLS_CA=str(web.ca_file),
        MRT_WEB_URL=web.cluster.web_url,
        MRT_PLAYER_URL=f"http://{web.plain_web.address}/",
        MRT_OUT_DIR=os.environ.get("MRT_WEB_TEST_OUT_DIR", str(tmp_path)),
    )
    tests = [
        PROJECT_ROOT / "clients/node/test/client.test.mjs",
        PROJECT_ROOT / "clients/node/test/reconnect.test.mjs",
        PROJECT_ROOT / "tests/js/lyria_sdk.test.mjs",
        PROJECT_ROOT / "tests/js/player.test.mjs",
    ]
    run = subprocess.run(
        [node, "--test", "--test-concurrency=1", *map(str, tests)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        cwd=PROJECT_ROOT,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "# fail 0" in run.stdout and "# pass 0" not in run.stdout
