"""X.509 proxies for ##user_data_option_x509_proxy## (INTERFACES.md §11).

make_proxy() is pure: certificate and key in, proxy PEM out, no clock and no
files; read_credentials() reads the machinetype's x509cert.pem and x509key.pem.
The proxy is RFC 3820 (a critical proxyCertInfo with the limited-proxy policy
language), or a Globus legacy proxy (`CN=limited proxy`, no proxyCertInfo),
valid from `now` until the machine's shutdown time, so a pilot's credential
never outlives its machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vac.machine.userdata import UserDataError, read_local_file

CERT_FILE_NAME = "x509cert.pem"
KEY_FILE_NAME = "x509key.pem"
# A certificate with its chain, or a key, is a few kB; anything far larger is not one.
MAX_CREDENTIAL_BYTES = 256 * 1024
# Vac used 1024 bits, which no grid service accepts any more.
PROXY_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
LEGACY_PROXY_CN = "limited proxy"
PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
LIMITED_PROXY_POLICY_OID = "1.3.6.1.4.1.3536.1.1.1.9"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


class ProxyError(UserDataError):
    """No proxy can be made; the message says which file or what is wrong (700 Failed to start)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """The PEM text of the machinetype's certificate (with any chain) and of its key."""
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path


def _read(path: Path) -> bytes:
    try:
        return read_local_file(path, MAX_CREDENTIAL_BYTES)
    except UserDataError as error:
        raise ProxyError(f"user_data_proxy: {error}") from error


def read_credentials(files_dir: Path) -> Credentials:
    """x509cert.pem and x509key.pem from the machinetype's files/ directory (ProxyError names a bad one)."""
    cert_path = Path(files_dir) / CERT_FILE_NAME
    key_path = Path(files_dir) / KEY_FILE_NAME
    return Credentials(_read(cert_path), _read(key_path), cert_path, key_path)


def _blocks(data: bytes, labels: set[bytes]) -> list[bytes]:
    return [match.group(0) for match in _PEM_BLOCK.finditer(data) if match.group(1) in labels]


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def proxy_cert_info_der(policy_language: str = LIMITED_PROXY_POLICY_OID) -> bytes:
    """RFC 3820 ProxyCertInfo: SEQUENCE { proxyPolicy SEQUENCE { policyLanguage } }, no path length limit."""
    # cryptography has no class for this extension, so its DER is built here.
    return _der(0x30, _der(0x30, _der_oid(policy_language)))


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(int(moment), tz=timezone.utc)


def checked_credentials(cert_pem: bytes, key_pem: bytes, *, now: float, not_after: float,
                        where: str = CERT_FILE_NAME):
    """(certificate, its RSA key, the certificate's PEM blocks) if they can sign a proxy valid until `not_after`.

    ProxyError says why not: no certificate or key, unreadable, not RSA, not a pair, not valid all that time.
    """
    cert_blocks = _blocks(cert_pem, {b"CERTIFICATE"})
    if not cert_blocks:
        raise ProxyError(f"user_data_proxy: {where} holds no PEM certificate")
    key_blocks = _blocks(key_pem, _KEY_LABELS)
    if not key_blocks:
        raise ProxyError(f"user_data_proxy: the key file holds no unencrypted PEM private key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_blocks[0])
    except ValueError as error:
        raise ProxyError(f"user_data_proxy: the certificate in {where} cannot be read: {error}") from None
    try:
        signing_key = serialization.load_pem_private_key(key_blocks[0], password=None)
    except (ValueError, TypeError) as error:
        raise ProxyError(f"user_data_proxy: the key cannot be read (vac needs it unencrypted): {error}") from None
    if not isinstance(signing_key, rsa.RSAPrivateKey):
        raise ProxyError("user_data_proxy: the key is not an RSA key")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (signing_key.public_key().public_bytes(serialization.Encoding.DER, public)
            != certificate.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ProxyError(f"user_data_proxy: the key does not match the certificate in {where}")
    if not_after <= now:
        raise ProxyError("user_data_proxy: the machine's shutdown time has already passed")
    if certificate.not_valid_before_utc > _utc(now):
        raise ProxyError(f"user_data_proxy: the certificate in {where} is not valid until "
                         f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if certificate.not_valid_after_utc < _utc(not_after):
        raise ProxyError(f"user_data_proxy: the certificate in {where} expires at "
                         f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, before the machine's "
                         f"shutdown time {_utc(not_after):%Y-%m-%d %H:%M:%S} UTC; no proxy is made")
    return certificate, signing_key, cert_blocks


def credential_problem(files_dir: Path, now: float, not_after: float) -> str | None:
    """Why x509cert.pem and x509key.pem in `files_dir` could not make a proxy valid until `not_after`; None if they can."""
    try:
        credentials = read_credentials(files_dir)
        checked_credentials(credentials.cert_pem, credentials.key_pem, now=now, not_after=not_after,
                            where=str(credentials.cert_path))
    except ProxyError as error:
        return str(error)
    return None


def make_proxy(cert_pem: bytes, key_pem: bytes, *, proxy_cn: str, legacy: bool, now: float,
               not_after: float, where: str = CERT_FILE_NAME, key_bits: int = PROXY_KEY_BITS) -> str:
    """The proxy PEM: proxy certificate, its unencrypted key, then the original chain.

    `proxy_cn` is the RFC 3820 proxy's added CN (the machinetype's name);
    a legacy proxy's is always `limited proxy`. ProxyError if the certificate
    is unusable, expires before `not_after`, or does not match the key.
    """
    if key_bits < PROXY_KEY_BITS:
        raise ProxyError(f"user_data_proxy: a proxy key of {key_bits} bits is less than {PROXY_KEY_BITS}")
    certificate, signing_key, cert_blocks = checked_credentials(cert_pem, key_pem, now=now, not_after=not_after,
                                                                where=where)

    proxy_key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=key_bits)
    added_cn = LEGACY_PROXY_CN if legacy else proxy_cn
    subject = x509.Name(list(certificate.subject) + [x509.NameAttribute(NameOID.COMMON_NAME, added_cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(certificate.subject)
               .public_key(proxy_key.public_key())
               # Serial from the time, as Vac's; proxies of one certificate differ in their CN or second.
               .serial_number(max(1, int(now)))
               .not_valid_before(_utc(now))
               .not_valid_after(_utc(not_after))
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=True, data_encipherment=False,
                                            key_agreement=True, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True))
    if not legacy:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, proxy_cert_info_der()), critical=True)
    proxy = builder.sign(signing_key, hashes.SHA256())
    key_text = proxy_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
    chain = b"".join(block if block.endswith(b"\n") else block + b"\n" for block in cert_blocks)
    return (proxy.public_bytes(serialization.Encoding.PEM) + key_text + chain).decode("ascii")
