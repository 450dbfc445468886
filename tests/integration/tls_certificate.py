"""A throwaway certificate for 127.0.0.1, and a grid-style CA directory that trusts it."""

import shutil
import ssl
import subprocess

import pytest


def serve_tls(httpd, directory):
    """Put `httpd` behind TLS; return (certificate file, CA directory holding it by subject hash)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no test certificate can be made")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    ca_dir = directory / "certificates"
    ca_dir.mkdir()
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
                                  check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    shutil.copy(cert, ca_dir / f"{subject_hash}.0")
    return cert, ca_dir
