"""`vacd`'s own command-line mistakes: one line saying what is wrong, never a traceback."""

from vac import daemon


def test_an_unwritable_log_file_is_one_line_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "no-such-dir" / "vacd.log"
    assert daemon.main(["--log-file", str(missing), "--check-config"]) == 1
    err = capsys.readouterr().err
    assert err == f"vacd: cannot log to {missing}: No such file or directory\n"
