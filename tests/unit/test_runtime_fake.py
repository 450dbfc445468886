"""The recording fake runtime behaves as the Docker runtime does, on a fake clock."""

import inspect
from dataclasses import replace
from pathlib import Path

import pytest

from runtime_fake import Behaviour, Call, FakeRuntime
from vac.runtimes.base import (ContainerGone, ContainerNotStarted, ContainerRequest, ContainerRuntime,
                               ContainerState, ExitInfo, ImageMissing, RuntimeUnavailable, StartFailed, Usage)
from vac.runtimes.docker import DockerRuntime
from vac.workers import slot_steps

IMAGE = "docker://vac-test-busybox:latest"


def request(slot=0, uuid_tail=1, machinetype="mt-a", image=IMAGE):
    machine = Path("/state/machines/m")
    return ContainerRequest(
        factory="f1.example.com", slot=slot, machine_uuid=f"00000000-0000-4000-8000-{uuid_tail:012d}",
        machinetype=machinetype, generation=1, machine_name=f"f1-{slot:02d}.example.com", image=image,
        command="/user_data", processors=1, memory_bytes=2 ** 30, pids_limit=100, user_data=machine / "user_data",
        machinefeatures=machine / "mf", jobfeatures=machine / "jf", joboutputs=machine / "jo")


@pytest.fixture
def fake():
    return FakeRuntime(images={"vac-test-busybox:latest"})


def started(fake, machine_request):
    return fake.start(fake.create(machine_request))


@pytest.mark.parametrize("implementation", [FakeRuntime, DockerRuntime])
def test_implementations_have_the_protocol_signatures(implementation):
    assert isinstance(implementation(), ContainerRuntime)
    for name, member in inspect.getmembers(ContainerRuntime, inspect.isfunction):
        if name.startswith("_"):
            continue
        protocol_parameters = list(inspect.signature(member).parameters)
        assert list(inspect.signature(getattr(implementation, name)).parameters) == protocol_parameters, name


def test_wait_blocks_until_the_deadline_then_returns_the_scripted_exit(fake):
    fake.behaviours["mt-a"] = Behaviour(run_seconds=100, exit_code=3)
    start = fake.clock()
    handle = started(fake, request())

    assert fake.wait(handle, start + 60) is None
    assert fake.clock() == start + 60
    assert fake.exit_status(handle) is None
    # As the engine: the start time comes with the end.
    assert fake.wait(handle, start + 1000) == ExitInfo(3, fake.clock.wall(), False, handle.started_at)
    assert fake.clock() == start + 100
    assert fake.inspect(handle.id).state == ContainerState.EXITED


def test_stop_obeyed_at_once_or_killed_after_the_grace(fake):
    fake.behaviours["mt-b"] = Behaviour(ignores_term=True)
    obeys = started(fake, request(slot=0))
    ignores = started(fake, request(slot=1, uuid_tail=2, machinetype="mt-b"))
    start = fake.clock()

    fake.stop(obeys, grace_seconds=30)
    assert (fake.exit_status(obeys).exit_code, fake.clock()) == (143, start)
    fake.stop(ignores, grace_seconds=30)
    assert (fake.exit_status(ignores).exit_code, fake.clock()) == (137, start + 30)


def test_create_is_idempotent_and_find_goes_by_labels(fake):
    first = fake.create(request(slot=2))
    fake.clock.advance(1)
    other = started(fake, request(slot=3, uuid_tail=2))

    assert fake.create(request(slot=2)) == first
    assert [handle.id for handle in fake.find("f1.example.com")] == [first.id, other.id]
    assert [handle.id for handle in fake.find("f1.example.com", slot=3)] == [other.id]
    assert fake.find("f2.example.com") == []


def test_missing_image_start_failure_and_never_started_wait(fake):
    with pytest.raises(ImageMissing):
        fake.ensure_image("docker://absent:1", fake.clock() + 60)
    with pytest.raises(ImageMissing):
        fake.create(request(image="docker://absent:1"))
    fake.behaviours["mt-broken"] = Behaviour(start_error="invalid mount")
    broken = fake.create(request(machinetype="mt-broken"))
    with pytest.raises(StartFailed, match="invalid mount"):
        fake.start(broken)
    with pytest.raises(ContainerNotStarted):
        fake.wait(broken, fake.clock() + 10)


def test_pull_takes_time_on_the_clock_and_may_miss_its_deadline(fake):
    fake.pullable = {"slow:1": 120.0, "quick:1": 5.0}
    start = fake.clock()
    fake.ensure_image("docker://quick:1", start + 60)
    assert fake.clock() == start + 5
    with pytest.raises(ImageMissing, match="deadline"):
        fake.ensure_image("docker://slow:1", start + 60)
    assert fake.clock() == start + 60


def test_usage_after_exit_is_only_what_was_sampled_before(fake):
    fake.behaviours["mt-a"] = Behaviour(run_seconds=100, cpu_per_second=0.5)
    sampled = started(fake, request(slot=0))
    unsampled = started(fake, request(slot=1, uuid_tail=2))
    fake.clock.advance(40)
    sampled_at = fake.clock.wall()
    assert fake.stats(sampled) == Usage(20.0, 100 * 1024 ** 2, sampled_at)

    fake.clock.advance(100)
    # The last sample, with the time it was taken: nothing newer is known.
    assert fake.stats(sampled) == Usage(20.0, 100 * 1024 ** 2, sampled_at)
    assert fake.stats(unsampled) == Usage(0.0, 0)


def test_engine_down_fails_every_call_and_calls_are_recorded(fake):
    handle = started(fake, request())
    fake.engine_down = True
    with pytest.raises(RuntimeUnavailable):
        fake.find("f1.example.com")
    fake.engine_down = False
    fake.kill(handle)
    fake.remove(handle)
    fake.remove(handle)

    with pytest.raises(ContainerGone):
        fake.inspect(handle.id)
    assert fake.calls[:3] == [Call("create", handle.name), Call("start", handle.name), Call("find", "f1.example.com")]
    assert fake.calls_to("remove") == [handle.name, handle.name]


def test_the_create_step_asks_for_a_docker_image_only_when_the_engine_lacks_it():
    present = FakeRuntime(images={"vac-test-busybox:latest"})
    handle = slot_steps.create(present, request())
    assert [call.method for call in present.calls] == ["create"]

    pulled = FakeRuntime(pullable={"vac-test-busybox:latest": 5.0})
    assert slot_steps.create(pulled, request()).name == handle.name
    assert [call.method for call in pulled.calls] == ["create", "ensure_image", "create"]

    missing = FakeRuntime()
    with pytest.raises(ImageMissing, match="pull of vac-test-busybox:latest failed"):
        slot_steps.create(missing, request())
    assert [call.method for call in missing.calls] == ["create", "ensure_image"]


def test_the_create_step_always_looks_at_a_singularity_image_which_may_need_refreshing():
    fake = FakeRuntime(images={"vac-test-busybox:latest"})
    slot_steps.create(fake, replace(request(), model="singularity"))
    assert [call.method for call in fake.calls] == ["ensure_image", "create"]
