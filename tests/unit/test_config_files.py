"""Reading the Vac file set: order, merging, missing files, INI dialect."""

import pytest

from vac.config import ConfigError, load_configuration, try_load_configuration
from vac.config.files import default_paths, read_files

SETTINGS = "[settings]\nvac_space = space.example.com\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_default_file_set_is_sorted_directory_then_fixed_files(tmp_path):
    write(tmp_path / "vac.d" / "20-b.conf", "")
    write(tmp_path / "vac.d" / "10-a.conf", "")
    write(tmp_path / "vac.d" / "notes.txt", "")
    paths = default_paths(str(tmp_path / "vac.d"), ("/etc/vac.conf", "/var/run/vac.conf"))
    assert paths == [str(tmp_path / "vac.d" / "10-a.conf"), str(tmp_path / "vac.d" / "20-b.conf"),
                     "/etc/vac.conf", "/var/run/vac.conf"]


def test_real_default_paths_end_with_the_vac_files():
    assert default_paths()[-2:] == ["/etc/vac.conf", "/var/run/vac.conf"]


def test_later_files_override_earlier_and_sections_merge(tmp_path):
    first = write(tmp_path / "a.conf", SETTINGS + "mb_per_processor = 1000\ndraining = yes\n")
    second = write(tmp_path / "b.conf", "[settings]\nmb_per_processor = 3000\n")
    config = load_configuration([first, second], cpu_count=4)
    assert config.settings.mb_per_processor == 3000
    assert config.settings.draining is True
    assert config.files == (first, second)


def test_a_directory_in_the_list_stands_for_its_sorted_conf_files(tmp_path):
    write(tmp_path / "d" / "10.conf", SETTINGS + "mb_per_processor = 1\n")
    write(tmp_path / "d" / "20.conf", "[settings]\nmb_per_processor = 2\n")
    write(tmp_path / "d" / "30.conf.rpmsave", "[settings]\nmb_per_processor = 3\n")
    config = load_configuration([str(tmp_path / "d")], cpu_count=4)
    assert config.settings.mb_per_processor == 2


def test_an_explicit_missing_file_is_an_error(tmp_path):
    present = write(tmp_path / "a.conf", SETTINGS)
    with pytest.raises(ConfigError) as caught:
        load_configuration([present, str(tmp_path / "missing.conf")], cpu_count=4)
    assert str(caught.value.problems[0]) == f"{tmp_path / 'missing.conf'}: file not found"


def test_missing_optional_files_are_fine(tmp_path):
    raw, problems = read_files([str(tmp_path / "none.conf")], required=False)
    assert problems == [] and raw.files == ()


def test_no_percent_interpolation_and_continuation_lines(tmp_path):
    path = write(tmp_path / "a.conf", SETTINGS + "user_data_option_url = http://x/%(a)s%%\n"
                 "factories = f1.example.com\n  f2.example.com\n")
    config = load_configuration([path], cpu_count=4)
    assert config.settings.user_data_options["url"] == "http://x/%(a)s%%"
    assert config.settings.factories == ("f1.example.com", "f2.example.com")


def test_option_names_are_lower_case(tmp_path):
    path = write(tmp_path / "a.conf", "[settings]\nVAC_SPACE = space.example.com\nMB_Per_Processor = 7\n")
    assert load_configuration([path], cpu_count=4).settings.mb_per_processor == 7


def test_repeated_options_and_sections_in_one_file_take_the_last(tmp_path):
    path = write(tmp_path / "a.conf", SETTINGS + "mb_per_processor = 1\nmb_per_processor = 5\n"
                 "[settings]\nprocessors_per_superslot = 2\n")
    settings = load_configuration([path], cpu_count=4).settings
    assert (settings.mb_per_processor, settings.processors_per_superslot) == (5, 2)


def test_a_broken_file_is_reported_along_with_other_problems(tmp_path):
    broken = write(tmp_path / "a.conf", "no section header here\n")
    other = write(tmp_path / "b.conf", SETTINGS + "mb_per_processor = lots\n")
    config, problems = try_load_configuration([broken, other], cpu_count=4)
    assert config is None
    texts = [str(problem) for problem in problems]
    assert texts[0].startswith(f"{broken}: not a valid INI file")
    assert f"{other} [settings] mb_per_processor = 'lots': not an integer" in texts


def test_undecodable_file_is_a_problem(tmp_path):
    path = tmp_path / "a.conf"
    path.write_bytes(b"[settings]\nvac_space = \xff\xfe\n")
    _, problems = try_load_configuration([str(path)], cpu_count=4)
    assert "cannot read the file" in str(problems[0])


def test_no_files_at_all_means_no_settings(tmp_path):
    config, problems = try_load_configuration([], cpu_count=4)
    assert config is None
    assert [str(problem) for problem in problems] == ["(no configuration file read): no [settings] section"]
