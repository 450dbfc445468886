"""The CernVM-FS keeper as a real child of a real root."""

import psutil

from test_supervision import host_factory  # noqa: F401 (a fixture)


def latest_repositories(host):
    states = host.events("state", child="cvmfs-keeper")
    return states[-1]["detail"]["repositories"] if states else {}


def test_keeper_reports_ok_missing_and_hung_repositories_and_keeps_heartbeating(
        host_factory, tmp_path):  # noqa: F811
    (tmp_path / "cvmfs" / "ok.example.org").mkdir(parents=True)
    host = host_factory("cvmfs")

    def settled():
        repos = latest_repositories(host)
        return repos if repos and all(r["ok"] is not None for r in repos.values()) else None

    repos = host.wait_for(settled, timeout=15, what="every repository checked")
    assert repos["ok.example.org"] == {"ok": True, "reason": "ok"}
    assert repos["missing.example.org"]["ok"] is False
    assert "No such file" in repos["missing.example.org"]["reason"]
    assert repos["hung.example.org"] == {"ok": False, "reason": "no answer within 1 s"}

    keeper = host.ready_pids()["cvmfs-keeper"]
    title = " ".join(psutil.Process(keeper).cmdline()).strip()
    assert title == ("vacd: cvmfs-keeper [1 ok, 2 failing: hung.example.org, "
                     "missing.example.org]")
    # The hung check never made the keeper miss a heartbeat.
    (tmp_path / "cvmfs" / "missing.example.org").mkdir()
    host.wait_for(lambda: latest_repositories(host)["missing.example.org"]["ok"], timeout=10,
                  what="the repository to come back")
    assert host.events("hung") == [] and len(host.events("started")) == 1
    assert host.terminate() == 0
