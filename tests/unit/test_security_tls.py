"""Loading TLS credentials from the services' flags: what combinations are refused, and that
the loaded credentials make a working mutual-TLS connection."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
from pathlib import Path

import grpc
import pytest

from services.common.security import (
    SecurityConfigError,
    add_internal_tls_flags,
    add_server_tls_flags,
    load_channel_credentials,
    load_server_credentials,
)
from tests.certificates import CertificateAuthority


def paths(directory, *names):
    return [None if name is None else directory / name for name in names]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(directory, "unit-ca")
    return ca, ca.issue("server"), ca.issue("client")


def test_no_files_means_plaintext():
    assert load_server_credentials(None, None) is None
    assert load_channel_credentials(None) is None


@pytest.mark.parametrize(
    "cert, key, client_ca, needle",
    [
        ("server.crt", None, None, "must be given together"),
        (None, "server.key", None, "must be given together"),
        (None, None, "unit-ca.crt", "needs --tls-cert-file"),
        ("server.crt", "missing.key", None, "cannot read --tls-key-file"),
        ("server.crt", "empty.pem", None, "--tls-key-file .* holds no PEM private key"),
        ("server.key", "server.key", None, "--tls-cert-file .* holds no PEM certificate"),
        ("server.crt", "server.key", "server.key", "--tls-client-ca-file .* no PEM certificate"),
    ],
)
def test_server_flag_combinations_that_cannot_work_are_refused(pki, cert, key, client_ca, needle):
    directory = pki[0].cert.parent
    (directory / "empty.pem").write_text("\n")
    with pytest.raises(SecurityConfigError, match=needle):
        load_server_credentials(*paths(directory, cert, key, client_ca))


@pytest.mark.parametrize(
    "ca, cert, key, needle",
    [
        (None, "client.crt", "client.key", "needs --internal-tls-ca-file"),
        ("unit-ca.crt", "client.crt", None, "must be given together"),
        ("missing.crt", None, None, "cannot read --internal-tls-ca-file"),
    ],
)
def test_channel_flag_combinations_that_cannot_work_are_refused(pki, ca, cert, key, needle):
    directory = pki[0].cert.parent
    with pytest.raises(SecurityConfigError, match=needle):
        load_channel_credentials(*paths(directory, ca, cert, key))


def test_flags_read_the_environment_and_a_blank_value_means_unset(monkeypatch):
    monkeypatch.setenv("MRT_TLS_CERT_FILE", "/etc/mrt/tls.crt")
    monkeypatch.setenv("MRT_INTERNAL_TLS_CA_FILE", "")
    parser = argparse.ArgumentParser()
    add_server_tls_flags(parser)
    add_internal_tls_flags(parser)
    args = parser.parse_args(["--tls-key-file", "/etc/mrt/tls.key"])
    assert str(args.tls_cert_file) == "/etc/mrt/tls.crt"
    assert str(args.tls_key_file) == "/etc/mrt/tls.key"
    assert args.internal_tls_ca_file is None and args.tls_client_ca_file is None


async def ping_over(
    server_credentials: grpc.ServerCredentials, channel_credentials: grpc.ChannelCredentials
) -> bytes:
    """One call over a fresh server (server credentials serve one server only)."""
    server = grpc.aio.server()

    async def ping(request, context):
        return request

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials)
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            return await channel.unary_unary("/test.Echo/Ping")(b"hello", timeout=5)
    finally:
        await server.stop(None)


def test_loaded_credentials_make_a_mutual_tls_connection(pki):
    ca, server, client = pki
    with_certificate = load_channel_credentials(ca.cert, client.cert, client.key)
    assert (
        asyncio.run(
            ping_over(load_server_credentials(server.cert, server.key, ca.cert), with_certificate)
        )
        == b"hello"
    )
    without_certificate = load_channel_credentials(ca.cert)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(
            ping_over(
                load_server_credentials(server.cert, server.key, ca.cert), without_certificate
            )
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def serve_through_rotation(
    directory: Path, old_ca: Path, new_ca: Path, new_server
) -> list[grpc.StatusCode]:
    """Calls trusting the old CA, then the new CA, before and after the files are replaced."""
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    server = grpc.aio.server()

    async def ping(request, context):
        return request

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
            )
        ]
    )
    port = server.add_secure_port(
        "127.0.0.1:0", load_server_credentials(cert_file, key_file, check_interval_s=0.0)
    )
    await server.start()

    async def code_trusting(ca: Path) -> grpc.StatusCode:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            try:
                await channel.unary_unary("/test.Echo/Ping")(b"hi", timeout=5)
            except grpc.aio.AioRpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    try:
        codes = [await code_trusting(old_ca), await code_trusting(new_ca)]
        cert_file.write_text("not a certificate\n")  # a broken update is not taken up
        codes += [await code_trusting(old_ca)]
        for source, target in ((new_server.key, key_file), (new_server.cert, cert_file)):
            shutil.copy(source, target.with_suffix(".new"))
            os.replace(target.with_suffix(".new"), target)
        return codes + [await code_trusting(new_ca), await code_trusting(old_ca)]
    finally:
        await server.stop(None)


def test_a_renewed_certificate_is_served_without_a_restart(pki, tmp_path, caplog):
    old_ca, old_server, _ = pki
    new_ca = CertificateAuthority.create(tmp_path / "new", "new-ca")
    shutil.copy(old_server.cert, tmp_path / "tls.crt")
    shutil.copy(old_server.key, tmp_path / "tls.key")
    codes = asyncio.run(
        serve_through_rotation(tmp_path, old_ca.cert, new_ca.cert, new_ca.issue("renewed"))
    )
    ok, unavailable = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
    assert codes == [ok, unavailable, ok, ok, unavailable]
    assert "previous certificate stays in use" in caplog.text
