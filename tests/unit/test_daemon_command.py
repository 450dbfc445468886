"""`vacd`'s own command-line mistakes: one line saying what is wrong, never a traceback."""

from vac import daemon


def test_an_unwritable_log_file_is_one_line_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "no-such-dir" / "vacd.log"
    assert daemon.main(["--log-file", str(missing), "--check-config"]) == 1
    err = capsys.readouterr().err
    assert err == f"vacd: cannot log to {missing}: No such file or directory\n"


def test_paths_on_the_command_line_are_made_absolute_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = daemon.parse_args(["--state-dir", ".vac-demo", "--socket", "run/control.sock"])
    assert (args.state_dir, args.socket) == (str(tmp_path / ".vac-demo"), str(tmp_path / "run" / "control.sock"))


def test_an_empty_path_is_a_usage_error(capsys):
    for argv in (["--state-dir", ""], ["--socket", ""]):
        try:
            daemon.parse_args(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    err = capsys.readouterr().err
    assert "argument --state-dir: '' is not a path" in err and "argument --socket: '' is not a path" in err


def test_the_slots_need_the_engines_of_the_configured_models(tmp_path):
    from vac.config import load_configuration
    from vac.daemon import machine_models

    def models(text):
        path = tmp_path / "vac.conf"
        path.write_text("[settings]\nvac_space = s.example\nsingularity_user = nobody\n" + text)
        return machine_models(load_configuration([str(path)]))

    singularity = "[machinetype s]\nmachine_model = singularity\nroot_image = /images/s\nuser_data = u\n"
    docker = "[machinetype d]\nmachine_model = docker\nroot_image = docker://d\nuser_data = u\n"
    assert models(singularity) == ("singularity",), "a Singularity-only factory needs no Docker engine"
    assert models(singularity + docker) == ("docker", "singularity")
    assert models(singularity + "[vacuum_pipe p]\nvacuum_pipe_url = https://p.example/p.json\n") == (
        "docker", "singularity"), "a pipe may bring Docker machinetypes"
    assert models("") == ("docker",)
