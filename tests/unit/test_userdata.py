"""user_data templating (INTERFACES.md §5) and reading templates and option files from disk."""

import os
import stat

import pytest

from vac import __version__
from vac.machine.layout import create_machine_directory
from vac.machine.userdata import (
    MANAGER_VERSION,
    USER_AGENT,
    Template,
    TemplateValues,
    UserDataError,
    obtain_template,
    read_option_files,
    render,
    resolve_local,
    split_user_data_options,
    write_user_data,
)

MACHINE_UUID = "3c2b1a09-8f7e-4d6c-9b5a-0e1f2a3b4c5d"

VALUES = TemplateValues(
    space="vac01.example.com",
    machinetype="lhcb-prod",
    machine_hostname="f1-03.example.com",
    manager_hostname="f1.example.com",
    machine_uuid=MACHINE_UUID,
    machinefeatures_url="/etc/machinefeatures",
    jobfeatures_url="/etc/jobfeatures",
    joboutputs_url="/var/spool/joboutputs",
    root_image_url="https://images.example.com/root.img",
    site="UKI-EXAMPLE",
    options={"queue": "prod"},
    file_contents={"cert": "CERT-PEM"},
)

# Every pattern of §5 and what it becomes with VALUES.
EVERY_PATTERN = [
    ("space", "vac01.example.com"),
    ("machinetype", "lhcb-prod"),
    ("machine_hostname", "f1-03.example.com"),
    ("manager_version", MANAGER_VERSION),
    ("manager_hostname", "f1.example.com"),
    ("machinefeatures_url", "/etc/machinefeatures"),
    ("jobfeatures_url", "/etc/jobfeatures"),
    ("joboutputs_url", "/var/spool/joboutputs"),
    ("manager_machinefeatures_url", "/etc/machinefeatures"),
    ("manager_jobfeatures_url", "/etc/jobfeatures"),
    ("manager_joboutputs_url", "/var/spool/joboutputs"),
    ("uuid", MACHINE_UUID),
    ("url", "https://templates.example.com/user_data"),
    ("root_image_url", "https://images.example.com/root.img"),
    ("site", "UKI-EXAMPLE"),
    ("vmtype", "lhcb-prod"),
    ("vm_hostname", "f1-03.example.com"),
    ("vmlm_version", MANAGER_VERSION),
    ("vmlm_hostname", "f1.example.com"),
    ("option_queue", "prod"),
    ("option_cert", "CERT-PEM"),
    ("file_cert", "CERT-PEM"),
]


@pytest.mark.parametrize("name, value", EVERY_PATTERN)
def test_every_pattern_is_filled(name, value):
    template = Template(f"before ##user_data_{name}## after", url="https://templates.example.com/user_data")

    assert render(template, VALUES) == f"before {value} after"


def test_every_occurrence_is_replaced():
    template = Template("##user_data_uuid##:##user_data_uuid##\n##user_data_space##")

    assert render(template, VALUES) == f"{MACHINE_UUID}:{MACHINE_UUID}\nvac01.example.com"


def test_manager_version_is_vac_compatible():
    assert MANAGER_VERSION == f"Vac-compatible vac {__version__}"
    assert USER_AGENT == f"vac/{__version__}"


def test_url_is_only_filled_when_fetched_over_http():
    assert render(Template("[##user_data_url##]"), VALUES) == "[]"
    assert render(Template("[##user_data_url##]", url="http://h/t"), VALUES) == "[http://h/t]"


def test_unset_site_and_root_image_url_leave_nothing():
    values = TemplateValues(space="s", machinetype="m", machine_hostname="h", manager_hostname="f",
                            machine_uuid=MACHINE_UUID, machinefeatures_url="a", jobfeatures_url="b",
                            joboutputs_url="c")

    assert render(Template("[##user_data_site##][##user_data_root_image_url##]"), values) == "[][]"


def test_leftover_patterns_are_deleted_and_others_kept():
    template = Template("a##user_data_unknown_1##b ##user_data_option_unset## ##not_ours## ##user_data_UPPER##")

    assert render(template, VALUES) == "ab  ##not_ours## ##user_data_UPPER##"


def test_explicit_option_wins_its_pattern_and_file_fills_the_file_pattern():
    values = TemplateValues(space="s", machinetype="m", machine_hostname="h", manager_hostname="f",
                            machine_uuid=MACHINE_UUID, machinefeatures_url="a", jobfeatures_url="b",
                            joboutputs_url="c", options={"proxy": "from-option"},
                            file_contents={"proxy": "from-file"})

    rendered = render(Template("##user_data_option_proxy## ##user_data_file_proxy##"), values)

    assert rendered == "from-option from-file"


def test_factory_made_proxy_fills_the_x509_proxy_option():
    values = TemplateValues(space="s", machinetype="m", machine_hostname="h", manager_hostname="f",
                            machine_uuid=MACHINE_UUID, machinefeatures_url="a", jobfeatures_url="b",
                            joboutputs_url="c", x509_proxy="PROXY-PEM", options={"x509_proxy": "ignored"})

    assert render(Template("##user_data_option_x509_proxy##"), values) == "PROXY-PEM"


def test_substituted_text_is_never_scanned_again():
    # One pass: a value that holds another pattern is put in as it is, so no
    # value can pull in (or multiply) another one.
    values = TemplateValues(space="S##user_data_uuid##", machinetype="M##user_data_space##",
                            machine_hostname="h", manager_hostname="f", machine_uuid=MACHINE_UUID,
                            machinefeatures_url="a", jobfeatures_url="b", joboutputs_url="c")

    rendered = render(Template("##user_data_space##|##user_data_machinetype##"), values)

    assert rendered == "S##user_data_uuid##|M##user_data_space##"


def _bomb_values(copies):
    # Each option's value repeats the next option's pattern: replaced in turn,
    # `copies` ** 3 copies of the last value would end up in the text.
    pattern = "##user_data_option_{}##"
    return TemplateValues(space="s", machinetype="m", machine_hostname="h", manager_hostname="f",
                          machine_uuid=MACHINE_UUID, machinefeatures_url="a", jobfeatures_url="b",
                          joboutputs_url="c", options={
                              "a": pattern.format("b") * copies, "b": pattern.format("c") * copies,
                              "c": pattern.format("d") * copies, "d": "x" * 100})


def test_a_template_bomb_stays_the_size_of_its_values():
    template = Template("##user_data_option_a##\n" * 1000)

    rendered = render(template, _bomb_values(100))

    assert len(rendered) == 1000 * (100 * len("##user_data_option_b##") + 1)
    assert "x" not in rendered


def test_a_rendered_text_past_its_limit_is_refused_before_it_is_built():
    values = _bomb_values(1)
    template = Template("##user_data_option_d##" * 200)

    assert len(render(template, values, max_rendered_bytes=200 * 100)) == 200 * 100
    with pytest.raises(UserDataError, match="rendered user_data would be more than the limit of 19999 bytes"):
        render(template, values, max_rendered_bytes=200 * 100 - 1)


def test_a_template_past_its_limit_is_refused():
    with pytest.raises(UserDataError, match="template is 11 bytes, more than the limit of 10"):
        render(Template("01234567890"), VALUES, max_template_bytes=10)


def test_template_bytes_that_are_not_utf8_survive(tmp_path):
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    (files_dir / "t").write_bytes(b"\xff\xfe ##user_data_uuid##\n")
    paths = create_machine_directory(tmp_path, MACHINE_UUID)

    write_user_data(paths, render(obtain_template("t", files_dir), VALUES))

    assert paths.user_data.read_bytes() == b"\xff\xfe " + MACHINE_UUID.encode() + b"\n"


def test_user_data_file_is_executable_0755(tmp_path):
    paths = create_machine_directory(tmp_path, MACHINE_UUID)
    old_umask = os.umask(0o077)
    try:
        write_user_data(paths, "#!/bin/sh\necho hello\n")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.lstat(paths.user_data).st_mode) == 0o755
    assert paths.user_data.read_text() == "#!/bin/sh\necho hello\n"


def test_template_from_files_dir_and_absolute_path(tmp_path):
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    (files_dir / "user_data").write_text("from files")
    (tmp_path / "abs").write_text("absolute")

    assert obtain_template("user_data", files_dir) == Template("from files")
    assert obtain_template(str(tmp_path / "abs"), files_dir) == Template("absolute")


@pytest.mark.parametrize("location", ["../secret", "sub/file", "..", "", "/etc/../etc/shadow"])
def test_template_locations_that_could_escape_are_refused(tmp_path, location):
    with pytest.raises(UserDataError):
        resolve_local(location, tmp_path)


def test_missing_and_oversized_templates_are_errors_naming_the_file(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 101)

    with pytest.raises(UserDataError, match="missing"):
        obtain_template("missing", tmp_path)
    with pytest.raises(UserDataError, match="limit of 100"):
        obtain_template("big", tmp_path, max_bytes=100)


def test_split_options_by_kind_and_refuse_bad_names():
    values, files = split_user_data_options({
        "user_data_option_queue": "prod", "user_data_file_cert": "cert.pem", "root_image": "docker://x"})

    assert values == {"queue": "prod"}
    assert files == {"cert": "cert.pem"}
    with pytest.raises(UserDataError):
        split_user_data_options({"user_data_option_Bad-Name": "x"})


def test_option_files_are_read_from_files_dir_or_absolute_paths(tmp_path):
    (tmp_path / "cert.pem").write_text("CERT")
    (tmp_path / "abs.pem").write_text("ABS")

    contents = read_option_files({"cert": "cert.pem", "other": str(tmp_path / "abs.pem")}, tmp_path)

    assert contents == {"cert": "CERT", "other": "ABS"}
    with pytest.raises(UserDataError, match="user_data_file_gone"):
        read_option_files({"gone": "nothing-here"}, tmp_path)
