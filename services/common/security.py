"""TLS for the services: server credentials for every gRPC port, channel credentials for the
gateway's connections to its backends.

Every service serves TLS when given ``--tls-cert-file`` and ``--tls-key-file`` (PEM; the
certificate file may hold the whole chain). Adding ``--tls-client-ca-file`` makes it mutual:
clients must present a certificate signed by that CA, or the handshake fails. With none of
them the port is plaintext.

The gateway reaches the embedder and the generators over TLS when given
``--internal-tls-ca-file`` (the CA that signed the backends' certificates); with
``--internal-tls-cert-file`` and ``--internal-tls-key-file`` it also presents a client
certificate, for backends started with ``--tls-client-ca-file``. The backends' certificates
must name the host the gateway dials (``127.0.0.1`` locally, the generators' pod IPs when
they are discovered through DNS).

A missing or unreadable file stops the service at start with an error naming the flag. The
server's files are checked for changes again at most every ``CERTIFICATE_CHECK_INTERVAL_S``
when clients connect, so a renewed certificate (a cert-manager Secret, say) is served to new
connections without a restart; a changed set that cannot be loaded is reported and the previous
one stays in use. The gateway's client-side files are read once.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from services.common.config import add_flag

log = logging.getLogger(__name__)

CERTIFICATE_CHECK_INTERVAL_S = 10.0


class SecurityConfigError(ValueError):
    """A TLS flag combination that cannot work, or a credentials file that cannot be read."""


def optional_path(text: str) -> Path | None:
    """A file flag's value: empty (as a blank environment variable often is) means unset."""
    return Path(text) if text.strip() else None


def file_signature(path: Path) -> tuple[int, int, int]:
    """What changes when a file is rewritten: inode, size, modification time.

    Follows symlinks, so the atomic swap of a Kubernetes Secret volume's data is seen too."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def add_server_tls_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that put a service's gRPC port behind TLS (and optionally mutual TLS)."""
    add_flag(
        parser,
        "--tls-cert-file",
        type=optional_path,
        help="PEM certificate (chain) of this server; with --tls-key-file enables TLS",
    )
    add_flag(
        parser, "--tls-key-file", type=optional_path, help="PEM private key of --tls-cert-file"
    )
    add_flag(
        parser,
        "--tls-client-ca-file",
        type=optional_path,
        help="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)",
    )


def add_internal_tls_flags(
    parser: argparse.ArgumentParser, peers: str = "the embedder and generators"
) -> None:
    """The flags for TLS on a service's channels to the services behind it (``peers``: the
    gateway's embedder and generators, the web service's gateway)."""
    add_flag(
        parser,
        "--internal-tls-ca-file",
        type=optional_path,
        help=f"PEM CA bundle trusted for the certificates of {peers}; enables TLS to them",
    )
    add_flag(
        parser,
        "--internal-tls-cert-file",
        type=optional_path,
        help=f"PEM client certificate (chain) presented to {peers}",
    )
    add_flag(
        parser,
        "--internal-tls-key-file",
        type=optional_path,
        help="PEM private key of --internal-tls-cert-file",
    )
    add_flag(
        parser,
        "--internal-tls-server-name",
        default="",
        help=f"name the certificates of {peers} are checked against (default: the address dialled)",
    )


_CERTIFICATE_PEM = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY_PEM = b"PRIVATE KEY-----"  # "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY", ...


def _read_pem(path: Path, flag: str, marker: bytes) -> bytes:
    """The file's bytes, checked to hold PEM of the expected kind (gRPC's own error for a bad
    file is only "failed to bind")."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SecurityConfigError(f"cannot read {flag} {path}: {err.strerror or err}") from None
    if marker not in data:
        kind = "certificate" if marker == _CERTIFICATE_PEM else "private key"
        raise SecurityConfigError(f"{flag} {path} holds no PEM {kind}")
    return data


class ServerCertificateFiles:
    """A server's certificate, key and client CA files, re-read when they change.

    Called by gRPC (from its own threads) as handshakes begin: returns a new certificate
    configuration when the files changed since the last load, else None (keep the current)."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None,
        *,
        check_interval_s: float = CERTIFICATE_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.files = [path for path in (cert_file, key_file, client_ca_file) if path is not None]
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.initial = self._load()
        self._signatures = self._signatures_now()
        self._next_check = clock() + check_interval_s

    def _signatures_now(self) -> list[tuple[int, int, int]]:
        try:
            return [file_signature(path) for path in self.files]
        except OSError as err:
            raise SecurityConfigError(f"cannot read {err.filename}: {err.strerror}") from None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        pair = (
            _read_pem(self.key_file, "--tls-key-file", _PRIVATE_KEY_PEM),
            _read_pem(self.cert_file, "--tls-cert-file", _CERTIFICATE_PEM),
        )
        client_ca = (
            None
            if self.client_ca_file is None
            else _read_pem(self.client_ca_file, "--tls-client-ca-file", _CERTIFICATE_PEM)
        )
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=client_ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return None
            self._next_check = now + self.check_interval_s
            try:
                signatures = self._signatures_now()
                if signatures == self._signatures:
                    return None
                configuration = self._load()
            except SecurityConfigError as err:
                log.error("TLS files not reloaded, the previous certificate stays in use: %s", err)
                return None
            self._signatures = signatures
            log.info("reloaded the TLS certificate from %s", self.cert_file)
            return configuration


def load_server_credentials(
    cert_file: Path | None,
    key_file: Path | None,
    client_ca_file: Path | None = None,
    *,
    check_interval_s: float = CERTIFICATE_CHECK_INTERVAL_S,
) -> grpc.ServerCredentials | None:
    """TLS server credentials that follow changes to the files; client certificates are
    required when ``client_ca_file`` is set. None when neither certificate nor key is given."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise SecurityConfigError(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"
            )
        return None
    if cert_file is None or key_file is None:
        raise SecurityConfigError("--tls-cert-file and --tls-key-file must be given together")
    files = ServerCertificateFiles(
        cert_file, key_file, client_ca_file, check_interval_s=check_interval_s
    )
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files, require_client_authentication=client_ca_file is not None
    )


def server_credentials_from_flags(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    """load_server_credentials() from the flags add_server_tls_flags() defines."""
    return load_server_credentials(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file)


def load_channel_credentials(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS channel credentials trusting ``ca_file``, presenting a client certificate if given.

    None when no file is given (plaintext)."""
    if (cert_file is None) != (key_file is None):
        raise SecurityConfigError(
            "--internal-tls-cert-file and --internal-tls-key-file must be given together"
        )
    if ca_file is None:
        if cert_file is not None:
            raise SecurityConfigError("--internal-tls-cert-file needs --internal-tls-ca-file")
        return None
    root_certificates = _read_pem(ca_file, "--internal-tls-ca-file", _CERTIFICATE_PEM)
    if cert_file is None or key_file is None:  # both or neither, checked above
        return grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=_read_pem(key_file, "--internal-tls-key-file", _PRIVATE_KEY_PEM),
        certificate_chain=_read_pem(cert_file, "--internal-tls-cert-file", _CERTIFICATE_PEM),
    )


def internal_channel_credentials_from_flags(
    args: argparse.Namespace,
) -> grpc.ChannelCredentials | None:
    """load_channel_credentials() from the flags add_internal_tls_flags() defines."""
    return load_channel_credentials(
        args.internal_tls_ca_file, args.internal_tls_cert_file, args.internal_tls_key_file
    )
