"""Throw-away certificate authorities for TLS tests, made with the ``openssl`` command line."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
from pathlib import Path

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LOOPBACK_NAMES = "IP:127.0.0.1,DNS:localhost"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@dataclasses.dataclass(frozen=True)
class Identity:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    name: str
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        # `req -x509` applies the default configuration's CA extensions (CA:TRUE).
        _openssl(
            "req",
            "-x509",
            *_EC_KEY,
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
        )
        return cls(name, cert, key)

    def issue(self, name: str, *, subject_alt_names: str = _LOOPBACK_NAMES) -> Identity:
        """A leaf certificate for ``name``, good for both TLS servers and TLS clients."""
        directory = self.cert.parent
        cert, key, request = (
            directory / f"{name}.crt",
            directory / f"{name}.key",
            directory / f"{name}.csr",
        )
        extensions = directory / f"{name}.ext"
        extensions.write_text(
            "basicConstraints = CA:FALSE\n"
            "keyUsage = digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth, clientAuth\n"
            f"subjectAltName = {subject_alt_names}\n"
        )
        _openssl("req", "-new", *_EC_KEY, "-keyout", key, "-out", request, "-subj", f"/CN={name}")
        _openssl(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            "-set_serial",
            f"0x{secrets.token_hex(8)}",
            "-days",
            "2",
            "-out",
            cert,
            "-extfile",
            extensions,
        )
        return Identity(cert, key)
