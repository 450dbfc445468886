"""X.509 proxies for ##user_data_option_x509_proxy## (INTERFACES.md §11)."""

import datetime
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from vac.machine.prepare import MachineTerms, create_directory, prepare_machine
from vac.machine.x509_proxy import (LEGACY_PROXY_CN, PROXY_CERT_INFO_OID, ProxyError, make_proxy,
                                    proxy_cert_info_der, read_credentials)
from vac.runtimes.docker_api import PAYLOAD_PATHS

from slot_fakes import make_machinetype, make_settings, place_spec

# The real time: openssl verify checks the proxy's validity against its own clock.
NOW = int(time.time())
SHUTDOWN = NOW + 86400
DAY = datetime.timedelta(days=1)
VERIFY_DEADLINE_SECONDS = 30


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def _name(*cns):
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "UK"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eScience")]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns])


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki():
    """A CA and a host certificate it signed, valid from a day before NOW for `days` days."""
    ca_key = _key()
    ca_name = _name("Example CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(_utc(NOW) - DAY).not_valid_after(_utc(NOW) + 400 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    host_key = _key()

    def host(days):
        return (x509.CertificateBuilder().subject_name(_name("host", "f1.example.com")).issuer_name(ca_name)
                .public_key(host_key.public_key()).serial_number(2)
                .not_valid_before(_utc(NOW) - DAY).not_valid_after(_utc(NOW) + days * DAY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))

    return {"ca": ca, "host": host(365), "short_host": host(0.5), "host_key": host_key}


def _proxy(pki, **changes):
    arguments = dict(cert_pem=_pem(pki["host"]), key_pem=_key_pem(pki["host_key"]), proxy_cn="lhcb-prod",
                     legacy=False, now=NOW, not_after=SHUTDOWN)
    arguments.update(changes)
    return make_proxy(**arguments)


def _parts(text):
    certs = x509.load_pem_x509_certificates(text.encode())
    key = serialization.load_pem_private_key(text.encode(), password=None)
    return certs, key


def test_an_rfc_proxy_has_the_subject_issuer_lifetime_key_and_extensions_of_rfc3820(pki):
    text = _proxy(pki)
    certs, key = _parts(text)
    proxy, host = certs[0], pki["host"]

    assert certs[1:] == [host]
    assert proxy.subject == _name("host", "f1.example.com", "lhcb-prod")
    assert proxy.issuer == host.subject
    assert proxy.not_valid_before_utc == _utc(NOW) and proxy.not_valid_after_utc == _utc(SHUTDOWN)
    assert proxy.serial_number == NOW
    assert key.key_size >= 2048 and key.public_key().public_numbers() == proxy.public_key().public_numbers()
    usage = proxy.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert usage.critical
    assert (usage.value.digital_signature, usage.value.key_encipherment, usage.value.key_agreement,
            usage.value.key_cert_sign, usage.value.data_encipherment) == (True, True, True, False, False)
    info = proxy.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    assert info.critical
    # SEQUENCE { SEQUENCE { OID 1.3.6.1.4.1.3536.1.1.1.9 } }, the limited-proxy policy language.
    assert info.value.value == bytes.fromhex("300f300d060b2b06010401") + bytes.fromhex("9b5001010109")
    assert proxy.signature_hash_algorithm.name == "sha256"
    host.public_key().verify(proxy.signature, proxy.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
    assert "PRIVATE KEY-----\n" in text and "ENCRYPTED" not in text


def test_the_proxy_cert_info_der_is_built_byte_by_byte():
    assert proxy_cert_info_der("1.2.840.113549") == bytes.fromhex("300a" "3008" "0606" "2a864886f70d")


def test_a_legacy_proxy_adds_cn_limited_proxy_and_no_proxy_cert_info(pki):
    proxy = _parts(_proxy(pki, legacy=True))[0][0]
    assert proxy.subject == _name("host", "f1.example.com", LEGACY_PROXY_CN)
    assert PROXY_CERT_INFO_OID not in [extension.oid for extension in proxy.extensions]
    assert proxy.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).critical


def test_each_proxy_has_a_new_key(pki):
    assert _parts(_proxy(pki))[1].private_numbers() != _parts(_proxy(pki))[1].private_numbers()


def test_a_certificate_that_expires_before_the_shutdown_time_makes_no_proxy(pki):
    with pytest.raises(ProxyError, match="expires at .* before the machine's shutdown time"):
        _proxy(pki, cert_pem=_pem(pki["short_host"]))


def test_a_key_that_does_not_match_the_certificate_makes_no_proxy(pki):
    with pytest.raises(ProxyError, match="does not match the certificate"):
        _proxy(pki, key_pem=_key_pem(_key()))


def test_an_encrypted_key_or_no_certificate_is_refused(pki):
    encrypted = pki["host_key"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ProxyError, match="no unencrypted PEM private key"):
        _proxy(pki, key_pem=encrypted)
    with pytest.raises(ProxyError, match="holds no PEM certificate"):
        _proxy(pki, cert_pem=_key_pem(pki["host_key"]))


def test_certificate_and_key_may_share_one_file(pki):
    both = _pem(pki["host"]) + _key_pem(pki["host_key"])
    assert _parts(_proxy(pki, cert_pem=both, key_pem=both))[0][1:] == [pki["host"]]


def test_missing_files_are_named(tmp_path, pki):
    with pytest.raises(ProxyError, match=f"cannot read {tmp_path}/x509cert.pem"):
        read_credentials(tmp_path)
    (tmp_path / "x509cert.pem").write_bytes(_pem(pki["host"]))
    with pytest.raises(ProxyError, match=f"cannot read {tmp_path}/x509key.pem"):
        read_credentials(tmp_path)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_the_proxy_against_the_ca(tmp_path, pki):
    now = int(time.time())
    (tmp_path / "ca.pem").write_bytes(_pem(pki["ca"]))
    (tmp_path / "host.pem").write_bytes(_pem(pki["host"]))
    (tmp_path / "proxy.pem").write_text(_proxy(pki, now=now, not_after=now + 3600))
    result = subprocess.run(["openssl", "verify", "-allow_proxy_certs", "-CAfile", "ca.pem", "-untrusted",
                             "host.pem", "proxy.pem"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=VERIFY_DEADLINE_SECONDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "proxy.pem: OK"


# ---------------------------------------------------------------- preparing a machine


def _terms(tmp_path, pki, files_name="lhcb-prod", pipe=None, cert=True, shutdown_at=SHUTDOWN, **changes):
    settings = make_settings(tmp_path / "state")
    files = Path(settings.machinetypes_dir) / files_name / "files"
    files.mkdir(parents=True)
    (files / "template").write_text("#!/bin/sh\nproxy='##user_data_option_x509_proxy##'\n")
    if cert:
        (files / "x509cert.pem").write_bytes(_pem(pki["host"]))
        (files / "x509key.pem").write_bytes(_key_pem(pki["host_key"]))
    machinetype = make_machinetype("template", name="lhcb-prod", files_name=files_name, pipe=pipe,
                                   user_data_proxy=True, **changes)
    return MachineTerms.from_spec(place_spec(settings, machinetype, 1, NOW, shutdown_at=shutdown_at))


def test_a_prepared_machine_has_the_proxy_in_a_user_data_only_root_reads(tmp_path, pki):
    terms = _terms(tmp_path, pki)
    paths = create_directory(terms)
    prepare_machine(terms, paths, NOW, PAYLOAD_PATHS)

    text = paths.user_data.read_text()
    certs = x509.load_pem_x509_certificates(text.encode())
    assert certs[0].subject == _name("host", "f1.example.com", "lhcb-prod")
    assert certs[0].not_valid_after_utc == _utc(SHUTDOWN) and certs[1:] == [pki["host"]]
    info = paths.user_data.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert not [p for p in paths.root.iterdir() if p.name.startswith(".user_data")]


def test_a_prepared_legacy_proxy(tmp_path, pki):
    terms = _terms(tmp_path, pki, legacy_proxy=True)
    paths = create_directory(terms)
    prepare_machine(terms, paths, NOW, PAYLOAD_PATHS)
    proxy = x509.load_pem_x509_certificates(paths.user_data.read_bytes())[0]
    assert proxy.subject == _name("host", "f1.example.com", LEGACY_PROXY_CN)


def test_a_machine_whose_certificate_expires_first_is_not_prepared(tmp_path, pki):
    terms = _terms(tmp_path, pki, shutdown_at=NOW + 400 * 86400)
    paths = create_directory(terms)
    with pytest.raises(ProxyError, match="before the machine's shutdown time"):
        prepare_machine(terms, paths, NOW, PAYLOAD_PATHS)
    assert not paths.user_data.exists()


def test_a_pipe_machinetype_gets_a_proxy_only_from_the_sites_directory_of_the_pipe(tmp_path, pki):
    terms = _terms(tmp_path, pki, files_name="lhcb-pipe", pipe="lhcb-pipe", cert=False)
    paths = create_directory(terms)
    with pytest.raises(ProxyError, match=r"cannot read .*/lhcb-pipe/files/x509cert.pem"):
        prepare_machine(terms, paths, NOW, PAYLOAD_PATHS)
    assert not paths.user_data.exists()


def test_check_config_warns_of_a_missing_or_expiring_certificate_but_accepts_the_configuration(tmp_path, pki,
                                                                                                capsys):
    import io

    from vac.daemon import check_config, parse_args

    state_dir = tmp_path / "state"
    config = tmp_path / "vac.conf"
    config.write_text(f"[settings]\nvac_space = s.example\nstate_dir = {state_dir}\n"
                      "[machinetype good]\nmachine_model = docker\nroot_image = docker://busybox\n"
                      "user_data = ud\nuser_data_proxy = true\nmax_wallclock_seconds = 3600\n"
                      "[machinetype short]\nmachine_model = docker\nroot_image = docker://busybox\n"
                      "user_data = ud\nuser_data_proxy = true\nmax_wallclock_seconds = 172800\n"
                      "[machinetype none]\nmachine_model = docker\nroot_image = docker://busybox\n"
                      "user_data = ud\nuser_data_proxy = true\n")
    for name, cert in (("good", pki["short_host"]), ("short", pki["short_host"])):
        files = state_dir / "machinetypes" / name / "files"
        files.mkdir(parents=True)
        (files / "x509cert.pem").write_bytes(_pem(cert))
        (files / "x509key.pem").write_bytes(_key_pem(pki["host_key"]))
    out, err = io.StringIO(), io.StringIO()
    # NOW is a day into the host certificate's validity: the short one ends half a day later.
    assert check_config(parse_args(["--check-config", "--config", str(config)]), out, err) == 0
    warnings = err.getvalue().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("warning: [machinetype none] user_data_proxy: ")
    assert "x509cert.pem" in warnings[0] and warnings[0].endswith("its machines will end as 700 Failed to start")
    assert warnings[1].startswith("warning: [machinetype short] user_data_proxy: the certificate in ")
    assert "expires at" in warnings[1]
