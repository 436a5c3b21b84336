"""API keys, TLS and mutual TLS against real processes on loopback (the `mock` models).

Two clusters: one whose gateway takes API keys over TLS (with a small message-size limit),
and one where every port requires client certificates, the gateway's links to the embedder
and the generator included.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.cli import main as mrt
from services.cli.launcher import GATEWAY, Cluster, ClusterConfig, ServiceNotReadyError
from services.common.proto.mrt.v1 import music_pb2, music_pb2_grpc
from tests.certificates import CertificateAuthority, Identity
from tests.integration.conftest import MRT, metric, run_mrt_up, scrape
from tests.streaming_client import StreamClient

PLAY = music_pb2.PlaybackControl.PLAY
MAX_MESSAGE_BYTES = 1024 * 1024
KEYS = {
    "alice": "alice-4f1c2a9e8b7d6c5a",
    "bob": "bob-9a8b7c6d5e4f3a2b",
    "limited": "limited-1a2b3c4d5e6f7a8b",
    "retired": "retired-0f9e8d7c6b5a4f3e",
}
KEY_FILE = (
    f"alice {KEYS['alice']}\n"
    f"bob {KEYS['bob']}\n"
    f"limited {KEYS['limited']} max_sessions=1\n"
    f"retired {KEYS['retired']} revoked\n"
)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority  # unrelated: its certificates must be refused
    server: Identity  # every service's certificate (SAN 127.0.0.1, localhost)
    client: Identity
    stranger: Identity  # a client certificate signed by other_ca

    def credentials(
        self, *, ca: CertificateAuthority | None = None, identity: Identity | None = None
    ) -> grpc.ChannelCredentials:
        ca = ca or self.ca
        if identity is None:
            return grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=ca.cert.read_bytes(),
            private_key=identity.key.read_bytes(),
            certificate_chain=identity.cert.read_bytes(),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(directory, "test-ca")
    other_ca = CertificateAuthority.create(directory, "other-ca")
    return Pki(
        ca,
        other_ca,
        server=ca.issue("server"),
        client=ca.issue("client"),
        stranger=other_ca.issue("stranger"),
    )


def server_tls_args(pki: Pki, *, require_client_certificates: bool) -> tuple[str, ...]:
    args = ("--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key))
    if require_client_certificates:
        args += ("--tls-client-ca-file", str(pki.ca.cert))
    return args


def is_serving(address: str, credentials: grpc.ChannelCredentials | None) -> bool:
    """Health check; plaintext when ``credentials`` is None."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def start_tls_cluster(
    tmp_path_factory,
    *,
    gateway_args: tuple[str, ...],
    backend_args: tuple[str, ...] = (),
    health_credentials: Callable[[str], grpc.ChannelCredentials | None],
    timeout_s: float = 240.0,
) -> Cluster:
    """A mock cluster whose services get extra flags; readiness is checked over TLS.

    ``health_credentials(role)`` gives the credentials to check a service of that role with."""
    config = ClusterConfig(
        model="mock",
        embedder_model="mock",
        log_dir=tmp_path_factory.mktemp("logs"),
        assets_dir=str(tmp_path_factory.getbasetemp() / "assets"),
    ).with_free_ports()
    specs = [
        dataclasses.replace(
            spec, argv=spec.argv + (gateway_args if spec.role == GATEWAY else backend_args)
        )
        for spec in config.service_specs()
    ]
    cluster = Cluster(config, specs=specs).start()
    try:
        deadline = time.monotonic() + timeout_s
        for process in cluster.services:
            while not is_serving(process.address, health_credentials(process.spec.role)):
                cluster.check_running()
                if time.monotonic() > deadline:
                    raise ServiceNotReadyError(process.name, "not SERVING", process.log_tail())
                time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def write_atomically(path: Path, text: str) -> None:
    """Replace the file the way a Kubernetes Secret update does."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    os.replace(staging, path)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def final_status(client: StreamClient, timeout_s: float) -> grpc.StatusCode:
    """Read until the stream ends (within ``timeout_s`` in all); its status code."""
    deadline = time.monotonic() + timeout_s
    try:
        while client.recv(timeout_s=max(0.01, deadline - time.monotonic())) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream still runs after {timeout_s} s")
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


# --- API keys over TLS ------------------------------------------------------------------------


@dataclasses.dataclass
class KeyedGateway:
    cluster: Cluster
    key_file: Path
    pki: Pki

    @property
    def address(self) -> str:
        return self.cluster.gateway_address

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.address, self.pki.credentials())

    def list_models_code(self, metadata: tuple = ()) -> grpc.StatusCode:
        with self.channel() as channel:
            try:
                music_pb2_grpc.MusicGenerationStub(channel).ListModels(
                    music_pb2.ListModelsRequest(), metadata=metadata, timeout=10
                )
            except grpc.RpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    def client(self, key: str | None) -> StreamClient:
        return StreamClient(
            self.address, metadata=bearer(key) if key else (), channel=self.channel()
        )


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, pki) -> KeyedGateway:
    key_file = tmp_path_factory.mktemp("secrets") / "api-keys"
    key_file.write_text(KEY_FILE)
    gateway_args = server_tls_args(pki, require_client_certificates=False) + (
        "--api-keys-file",
        str(key_file),
        "--api-keys-reload-s",
        "0.2",
        "--max-message-bytes",
        str(MAX_MESSAGE_BYTES),
    )
    public = pki.credentials()
    cluster = start_tls_cluster(
        tmp_path_factory,
        gateway_args=gateway_args,
        health_credentials=lambda role: public if role == GATEWAY else None,
    )
    yield KeyedGateway(cluster, key_file, pki)
    cluster.stop()


def test_a_valid_key_streams_music_over_tls(keyed):
    assert keyed.list_models_code(bearer(KEYS["alice"])) == grpc.StatusCode.OK
    client = keyed.client(KEYS["alice"])
    try:
        assert client.setup().model == "mock"
        client.playback(PLAY)
        ((_, chunk),) = client.chunks(1)
        assert len(chunk.data) == 96000 * 2 * 2
    finally:
        client.close()


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        bearer("not-a-key-of-this-cluster"),
        (("authorization", KEYS["alice"]),),  # no scheme
        (("authorization", f"Basic {KEYS['alice']}"),),
        (("authorization", "Bearer "),),
    ],
    ids=["missing", "unknown", "no-scheme", "basic", "empty"],
)
def test_missing_malformed_and_unknown_keys_are_unauthenticated(keyed, metadata):
    assert keyed.list_models_code(metadata) == grpc.StatusCode.UNAUTHENTICATED
    client = StreamClient(keyed.address, metadata=metadata, channel=keyed.channel())
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.setup()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()


def test_a_revoked_key_is_permission_denied_and_its_name_not_its_secret_is_told(keyed):
    assert keyed.list_models_code(bearer(KEYS["retired"])) == grpc.StatusCode.PERMISSION_DENIED
    client = keyed.client(KEYS["retired"])
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.setup()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "retired" in err.value.details() and KEYS["retired"] not in err.value.details()
    finally:
        client.close()
    log = keyed.cluster.gateway.log_path.read_text()
    assert "retired" in log and not any(key in log for key in KEYS.values())
    refused = metric(
        scrape(keyed.cluster.metrics_urls["gateway"]),
        "mrt_gateway_auth_refused_total",
        code="PERMISSION_DENIED",
    )
    assert refused >= 2


def test_a_key_over_its_session_limit_is_refused_while_others_still_work(keyed):
    first = keyed.client(KEYS["limited"])
    others: list[StreamClient] = []
    try:
        first.setup()
        sessions = metric(
            scrape(keyed.cluster.metrics_urls["gateway"]),
            "mrt_gateway_api_key_sessions",
            key_name="limited",
        )
        assert sessions == 1
        second = keyed.client(KEYS["limited"])
        others.append(second)
        with pytest.raises(grpc.RpcError) as err:
            second.setup()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_sessions" in err.value.details() and "1 concurrent" in err.value.details()
        assert KEYS["limited"] not in err.value.details()
        another_key = keyed.client(KEYS["bob"])
        others.append(another_key)
        assert another_key.setup().model == "mock"
        first.close()  # the slot is freed when the stream ends, here by cancellation

        def limited_key_opens_a_session() -> bool:
            retry = keyed.client(KEYS["limited"])
            others.append(retry)
            try:
                retry.setup()
                return True
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        assert wait_for(limited_key_opens_a_session, timeout_s=10)
    finally:
        first.close()
        for client in others:
            client.close()


def test_editing_the_key_file_adds_revokes_and_removes_keys_without_restart(keyed):
    new_key = "rotating-6e5d4c3b2a1f0e9d"
    try:
        write_atomically(keyed.key_file, KEY_FILE + f"rotating {new_key}\n")
        assert wait_for(lambda: keyed.list_models_code(bearer(new_key)) == grpc.StatusCode.OK)
        session = keyed.client(new_key)
        try:
            session.setup()
            session.playback(PLAY)
            session.chunks(1)
            write_atomically(keyed.key_file, KEY_FILE + f"rotating {new_key} revoked\n")
            # The open session is ended at its next message; new calls are refused.
            assert final_status(session, timeout_s=15) == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in session.error.details()
        finally:
            session.close()
        assert keyed.list_models_code(bearer(new_key)) == grpc.StatusCode.PERMISSION_DENIED
        write_atomically(keyed.key_file, KEY_FILE)
        assert wait_for(
            lambda: keyed.list_models_code(bearer(new_key)) == grpc.StatusCode.UNAUTHENTICATED
        )
        assert keyed.list_models_code(bearer(KEYS["alice"])) == grpc.StatusCode.OK
    finally:
        write_atomically(keyed.key_file, KEY_FILE)
    assert keyed.cluster.gateway.is_running()


def test_health_and_reflection_need_no_key(keyed):
    with keyed.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "mrt.v1.MusicGeneration" in services


def test_tls_fails_with_the_wrong_ca_or_without_tls(keyed):
    wrong_ca = keyed.pki.credentials(ca=keyed.pki.other_ca)
    with grpc.secure_channel(keyed.address, wrong_ca) as channel:
        with pytest.raises(grpc.RpcError) as err:
            music_pb2_grpc.MusicGenerationStub(channel).ListModels(
                music_pb2.ListModelsRequest(), metadata=bearer(KEYS["alice"]), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(keyed.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            music_pb2_grpc.MusicGenerationStub(channel).ListModels(
                music_pb2.ListModelsRequest(), metadata=bearer(KEYS["alice"]), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_over_limit_message_is_refused_and_the_gateway_stays_up(keyed):
    too_big = b"\0" * (MAX_MESSAGE_BYTES + 1024)
    with keyed.channel() as channel:
        with pytest.raises(grpc.RpcError) as err:
            music_pb2_grpc.MusicGenerationStub(channel).EmbedStyle(
                music_pb2.EmbedStyleRequest(audio=too_big),
                metadata=bearer(KEYS["alice"]),
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    client = keyed.client(KEYS["alice"])
    try:
        client.setup()
        client.prompts(music_pb2.WeightedPrompt(audio=too_big))
        assert final_status(client, timeout_s=15) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        client.close()
    assert keyed.cluster.gateway.is_running()
    test_a_valid_key_streams_music_over_tls(keyed)


def test_the_command_line_reaches_a_keyed_tls_gateway(keyed, tmp_path, monkeypatch, capsys):
    connection = ["--address", keyed.address, "--tls-ca", str(keyed.pki.ca.cert)]
    assert mrt.main(["models", *connection, "--api-key", KEYS["alice"]]) == 0
    assert "mock" in capsys.readouterr().out
    assert mrt.main(["models", *connection]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("MRT_API_KEY", KEYS["bob"])
    out = tmp_path / "music.wav"
    assert (
        mrt.main(["stream", *connection, "--seconds", "2", "--prompt", "jazz", "--out", str(out)])
        == 0
    )
    audio, rate = soundfile.read(out)
    assert rate == 48000 and audio.shape == (96000, 2)


# --- mutual TLS everywhere --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki) -> Cluster:
    server_args = server_tls_args(pki, require_client_certificates=True)
    gateway_args = server_args + (
        "--internal-tls-ca-file",
        str(pki.ca.cert),
        "--internal-tls-cert-file",
        str(pki.client.cert),
        "--internal-tls-key-file",
        str(pki.client.key),
    )
    with_client_certificate = pki.credentials(identity=pki.client)
    cluster = start_tls_cluster(
        tmp_path_factory,
        gateway_args=gateway_args,
        backend_args=server_args,
        health_credentials=lambda role: with_client_certificate,
    )
    yield cluster
    cluster.stop()


def list_models_code(address: str, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with grpc.secure_channel(address, credentials) as channel:
        try:
            music_pb2_grpc.MusicGenerationStub(channel).ListModels(
                music_pb2.ListModelsRequest(), timeout=5
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_mtls_public_port_refuses_clients_without_a_good_certificate(mtls, pki):
    address = mtls.gateway_address
    assert list_models_code(address, pki.credentials()) == grpc.StatusCode.UNAVAILABLE
    assert (
        list_models_code(address, pki.credentials(identity=pki.stranger))
        == grpc.StatusCode.UNAVAILABLE
    )
    assert list_models_code(address, pki.credentials(identity=pki.client)) == grpc.StatusCode.OK


def test_backends_refuse_clients_without_a_certificate(mtls, pki):
    for address in [mtls.embedder_address, *mtls.generator_addresses]:
        assert not is_serving(address, pki.credentials())
        assert not is_serving(address, pki.credentials(identity=pki.stranger))
        assert is_serving(address, pki.credentials(identity=pki.client))


def test_a_session_streams_end_to_end_over_internal_mtls(mtls, pki):
    channel = grpc.secure_channel(mtls.gateway_address, pki.credentials(identity=pki.client))
    client = StreamClient(mtls.gateway_address, channel=channel)
    try:
        assert client.setup().model == "mock"
        client.prompts(music_pb2.WeightedPrompt(text="dub techno"))  # through the embedder
        status = client.expect("prompt_status").prompt_status
        assert status.accepted, status.message
        client.playback(PLAY)
        chunks = [chunk for _, chunk in client.chunks(2)]
        assert [c.sequence for c in chunks] == [0, 1]
        assert all(c.prompt_version == status.version for c in chunks)
    finally:
        client.close()


def test_mrt_up_runs_a_mutual_tls_cluster_that_mrt_stream_reaches(pki, tmp_path):
    """`mrt up` with TLS options: every port serves the certificate and requires a client
    certificate, its own health checks pass, and `mrt stream` connects with one."""
    ports = ClusterConfig().with_free_ports()
    up, output = run_mrt_up(
        ports,
        "--model",
        "mock",
        "--embedder-model",
        "mock",
        "--log-dir",
        str(tmp_path / "logs"),
        "--tls-cert-file",
        str(pki.server.cert),
        "--tls-key-file",
        str(pki.server.key),
        "--tls-ca-file",
        str(pki.ca.cert),
        "--tls-client-ca-file",
        str(pki.ca.cert),
        timeout_s=240,
    )
    try:
        assert any("mrt cluster ready" in line for line in output), "".join(output)
        assert any(f"--tls-ca {pki.ca.cert}" in line for line in output)
        for port in (ports.embedder_port, ports.generator_port):
            address = f"127.0.0.1:{port}"
            assert is_serving(address, pki.credentials(identity=pki.client))
            assert not is_serving(address, pki.credentials())  # no client certificate
        stream = [
            MRT,
            "stream",
            "--address",
            f"127.0.0.1:{ports.gateway_port}",
            "--tls-ca",
            str(pki.ca.cert),
            "--seconds",
            "2",
            "--out",
            str(tmp_path / "a.wav"),
        ]
        with_certificate = subprocess.run(
            stream + ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert with_certificate.returncode == 0, with_certificate.stderr
        assert soundfile.info(tmp_path / "a.wav").duration == 2.0
        without = subprocess.run(stream, capture_output=True, text=True, timeout=120)
        assert without.returncode == 1 and "UNAVAILABLE" in without.stderr
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0


def test_a_resume_token_works_only_with_the_key_that_opened_the_session(keyed):
    alice = keyed.client(KEYS["alice"])
    token = alice.setup().resume_token
    alice.close()

    def resume_with(key: str) -> StreamClient:
        client = keyed.client(key)
        client.send(setup=music_pb2.SessionSetup(resume_token=token))
        return client

    thief = resume_with(KEYS["bob"])
    assert final_status(thief, timeout_s=10) == grpc.StatusCode.PERMISSION_DENIED
    thief.close()
    owner = resume_with(KEYS["alice"])
    try:
        assert owner.expect("started").started.resumed
    finally:
        owner.close()
