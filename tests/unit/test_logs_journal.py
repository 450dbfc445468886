"""Lines vacd writes to the journal carry their priority; elsewhere they carry a timestamp."""

import logging
import os

from vac import daemon, logs


def journal_environ(path):
    status = os.stat(path)
    return {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}


def test_levels_become_syslog_priorities():
    assert [logs.syslog_priority(level) for level in
            (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)] == [2, 3, 4, 6, 7]


def test_every_line_of_a_traceback_keeps_the_priority():
    assert logs.prefixed("failed\nTraceback:\n  line", 3) == "<3>failed\n<3>Traceback:\n<3>  line"


def test_stderr_is_the_journal_only_if_it_is_the_stream_systemd_named(tmp_path):
    named, other = tmp_path / "journal", tmp_path / "elsewhere"
    with open(named, "w") as stream, open(other, "w") as elsewhere:
        environ = journal_environ(named)
        assert logs.stream_is_journal(stream, environ)
        # A child whose stderr was sent to a file inherits JOURNAL_STREAM all the same.
        assert not logs.stream_is_journal(elsewhere, environ)
        assert not logs.stream_is_journal(stream, {})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})


def log_lines(tmp_path, monkeypatch, environ):
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setattr("sys.stderr", stream)
        for key, value in environ(path).items():
            monkeypatch.setenv(key, value)
        # The root's role, whatever child an earlier test played in this process.
        monkeypatch.setitem(logs._ROLE, "role", "vacd")
        logs.configure("INFO")
        try:
            logging.getLogger("vac.test").error("the engine failed\nsecond line")
            logging.getLogger("vac.test").info("a machine started")
        finally:
            logging.getLogger().handlers.clear()
    return path.read_text().splitlines()


def test_log_lines_to_the_journal_start_with_their_priority(tmp_path, monkeypatch):
    lines = log_lines(tmp_path, monkeypatch, journal_environ)
    pid = os.getpid()
    assert lines == [f"<3>vacd[{pid}] ERROR vac.test: the engine failed", "<3>second line",
                     f"<6>vacd[{pid}] INFO vac.test: a machine started"]


def test_log_lines_elsewhere_have_a_timestamp_and_no_priority(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    lines = log_lines(tmp_path, monkeypatch, lambda path: {})
    assert lines[0].endswith(f" vacd[{os.getpid()}] ERROR vac.test: the engine failed")
    assert lines[0][:4].isdigit() and not lines[0].startswith("<")


CONFIG = "[settings]\nvac_space = s.example\n"


def check(tmp_path, text, *options):
    config = tmp_path / "vac.conf"
    config.write_text(text)
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        environ = journal_environ(err_path)
        os.environ.update(environ)
        try:
            code = daemon.check_config(daemon.parse_args(["--check-config", "--config", str(config), *options]),
                                       out, err)
        finally:
            del os.environ["JOURNAL_STREAM"]
    return code, out_path.read_text(), err_path.read_text()


def test_check_config_quiet_prints_nothing_for_a_good_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    code, out, err = check(tmp_path, CONFIG, "--quiet")
    assert (code, out, err) == (0, "", "")
    code, out, _ = check(tmp_path, CONFIG)
    assert code == 0 and "vac_space = s.example" in out


def test_check_config_problems_reach_the_journal_as_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    code, out, err = check(tmp_path, CONFIG + "total_processors = many\n", "--quiet")
    assert code == 1 and out == ""
    assert err.startswith("<3>") and "total_processors" in err
