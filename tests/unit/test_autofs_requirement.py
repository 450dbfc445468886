"""When the autofs tests skip and when a missing automounter fails the run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from autofs_map import _lists_autofs, missing_autofs  # noqa: E402


def kernel(has):
    return lambda: has


@pytest.mark.parametrize("env, required", [({}, False), ({"CI": "true"}, False),
                                           ({"VAC_REQUIRE_AUTOFS": "1"}, True),
                                           ({"CI": "true", "VAC_REQUIRE_AUTOFS": "1"}, True)])
def test_a_kernel_without_autofs_skips_unless_autofs_is_demanded(monkeypatch, env, required):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("VAC_REQUIRE_AUTOFS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    problem, must_fail = missing_autofs(is_root=True, has_automount=True, kernel_has_autofs=kernel(False))
    assert "kernel has no autofs" in problem
    assert must_fail is required


def test_a_missing_automount_program_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("VAC_REQUIRE_AUTOFS", raising=False)
    problem, must_fail = missing_autofs(is_root=True, has_automount=False, kernel_has_autofs=kernel(True))
    assert "no automount" in problem and must_fail


def test_autofs_runs_where_everything_is_there():
    assert missing_autofs(is_root=True, has_automount=True, kernel_has_autofs=kernel(True)) == (None, False)


def test_proc_filesystems_is_read_by_its_last_column(tmp_path):
    table = tmp_path / "filesystems"
    table.write_text("nodev\tsysfs\nnodev\tcgroup2\n\text4\n")
    assert not _lists_autofs(table)
    table.write_text("nodev\tsysfs\nnodev\tautofs\n")
    assert _lists_autofs(table)
    assert not _lists_autofs(tmp_path / "absent")
