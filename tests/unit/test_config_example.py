"""contrib/vac.conf.example stays valid and documents every option."""

import pathlib
import re

from vac.config import load_configuration
from vac.config.machinetypes import OPTIONS
from vac.config.settings import CONVERTERS

EXAMPLE = pathlib.Path(__file__).parents[2] / "contrib" / "vac.conf.example"


def test_the_example_loads_without_problems_or_warnings(tmp_path):
    # The example's Singularity account need not exist here; "nobody" does.
    text = EXAMPLE.read_text().replace("singularity_user = vacsing", "singularity_user = nobody")
    path = tmp_path / "vac.conf"
    path.write_text(text)
    config = load_configuration([str(path)], cpu_count=64)
    assert config.warnings == ()
    assert sorted(config.machinetypes) == ["example-docker", "example-singularity"]
    assert list(config.vacuum_pipes) == ["lhcb"]


def test_every_option_is_documented():
    text = EXAMPLE.read_text()
    written = set(re.findall(r"^#?([a-z_0-9]+) =", text, re.MULTILINE))
    assert set(CONVERTERS) - written == set()
    assert set(OPTIONS) - written == set()
