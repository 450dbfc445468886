"""Machine/Job Features over HTTP from a Singularity machine of a whole vacd: it shares the host's
network, so the URLs Docker machines get work there too (read here with busybox wget)."""

import pytest

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from docker_daemon import create_events  # noqa: F401 (a fixture)
from docker_daemon import GATED_USER_DATA, Machinetype, Site, finish_and_check
from singularity_site import (busybox_directory_image, needs_singularity_tools,  # noqa: F401 (fixtures)
                              reachable_tmp_path, shared_root, slot_accounts)
from test_mjf_http_daemon import free_port
from test_singularity_daemon import singularity  # noqa: F401 (a fixture)
from vac.machine.mjf_http import TOKEN_FILE_NAME
from vac.workers.mjf import interface_ipv4

pytestmark = needs_singularity_tools

# Before waiting to be released, the machine reads two keys through its environment and keeps what it got.
USER_DATA = GATED_USER_DATA.replace("touch $out/ready", """\
echo "$MACHINEFEATURES $JOBFEATURES" > $out/environment
wget -qO $out/allocated_cpu $JOBFEATURES/allocated_cpu
wget -qO $out/shutdowntime $MACHINEFEATURES/shutdowntime
wget -qO $out/guessed ${JOBFEATURES%/*/*}/00000000000000000000000000000000/jobfeatures/allocated_cpu \
    || echo "refused $?" > $out/guessed
touch $out/ready""")


@pytest.mark.docker
def test_a_singularity_machine_reads_its_features_at_the_same_urls(
        tmp_path, factory_label, busybox_image, singularity, daemon_factory, docker_client,
        create_events):  # noqa: F811
    gateway = interface_ipv4("docker0")
    listen = f"mjf_http_listen = {gateway}:{free_port(gateway)}\n"
    sing = Machinetype("sing", model="singularity", wallclock=3600, user_data=USER_DATA,
                       options=("mjf_http = true",))
    site = Site(tmp_path, factory_label, busybox_image, [sing], processors=1, singularity=singularity,
                extra_settings=listen)
    daemon = daemon_factory(site.config)
    [machine] = site.wait_running(1, daemon)
    directory = site.state_dir / "machines" / machine.uuid
    base = f"http://{listen.split(' = ')[1].strip()}/{machine.uuid}/{(directory / TOKEN_FILE_NAME).read_text()}"
    assert (machine.joboutputs / "environment").read_text() == f"{base}/machinefeatures {base}/jobfeatures\n"
    assert (machine.joboutputs / "allocated_cpu").read_text() == "1"
    assert (machine.joboutputs / "shutdowntime").read_text() == (directory / "machinefeatures" / "shutdowntime"
                                                                  ).read_text()
    assert (machine.joboutputs / "guessed").read_text().startswith("refused ")
    finish_and_check(site, daemon, docker_client, create_events, [])
