"""Self-signed certificates for the devstack's TLS listeners (Kafka, Redis).

Made with Debian's ``openssl`` command, valid two days, for the loopback address
and ``localhost``; clients are given the certificate as their CA file.
"""

from __future__ import annotations

import functools
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.devstack.process import LOOPBACK, DevStackError

__all__ = ["TlsFiles", "self_signed_tls"]


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for a loopback server (clients trust ``cert`` as the CA)."""

    cert: Path
    key: Path
    #: The key and the certificate in one PEM file, as Kafka's PEM key store reads it.
    keystore: Path

    @functools.cached_property
    def client_context(self) -> ssl.SSLContext:
        """A client context trusting ``cert``, made once (readiness probes poll often)."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed_tls(directory: Path, host: str = LOOPBACK) -> TlsFiles:
    """Make a certificate for ``host`` and localhost with Debian's ``openssl`` (valid 2 days)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevStackError("a TLS server needs the openssl command (Debian's openssl package)")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "keystore.pem")
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",  # the key is unencrypted: it lives in the broker's own temp dir
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName=IP:{host},DNS:localhost",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise DevStackError(f"openssl could not make a certificate: {done.stderr.decode()[-400:]}")
    files.keystore.write_bytes(files.key.read_bytes() + files.cert.read_bytes())
    files.key.chmod(0o600)
    files.keystore.chmod(0o600)
    return files
