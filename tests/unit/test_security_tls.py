"""Loading TLS credentials from the services' flags: what combinations are refused, and that
the loaded credentials make a working mutual-TLS connection."""

from __future__ import annotations

import argparse
import asyncio

import grpc
import pytest

from services.common.security import (SecurityConfigError, add_internal_tls_flags,
                                      add_server_tls_flags, load_channel_credentials,
                                      load_server_credentials)
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


@pytest.mark.parametrize("cert, key, client_ca, needle", [
    ("server.crt", None, None, "must be given together"),
    (None, "server.key", None, "must be given together"),
    (None, None, "unit-ca.crt", "needs --tls-cert-file"),
    ("server.crt", "missing.key", None, "cannot read --tls-key-file"),
    ("server.crt", "empty.pem", None, "--tls-key-file .* holds no PEM private key"),
    ("server.key", "server.key", None, "--tls-cert-file .* holds no PEM certificate"),
    ("server.crt", "server.key", "server.key", "--tls-client-ca-file .* no PEM certificate"),
])
def test_server_flag_combinations_that_cannot_work_are_refused(pki, cert, key, client_ca, needle):
    directory = pki[0].cert.parent
    (directory / "empty.pem").write_text("\n")
    with pytest.raises(SecurityConfigError, match=needle):
        load_server_credentials(*paths(directory, cert, key, client_ca))


@pytest.mark.parametrize("ca, cert, key, needle", [
    (None, "client.crt", "client.key", "needs --internal-tls-ca-file"),
    ("unit-ca.crt", "client.crt", None, "must be given together"),
    ("missing.crt", None, None, "cannot read --internal-tls-ca-file"),
])
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


async def ping_over(server_credentials, channel_credentials) -> bytes:
    server = grpc.aio.server()

    async def ping(request, context):
        return request

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials)
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            return await channel.unary_unary("/test.Echo/Ping")(b"hello", timeout=5)
    finally:
        await server.stop(None)


def test_loaded_credentials_make_a_mutual_tls_connection(pki):
    ca, server, client = pki
    server_credentials = load_server_credentials(server.cert, server.key, ca.cert)
    with_certificate = load_channel_credentials(ca.cert, client.cert, client.key)
    assert asyncio.run(ping_over(server_credentials, with_certificate)) == b"hello"
    without_certificate = load_channel_credentials(ca.cert)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(ping_over(server_credentials, without_certificate))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
