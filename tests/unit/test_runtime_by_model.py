"""ModelRuntimes: each call goes to the runtime of the machine's model; find asks them all."""

import pytest

from vac.runtimes.base import ContainerHandle, ImageMissing, RuntimeUnavailable, StartFailed
from vac.runtimes.by_model import ModelRuntimes


class Recording:
    def __init__(self, name, handles=(), unavailable=False):
        self.name, self.handles, self.unavailable, self.calls = name, list(handles), unavailable, []

    def find(self, factory, slot=None, models=None, machine_uuid=None, brief=False):
        self.calls.append(("find", factory, slot))
        if self.unavailable:
            raise RuntimeUnavailable(f"{self.name} does not answer")
        return self.handles

    def ensure_image(self, image, deadline):
        self.calls.append(("ensure_image", image))

    def stop(self, handle, grace):
        self.calls.append(("stop", handle.id, grace))

    def close(self):
        self.calls.append(("close",))


def handle(id_, runtime, created):
    return ContainerHandle(id=id_, name=id_, runtime=runtime, created_at=created)


def test_calls_go_to_the_runtime_of_the_model_and_each_is_built_once():
    built = []
    docker, singularity = Recording("docker"), Recording("singularity")

    def builder(runtime):
        def build():
            built.append(runtime.name)
            return runtime
        return build

    runtimes = ModelRuntimes({"docker": builder(docker), "singularity": builder(singularity)})
    runtimes.ensure_image("docker://busybox", 1.0)
    runtimes.ensure_image("/cvmfs/unpacked.cern.ch/x", 1.0)
    runtimes.stop(handle("singularity-1", "singularity", 1.0), 5)
    runtimes.stop(handle("abc", "docker", 1.0), 7)
    assert docker.calls == [("ensure_image", "docker://busybox"), ("stop", "abc", 7)]
    assert singularity.calls == [("ensure_image", "/cvmfs/unpacked.cern.ch/x"), ("stop", "singularity-1", 5)]
    assert built == ["docker", "singularity"]
    runtimes.close()
    assert docker.calls[-1] == ("close",) and singularity.calls[-1] == ("close",)


def test_find_merges_oldest_first_and_skips_an_engine_no_record_needs():
    docker = Recording("docker", [handle("d", "docker", 5.0)])
    singularity = Recording("singularity", [handle("singularity-a", "singularity", 2.0)])
    runtimes = ModelRuntimes({"docker": lambda: docker, "singularity": lambda: singularity})
    assert [h.id for h in runtimes.find("f1", 3)] == ["singularity-a", "d"]
    docker.unavailable = True
    # No docker machine is recorded in the slot: a missing engine hides no machine.
    assert [h.id for h in runtimes.find("f1", 3, models={"singularity"})] == ["singularity-a"]
    # A docker machine is recorded: its engine must answer before anything is decided.
    with pytest.raises(RuntimeUnavailable):
        runtimes.find("f1", 3, models={"docker"})
    with pytest.raises(RuntimeUnavailable):
        runtimes.find("f1", 3)
    # A factory whose machinetypes run Docker needs its engine to answer, records or not.
    required = ModelRuntimes({"docker": lambda: docker, "singularity": lambda: singularity}, required=("docker",))
    with pytest.raises(RuntimeUnavailable):
        required.find("f1", 3, models=())


def test_a_model_the_factory_does_not_run_fails_the_start_not_the_slot():
    runtimes = ModelRuntimes({"docker": lambda: Recording("docker")})
    with pytest.raises(StartFailed, match="machine_model singularity is not run"):
        runtimes.for_model("singularity")
    with pytest.raises(ImageMissing):
        runtimes.ensure_image("/images/pilot.sif", 1.0)
