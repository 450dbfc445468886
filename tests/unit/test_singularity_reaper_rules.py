"""Which processes the reaper kills for the Singularity accounts, and why."""

import pytest

from vac.workers.singularity_reaper import ProcessView, condemned, machine_place

ACCOUNT = 1201
OTHER_ACCOUNT = 1202
ACCOUNTS = {ACCOUNT, OTHER_ACCOUNT}
ROOT = 0
NOBODY = 65534
ACTIVE = "aaaaaaaa-1111-4222-8333-444444444444"
FINISHED = "ffffffff-1111-4222-8333-444444444444"
UNRECORDED = "00000000-1111-4222-8333-444444444444"
STATES = {ACTIVE: True, FINISHED: False}


def view(uid, cgroup, pid=100):
    return ProcessView(pid=pid, uid=uid, username=str(uid), cmdline="sleep 600", cgroup=cgroup)


def reason(uid, cgroup, base="/vac"):
    """The reason the process is killed, or None if it is kept."""
    verdicts = condemned([view(uid, cgroup)], ACCOUNTS, STATES, base)
    assert len(verdicts) <= 1
    return verdicts[0][1] if verdicts else None


@pytest.mark.parametrize("uid, cgroup", [
    (ACCOUNT, f"/vac/machine-{ACTIVE}/payload"),
    (ACCOUNT, f"/vac/machine-{ACTIVE}/payload/apptainer/inner"),   # a cgroup Apptainer made
    (OTHER_ACCOUNT, f"/vac/machine-{ACTIVE}/payload"),              # any machine's account
    (ROOT, f"/vac/machine-{ACTIVE}/launcher"),
    (ACCOUNT, f"/vac/machine-{ACTIVE}/launcher"),                    # the payload child before it moves
    (ROOT, f"/vac/machine-{ACTIVE}"),                                # not an account: not ours to judge
    (ROOT, "/"),
    (NOBODY, "/user.slice/user-65534.slice"),
    (ROOT, f"/elsewhere/machine-{FINISHED}/payload"),                # not under vac's base
    (ACCOUNT, None),                                                 # gone before its cgroup was read
    (NOBODY, f"/vac/machine-{UNRECORDED}/payload/x"),                # another factory's machine
], ids=["payload", "below-payload", "other-account", "launcher", "account-in-launcher", "root-in-machine",
        "root-process", "other-user", "other-base", "cgroup-unknown", "other-factorys-machine"])
def test_kept(uid, cgroup):
    assert reason(uid, cgroup) is None


@pytest.mark.parametrize("uid, cgroup, why", [
    (ACCOUNT, "/", "outside the cgroup of any machine"),
    (ACCOUNT, "/user.slice/user-0.slice/session-4.scope", "outside the cgroup of any machine"),
    (ACCOUNT, "/vac", "outside the cgroup of any machine"),
    (ACCOUNT, f"/vac/machine-{ACTIVE}", f"in the cgroup of machine {ACTIVE} but outside its payload"),
    (ACCOUNT, f"/vac/machine-{ACTIVE}/payloadx", f"in the cgroup of machine {ACTIVE} but outside its payload"),
    (ACCOUNT, f"/vac/machine-{FINISHED}/payload", f"in the cgroup of machine {FINISHED}, which is finished"),
    (ROOT, f"/vac/machine-{FINISHED}/launcher", f"in the cgroup of machine {FINISHED}, which is finished"),
    (ACCOUNT, f"/vac/machine-{UNRECORDED}/payload/x",
     f"in the cgroup of machine {UNRECORDED}, which this factory has no record of"),
    (ACCOUNT, "/vac/machine-not-a-uuid/payload", "outside the cgroup of any machine"),
], ids=["root-cgroup", "login-session", "base-itself", "machine-itself", "payload-lookalike",
        "finished-payload", "finished-launcher", "unrecorded", "bogus-machine-name"])
def test_condemned(uid, cgroup, why):
    assert reason(uid, cgroup) == why


def test_under_systemd_the_scope_names_the_machine():
    base = "/vac.slice"
    assert reason(ACCOUNT, f"/vac.slice/vac-machine-{ACTIVE}.scope/payload", base) is None
    assert reason(ROOT, f"/vac.slice/vac-machine-{ACTIVE}.scope/launcher", base) is None
    assert reason(ACCOUNT, f"/vac.slice/vac-machine-{ACTIVE}.scope", base) == (
        f"in the cgroup of machine {ACTIVE} but outside its payload")
    assert reason(ROOT, f"/vac.slice/vac-machine-{FINISHED}.scope/payload", base) == (
        f"in the cgroup of machine {FINISHED}, which is finished")
    assert reason(ACCOUNT, f"/vac.slice/vac-machine-{ACTIVE}/payload", base) == (
        "outside the cgroup of any machine")


def test_a_base_given_with_a_trailing_slash_means_the_same():
    assert reason(ACCOUNT, f"/vac/machine-{ACTIVE}/payload", "/vac/") is None
    assert machine_place(f"/vac/machine-{ACTIVE}/payload", "/vac/") == (ACTIVE, "/payload")
    assert machine_place(f"/vacuum/machine-{ACTIVE}", "/vac") is None


def test_every_condemned_process_is_listed_once_in_order():
    processes = [view(ACCOUNT, "/", pid=1), view(ACCOUNT, f"/vac/machine-{ACTIVE}/payload", pid=2),
                 view(ROOT, f"/vac/machine-{FINISHED}/payload", pid=3), view(ROOT, "/", pid=4)]

    assert [process.pid for process, _ in condemned(processes, ACCOUNTS, STATES, "/vac")] == [1, 3]


def test_with_no_accounts_only_leftovers_of_inactive_machines_are_killed():
    processes = [view(ACCOUNT, "/", pid=1), view(ACCOUNT, f"/vac/machine-{FINISHED}/payload", pid=2)]

    assert [process.pid for process, _ in condemned(processes, set(), STATES, "/vac")] == [2]


def test_machines_of_both_placements_are_recognised_at_once():
    bases = ("/vac", "/vac.slice")
    processes = [view(ACCOUNT, f"/vac/machine-{ACTIVE}/payload", pid=1),
                 view(ACCOUNT, f"/vac.slice/vac-machine-{ACTIVE}.scope/payload", pid=2),
                 view(ROOT, f"/vac.slice/vac-machine-{FINISHED}.scope/launcher", pid=3),
                 view(ACCOUNT, "/system.slice/cron.service", pid=4)]

    assert [(process.pid, why) for process, why in condemned(processes, ACCOUNTS, STATES, bases)] == [
        (3, f"in the cgroup of machine {FINISHED}, which is finished"), (4, "outside the cgroup of any machine")]
