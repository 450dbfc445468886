"""vac.config: the Vac-compatible configuration files and Vacuum Pipes, read into frozen data.

load_configuration() reads and checks the files; expand_pipe() turns a pipe document into
machinetypes; fetch_pipe() gets that document; render_effective() prints the result.
"""

from vac.config.fetch import FetchResult, fetch_pipe
from vac.config.load import load_configuration, try_load_configuration
from vac.config.model import (Configuration, Machinetype, Settings, VacuumPipe,
                              apply_overrides)
from vac.config.pipes import PipeError, PipeExpansion, effective_machinetypes, expand_pipe
from vac.config.problems import ConfigError, ConfigProblem
from vac.config.render import render_effective

__all__ = [
    "ConfigError", "ConfigProblem", "Configuration", "FetchResult", "Machinetype",
    "PipeError", "PipeExpansion", "Settings", "VacuumPipe", "apply_overrides",
    "effective_machinetypes", "expand_pipe",
    "fetch_pipe", "load_configuration", "render_effective", "try_load_configuration",
]
