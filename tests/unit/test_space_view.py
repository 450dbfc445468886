"""The space as operators see it: `vac space` and `vac machines --space`, from the root's data to the terminal."""

import random
import types

import pytest

from vac import cli_space
from vac.config.load import load_configuration
from vac.control import commands
from vac.ipc import messages
from vac.space import report
from vac.space.factory_status import FactoryStatus
from vac.space.machine_status import MachineStatus
from vac.space.protocol import MachinetypeStatus
from vac.space.view import space_machines, space_view
from vac.supervisor.factory import Factory

NOW = 1_800_000_000.0


def figures(hs06=0.0, machines=0, processors=0, message=None, at=None, machine=None):
    return {"running_hs06": hs06, "running_machines": machines, "running_processors": processors,
            "num_before_fizzle": 0, "shutdown_message": message, "shutdown_time": at, "shutdown_machine": machine}


def answer(answered_at, machinetypes, factory=None, short=()):
    return {"answered_at": answered_at, "machinetypes": machinetypes, "factory": factory, "short": list(short)}


LOCAL = [MachinetypeStatus(factory="f1", machinetype="alpha", num_machinetypes=1, running_hs06=20.0,
                           running_machines=2, running_processors=2, num_before_fizzle=0,
                           shutdown_message="300 Nothing to do", shutdown_time=int(NOW - 600),
                           shutdown_machine="f1-03")]


def test_one_row_per_factory_this_one_first_and_the_silent_apart_with_why():
    answers = {
        "f2": answer(NOW - 20, {"alpha": figures(40.0, 4, 4, "200 Done", NOW - 5),
                                "beta": figures(8.0, 1, 8, "301 Tired", NOW - 100, "f2-07")},
                     {**vars(FactoryStatus("f2", running_processors=12, running_hs06=48.0, max_processors=24))},
                     short=["1 of 2 machinetypes"]),
        "f3": answer(NOW - 100, {"alpha": figures(1.0, 1, 1)}),
        "f4": answer(NOW - 1000, {"alpha": figures(1.0, 1, 1)}),
    }
    view = space_view(space="vac01", factory_name="f1", local_statuses=LOCAL,
                      local_factory=FactoryStatus("f1", running_processors=2, running_hs06=20.0, max_processors=8),
                      answers=answers, polled=["f2", "f3", "f4", "f5"],
                      silent={"f3": "no answer within 12 s (6 queries)", "f4": "no answer within 12 s (6 queries)",
                              "f5": "its name does not resolve: unknown host"},
                      poll={"started_at": NOW - 22, "ended_at": NOW - 20}, now=NOW)
    here, f2 = view["factories"]
    assert here == {"factory": "f1", "this_factory": True, "answered_at": NOW, "age_seconds": 0.0,
                    "processors_used": 2, "processors_total": 8, "hs06": 20.0, "machines": {"alpha": 2},
                    "last_abort": {"machinetype": "alpha", "message": "300 Nothing to do", "time": int(NOW - 600),
                                   "machine": "f1-03"}}
    assert (f2["age_seconds"], f2["processors_used"], f2["processors_total"], f2["hs06"], f2["machines"]) == (
        20.0, 12, 24, 48.0, {"alpha": 4, "beta": 1})
    assert f2["last_abort"]["message"] == "301 Tired" and f2["short"] == ["1 of 2 machinetypes"]
    assert view["silent"] == [
        {"factory": "f3", "reason": "no answer within 12 s (6 queries)", "last_answered_at": NOW - 100,
         "still_counted": True},
        {"factory": "f4", "reason": "no answer within 12 s (6 queries)", "last_answered_at": NOW - 1000,
         "still_counted": False},
        {"factory": "f5", "reason": "its name does not resolve: unknown host", "last_answered_at": None,
         "still_counted": False}]
    text = cli_space.render_space(view, NOW)
    lines = text.splitlines()
    assert lines[0] == "space vac01: polled 20s ago; * is this factory"
    assert lines[2].split()[:6] == ["f1", "*", "0s", "2/8", "20", "alpha=2"]
    assert "alpha 300 Nothing to do (10m ago)" in lines[2]
    assert lines[3].split()[:5] == ["f2", "20s", "12/24", "48", "alpha=4"]
    assert "  f3: no answer within 12 s (6 queries); last answer 1m ago (still counted)" in lines
    assert "  f5: its name does not resolve: unknown host" in lines


def test_a_factory_without_a_factory_status_is_summed_from_its_machinetypes():
    view = space_view(space="s", factory_name="f1", local_statuses=[], local_factory=FactoryStatus("f1"),
                      answers={"f2": answer(NOW, {"a": figures(4.0, 1, 2), "b": figures(6.0, 2, 3)})},
                      polled=["f2"], silent={}, poll={}, now=NOW)
    f2 = view["factories"][1]
    assert (f2["processors_used"], f2["processors_total"], f2["hs06"], f2["last_abort"]) == (5, None, 10.0, None)
    assert "not polled yet" in cli_space.render_space(view, NOW).splitlines()[0]


def machine(factory, name, **fields):
    return MachineStatus(factory=factory, num_machines=2, machine=name, state="Running", **fields)


def test_every_machine_of_the_space_this_factorys_first():
    rows = {"f2": report.machine_rows([machine("f2", "f2-00", machinetype="alpha", num_processors=4,
                                               cpu_percentage=390.5, started_time=int(NOW - 3600),
                                               heartbeat_time=int(NOW - 30))])}
    result = space_machines(factory_name="f1", local_machines=[machine("f1", "f1-00", machinetype="beta")],
                            machines=rows, silent={"f3": "no answer within 12 s (6 queries)"}, left_out=3,
                            poll={"ended_at": NOW})
    assert [(m["factory"], m["machine"]) for m in result["machines"]] == [("f1", "f1-00"), ("f2", "f2-00")]
    lines = cli_space.render_machines(result, NOW).splitlines()
    assert lines[2].split() == ["f2", "f2-00", "Running", "alpha", "4", "390.5", "1h00m", "ago", "30s", "ago", "-"]
    assert lines[-2].startswith("and 3 more machines") and lines[-1] == (
        "not answering: f3: no answer within 12 s (6 queries)")


class Client:
    """The control client's part fetch() uses, answering from a script."""

    def __init__(self, done_after):
        self.calls = []
        self.done_after = done_after

    def request(self, command, **args):
        self.calls.append((command, args))
        if command == "space_poll":
            return {"request": 4, "wait_seconds": 25.0}
        looked = sum(1 for call in self.calls if call[0] == "space")
        return {"poll": {"request_done": 4 if looked > self.done_after else 3}}


def test_a_fresh_poll_is_waited_for_within_what_vacd_says_it_takes():
    clock = [0.0]
    client = Client(done_after=3)
    result, why = cli_space.fetch(client, "space", fresh=True, clock=lambda: clock[0],
                                  sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert why is None and result["poll"]["request_done"] == 4
    assert client.calls[0] == ("space_poll", {"machines": False}) and len(client.calls) == 5
    slow = Client(done_after=10**6)
    result, why = cli_space.fetch(slow, "space", fresh=True, clock=lambda: clock[0],
                                  sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert "did not finish the poll within 27 s" in why and result["poll"]["request_done"] == 3
    assert cli_space.fetch(Client(0), "space", fresh=False)[1] is None


CONFIG = """
[settings]
vac_space = space.example.com
factory_name = f1.example.com
factories = f2.example.com
total_processors = 2
udp_timeout_seconds = 4

[machinetype work]
machine_model = docker
root_image = docker://work:latest
user_data = work.user_data
target_share = 1
"""


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "vac.conf").write_text(CONFIG)
    factory = Factory(load_configuration([str(tmp_path / "vac.conf")]), factory_name="f1.example.com",
                      rng=random.Random(1), clock=lambda: NOW, load_average=lambda: 0.0)
    for slot in range(2):
        factory.on_message(f"slot-0{slot}", messages.StateReport(
            child_id=f"slot-0{slot}", state="idle", detail={"slot": slot, "machine": None}))
    return commands.Context(root=types.SimpleNamespace(live={"vacquery": object()}), factory=factory)


def test_an_operators_polls_join_one_on_its_way_and_are_answered_by_number(ctx):
    first = commands.space_poll(ctx, {"machines": False})
    assert first == {"request": 1, "wait_seconds": 5.0 + 2 * 4}
    assert commands.space_poll(ctx, {"machines": False})["request"] == 1, "joined to the one on its way"
    assert commands.space_poll(ctx, {"machines": True})["request"] == 2, "machines need a poll that asks them"
    assert commands.space_poll(ctx, {"machines": False})["request"] == 2
    sent = [msg for child, msg in ctx.factory.tick(False) if child == "vacquery"]
    assert [(m.request, m.machines) for m in sent if isinstance(m, messages.SpaceRequest)] == [(1, False), (2, True)]
    rows = report.machine_rows([machine("f2.example.com", "f2-00.example.com")])
    ctx.factory.on_message("vacquery", messages.SpaceStatus(
        factories={"f2.example.com": answer(NOW, {"work": figures(1.0, 1, 1)})}, polled=["f2.example.com"],
        machines={"f2.example.com": rows}, request=2, started_at=NOW - 1, ended_at=NOW))
    space = commands.space(ctx, {})
    assert space["poll"]["request_done"] == 2 and [r["factory"] for r in space["factories"]] == [
        "f1.example.com", "f2.example.com"]
    listed = commands.space_machines(ctx, {})
    assert [m["machine"] for m in listed["machines"]] == ["f1-00.example.com", "f1-01.example.com",
                                                          "f2-00.example.com"]
    assert [m["machine"] for m in commands.machines(ctx, {})] == ["f1-00.example.com", "f1-01.example.com"]
    assert commands.space_poll(ctx, {"machines": True})["request"] == 3, "answered: a new one"


def test_a_factory_of_no_space_or_without_vacquery_says_so(ctx):
    ctx.root.live = {}
    with pytest.raises(commands.CommandFailed, match="vacquery is not running"):
        commands.space_poll(ctx, {"machines": False})
    lone = commands.Context(root=ctx.root, factory=types.SimpleNamespace(
        config=types.SimpleNamespace(settings=types.SimpleNamespace(vac_space=None))))
    for command in (commands.space, commands.space_machines):
        with pytest.raises(commands.CommandFailed, match="belongs to no space"):
            command(lone, {})
