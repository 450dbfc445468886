"""A machine's X.509 proxy in a real container: its root runs the 0700 /user_data and reads the
proxy, while another account in the container cannot read it."""

import datetime
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vac.config.model import Machinetype, Settings
from vac.machine.prepare import MachineTerms, container_request, create_directory, files_directory, prepare_machine
from vac.runtimes.docker import DockerRuntime
from vac.runtimes.docker_api import PAYLOAD_PATHS
from vac.supervisor.machine_spec import machine_spec
from vac.supervisor.scheduler import Placement

CONTAINER_DEADLINE_SECONDS = 30
MACHINE_LIFETIME_SECONDS = 3600

TEMPLATE = """#!/bin/sh
cat > /tmp/proxy.pem <<'X509_PROXY'
##user_data_option_x509_proxy##
X509_PROXY
grep -c 'BEGIN CERTIFICATE' /tmp/proxy.pem > $JOBOUTPUTS/certificates
grep -c 'BEGIN RSA PRIVATE KEY' /tmp/proxy.pem > $JOBOUTPUTS/keys
stat -c '%a %u' /user_data > $JOBOUTPUTS/mode
touch $JOBOUTPUTS/ready
exec sleep 300
"""


def _host_credentials():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _terms(tmp_path, factory, image):
    now = time.time()
    settings = Settings(vac_space="vac01.example.org", total_processors=1, state_dir=str(tmp_path / "state"),
                        mb_per_processor=256)
    machinetype = Machinetype(name="proxy-test", machine_model="docker", root_image=f"docker://{image}",
                              user_data="template", target_share=1.0, fizzle_seconds=60,
                              max_wallclock_seconds=MACHINE_LIFETIME_SECONDS,
                              min_wallclock_seconds=MACHINE_LIFETIME_SECONDS, files_name="proxy-test",
                              user_data_proxy=True)
    placement = Placement(machinetype="proxy-test", processors=1, shutdown_at=int(now) + MACHINE_LIFETIME_SECONDS,
                          superslot=1, new_superslot=True)
    return MachineTerms.from_spec(machine_spec(uuid=str(uuid.uuid4()), slot=1, factory_name=factory,
                                               machine_name=f"{factory}-01.example.org", settings=settings,
                                               machinetype=machinetype, placement=placement, placed_at=now))


@pytest.mark.docker
def test_only_the_containers_root_reads_the_proxy_in_user_data(tmp_path, docker_client, busybox_image,
                                                               factory_label):
    terms = _terms(tmp_path, factory_label, busybox_image)
    files = files_directory(terms)
    files.mkdir(parents=True)
    (files / "template").write_text(TEMPLATE)
    cert_pem, key_pem = _host_credentials()
    (files / "x509cert.pem").write_bytes(cert_pem)
    (files / "x509key.pem").write_bytes(key_pem)
    paths = create_directory(terms)
    prepared = prepare_machine(terms, paths, time.time(), PAYLOAD_PATHS)

    runtime = DockerRuntime(timeout=CONTAINER_DEADLINE_SECONDS)
    try:
        request = container_request(terms, paths, list(prepared.tmp_binds), generation=1)
        handle = runtime.create(request)
        runtime.start(handle)
        deadline = time.monotonic() + CONTAINER_DEADLINE_SECONDS
        while not (paths.joboutputs / "ready").exists():
            assert time.monotonic() < deadline, "the machine did not run its /user_data"
            time.sleep(0.05)
        # The proxy certificate and the host certificate, and the proxy's key.
        assert (paths.joboutputs / "certificates").read_text() == "2\n"
        assert (paths.joboutputs / "keys").read_text() == "1\n"
        assert (paths.joboutputs / "mode").read_text() == "700 0\n"
        other = docker_client.containers.get(handle.id).exec_run(["cat", "/user_data"], user="65534:65534")
        assert other.exit_code != 0 and b"PRIVATE KEY" not in other.output
    finally:
        runtime.close()
