"""The `vac` command's arguments, messages and exit codes, against a scripted socket peer."""

import json
import socket
import threading

import pytest

from vac import cli, cli_render
from vac.control import protocol
from vac.ipc.framing import FrameDecoder


def test_usage_errors_exit_2(capsys):
    for argv in (["slot"], ["slot", "three"], ["no-such-command"], ["drain", "--deadline", "x"],
                 # Out-of-range times once reached the socket layer and ended in a traceback.
                 ["--timeout", "-5", "status"], ["--timeout", "nan", "status"], ["--timeout", "inf", "slots"],
                 ["--timeout", "0", "status"], ["drain", "--deadline", "nan"], ["drain", "--deadline", "-1"],
                 ["check", "--idle-warning", "1e400"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == cli.EXIT_USAGE
    assert "usage: vac" in capsys.readouterr().err


def test_the_socket_comes_from_the_option_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("VAC_SOCKET", raising=False)
    assert cli.build_parser().parse_args(["status"]).socket == "/run/vac/control.sock"
    monkeypatch.setenv("VAC_SOCKET", "/tmp/other.sock")
    assert cli.build_parser().parse_args(["status"]).socket == "/tmp/other.sock"
    assert cli.build_parser().parse_args(["--socket", "/x.sock", "status"]).socket == "/x.sock"


def test_the_help_names_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "3 vacd is not running" in out and "4 permission denied" in out
    assert "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN" in out


@pytest.mark.parametrize("argv, args", [
    (["drain"], {}),
    (["drain", "--deadline", "90"], {"deadline": 90.0}),
    (["stop-machine", "3"], {"slot": 3}),
    (["stop-machine", "3", "--reason", "disk full"], {"slot": 3, "reason": "disk full"}),
    (["reset-slot", "7"], {"slot": 7}),
    (["pause", "lhcb-prod"], {"machinetype": "lhcb-prod"}),
    (["slot", "0", "--json"], {"slot": 0}),
])
def test_each_subcommand_sends_its_arguments(argv, args):
    parsed = cli.build_parser().parse_args(argv)
    assert cli.SUBCOMMANDS[parsed.command].request(parsed) == args


def test_nothing_listening_exits_3_with_a_clear_message(tmp_path, capsys):
    path = str(tmp_path / "control.sock")
    assert cli.main(["--socket", path, "status"]) == cli.EXIT_NOT_RUNNING
    assert capsys.readouterr().err == f"vac: vacd is not running ({path}: No such file or directory)\n"
    # A socket left by a dead daemon: the file is there, nobody accepts.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    assert cli.main(["--socket", path, "slots"]) == cli.EXIT_NOT_RUNNING
    assert "vacd is not running" in capsys.readouterr().err
    assert cli.main(["--socket", path, "watch"]) == cli.EXIT_NOT_RUNNING


def test_check_says_unknown_on_stdout_when_vacd_does_not_answer(tmp_path, capsys):
    path = str(tmp_path / "control.sock")
    assert cli.main(["--socket", path, "check"]) == 3
    assert capsys.readouterr().out.startswith("VAC UNKNOWN - vacd is not running")


class ScriptedPeer:
    """A socket peer that answers each request with the next scripted frame (or closes)."""

    def __init__(self, path, answers):
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(5)
        self.answers = list(answers)
        self.requests = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        decoder = FrameDecoder(protocol.MAX_REQUEST_BYTES)
        with conn:
            while self.answers:
                for request in decoder.feed(conn.recv(65536)):
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if answer is None:
                        return
                    conn.sendall(answer(request["id"]))

    def join(self):
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize("answer, code, message", [
    (lambda i: protocol.error_frame(i, "failed", "slot 0 is running, not fatal"),
     cli.EXIT_FAILED, "vac: slot 0 is running, not fatal\n"),
    (lambda i: protocol.error_frame(i, "denied", "permission denied: reset-slot changes the "
                                                 "factory; uid 1000 may only read"),
     cli.EXIT_DENIED, "vac: permission denied: reset-slot changes the factory; uid 1000 may "
                      "only read\n"),
    (None, cli.EXIT_NOT_RUNNING, "vac: vacd closed the connection\n"),
])
def test_refusals_and_failures_have_their_exit_codes(tmp_path, capsys, answer, code, message):
    path = str(tmp_path / "control.sock")
    peer = ScriptedPeer(path, [answer])
    assert cli.main(["--socket", path, "reset-slot", "0"]) == code
    peer.join()
    assert peer.requests[0]["command"] == "reset-slot"
    assert peer.requests[0]["args"] == {"slot": 0}
    assert capsys.readouterr().err == message


def test_a_result_is_printed_as_a_table_or_as_json(tmp_path, capsys):
    result = {"alpha": {"target_share": 1.0, "running": 1, "processors": 2,
                        "backoff_until": None, "paused": False, "pipe": None}}
    path = str(tmp_path / "control.sock")
    peer = ScriptedPeer(path, [lambda i: protocol.reply_frame(i, result)])
    assert cli.main(["--socket", path, "machinetypes"]) == cli.EXIT_OK
    peer.join()
    assert capsys.readouterr().out.splitlines()[1].split() == ["alpha", "1", "1", "2", "-", "no",
                                                                "-"]
    (tmp_path / "control.sock").unlink()
    peer = ScriptedPeer(path, [lambda i: protocol.reply_frame(i, result)])
    assert cli.main(["--socket", path, "machinetypes", "--json"]) == cli.EXIT_OK
    peer.join()
    assert json.loads(capsys.readouterr().out) == result


def test_text_from_outside_reaches_the_terminal_escaped(tmp_path, capsys):
    # A slot's last shutdown_message and a pipe's error are written by others:
    # an escape sequence or a bidi override in them must not act on the terminal.
    hostile = "700 \x1b]0;owned\x07\x1b[2J done \u202eevil"
    slot = {"slot": 3, "state": "idle",
            "worker": {"state": "running", "pid": 103, "starts": 1, "failed_starts": 0, "last_exit": None},
            "restarts": 0, "machine": None, "machinetype": None, "processors": None, "container_id": None,
            "started_at": None, "elapsed_seconds": None, "shutdown_at": None, "error": None,
            "last_outcome": {"code": 700, "text": hostile[4:], "machinetype": "alpha",
                             "machine": "feedface-uuid", "ended_at": 0.0}}
    path = str(tmp_path / "control.sock")
    peer = ScriptedPeer(path, [lambda i: protocol.reply_frame(i, slot)])
    cli.main(["--socket", path, "slot", "3"])
    peer.join()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J done \\u202eevil" in out
    (tmp_path / "control.sock").unlink()
    peer = ScriptedPeer(path, [lambda i: protocol.error_frame(i, "failed", hostile)])
    cli.main(["--socket", path, "reset-slot", "3"])
    peer.join()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J" in err


def test_terminal_safe_keeps_newlines_and_plain_text():
    assert cli_render.terminal_safe("line one\nline two é ✓") == "line one\nline two é ✓"
    assert cli_render.terminal_safe("a\tb\rc\x7fd\x9be") == "a\\x09b\\x0dc\\x7fd\\x9be"
