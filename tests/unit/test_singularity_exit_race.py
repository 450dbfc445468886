"""A Singularity machine whose launcher records its end while the runtime looks keeps its real exit code.

Seen under systemd: `systemctl stop vac.slice` ended two machines at once,
and one was finalised with 255 and an estimated end though its launcher had
recorded 143.
"""

import json

from vac.cgroups.layout import CgroupLayout
from vac.machine.layout import MachinePaths
from vac.runtimes.base import ContainerState
from vac.runtimes.singularity import SingularityRuntime

UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
CONTAINER_ID = f"singularity-{UUID}"


def machine_folder(state_dir):
    folder = MachinePaths.for_machine(state_dir, UUID).root / "singularity"
    folder.mkdir(parents=True)
    (folder / "container.json").write_text(json.dumps({
        "id": CONTAINER_ID, "name": "factory-00", "labels": {}, "created_at": 1.0,
        "cgroup_mode": "vac", "cgroup": f"/vac/machine-{UUID}", "tracking": "unified"}))
    (folder / "started").write_text(json.dumps({"started_at": 2.0}))
    return folder


def runtime(tmp_path):
    # A unified hierarchy with no cgroup of the machine: its payload holds nothing.
    layout = CgroupLayout(kind="v2", unified=tmp_path / "cgroup", v1={}, own={},
                          unified_controllers=frozenset({"cpu", "memory", "pids"}))
    (tmp_path / "cgroup").mkdir()
    return SingularityRuntime(tmp_path / "state", layout=layout)


def test_an_end_recorded_between_two_looks_is_the_recorded_one(tmp_path, monkeypatch):
    folder = machine_folder(tmp_path / "state")
    machines = runtime(tmp_path)
    handle = machines.inspect(CONTAINER_ID)
    judge = SingularityRuntime._handle

    def launcher_records_meanwhile(self, folder_, meta):
        # The launcher, done copying the payload's output, writes its record and exits.
        (folder / "exit_status").write_text(json.dumps({"exit_code": 143, "signal": 15, "finished_at": 9.0}))
        return judge(self, folder_, meta)

    monkeypatch.setattr(SingularityRuntime, "_handle", launcher_records_meanwhile)
    info = machines.exit_status(handle)
    assert (info.exit_code, info.finished_at) == (143, 9.0)


def test_an_end_nobody_recorded_is_unrecorded(tmp_path):
    machine_folder(tmp_path / "state")
    machines = runtime(tmp_path)
    handle = machines.inspect(CONTAINER_ID)
    assert handle.state is ContainerState.EXITED
    info = machines.exit_status(handle)
    assert (info.exit_code, info.finished_at) == (255, None)
