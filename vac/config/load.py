"""Loading the configuration files into a checked Configuration, collecting every problem."""

from __future__ import annotations

from collections.abc import Mapping

from vac.config import files as config_files
from vac.config.files import RawValue
from vac.config.machinetypes import (DEPRECATED, NAME_RE, build_machinetype, convert_option,
                                     option_spec)
from vac.config.model import Configuration, Machinetype, Settings, VacuumPipe, frozen_mapping
from vac.config.problems import ConfigError, ConfigProblem
from vac.config.settings import read_settings
from vac.config.values import BadValue, check_http_url, ini_number

# Stands in for broken settings so machinetypes are still checked and reported.
_PLACEHOLDER_SETTINGS = Settings(vac_space="invalid", total_processors=1)


def load_configuration(paths=None, *, cpu_count: int | None = None) -> Configuration:
    """The checked configuration from `paths` (default: Vac's file set), or ConfigError."""
    config, problems, warnings = _load(paths, cpu_count)
    if config is None:
        raise ConfigError(problems, warnings)
    return config


def try_load_configuration(paths=None, *, cpu_count: int | None = None):
    """(configuration or None, problems): for reloads, where the old configuration stays."""
    config, problems, _ = _load(paths, cpu_count)
    return config, problems


def _load(paths, cpu_count):
    if paths is None:
        raw, problems = config_files.read_files(config_files.default_paths(), required=False)
    else:
        raw, problems = config_files.read_files(paths, required=True)
    warnings = []
    everywhere = ", ".join(raw.files) or "(no configuration file read)"
    settings_where = ", ".join(raw.section_files.get("settings", ())) or everywhere
    settings, settings_problems, settings_warnings = read_settings(
        raw.sections.get("settings"), settings_where, cpu_count=cpu_count)
    problems += settings_problems
    warnings += settings_warnings
    pipes, pipe_prefixes, machinetype_sections = {}, set(), {}
    sections, section_files = _without_vmtypes(raw, warnings)
    for section, options in sections.items():
        kind, _, name = section.partition(" ")
        where = section_files[section][-1]
        if section == "settings":
            continue
        if kind not in ("machinetype", "vacuum_pipe"):
            warnings.append(ConfigProblem(where, section, None, None, "unknown section, ignored"))
            continue
        if not NAME_RE.fullmatch(name):
            problems.append(ConfigProblem(where, section, None, None,
                                          "the name may contain only a-z, 0-9 and -"))
            continue
        if kind == "vacuum_pipe":
            pipe_prefixes.add(name)
            pipe = _read_pipe(name, options, where, problems, warnings)
            if pipe is not None:
                pipes[name] = pipe
        else:
            before = len(problems)
            checked = _read_options(section, options, problems, warnings)
            machinetype_sections[name] = (checked, options, where, len(problems) > before)
    machinetypes = {}
    for name, (checked, options, where, failed) in machinetype_sections.items():
        machinetype = _local_machinetype(name, checked, where, settings, pipe_prefixes, problems,
                                         written=options, failed=failed)
        if machinetype is not None:
            machinetypes[name] = machinetype
    if problems:
        return None, problems, warnings
    config = Configuration(
        settings=settings, machinetypes=frozen_mapping(sorted(machinetypes.items())),
        vacuum_pipes=frozen_mapping(sorted(pipes.items())),
        machinetype_options=frozen_mapping(
            (name, frozen_mapping(checked)) for name, (checked, _, _, _) in
            sorted(machinetype_sections.items())),
        files=raw.files, warnings=tuple(warnings))
    return config, [], warnings


def _read_options(section: str, options: Mapping[str, RawValue], problems, warnings) -> dict:
    """The checked, typed machinetype options of one section; problems collected."""
    checked = {}
    for name, raw_value in options.items():
        target = DEPRECATED.get(name, name)
        if target != name:
            if target in options:
                warnings.append(ConfigProblem(
                    raw_value.file, section, name, raw_value.text,
                    f"deprecated Vac option ignored: {target} is also set"))
                continue
            warnings.append(ConfigProblem(raw_value.file, section, name, raw_value.text,
                                          f"deprecated Vac option, read as {target}"))
        try:
            spec = option_spec(target)
            if spec is None:
                warnings.append(ConfigProblem(raw_value.file, section, name, raw_value.text,
                                              "unknown option, ignored"))
                continue
            checked[target] = convert_option(spec, raw_value.text, from_json=False,
                                             untrusted=False)
        except BadValue as error:
            problems.append(ConfigProblem(raw_value.file, section, name, raw_value.text,
                                          str(error)))
    return checked


def _read_pipe(prefix, options, where, problems, warnings) -> VacuumPipe | None:
    section = f"vacuum_pipe {prefix}"
    before = len(problems)
    url = options.get("vacuum_pipe_url")
    if url is None:
        problems.append(ConfigProblem(where, section, "vacuum_pipe_url", None,
                                      "required option is missing"))
    else:
        try:
            check_http_url(url.text)
        except BadValue as error:
            problems.append(ConfigProblem(url.file, section, "vacuum_pipe_url", url.text,
                                          str(error)))
    share = 0.0
    if "target_share" in options:
        raw_share = options["target_share"]
        try:
            share = ini_number(raw_share.text)
        except BadValue as error:
            problems.append(ConfigProblem(raw_share.file, section, "target_share",
                                          raw_share.text, str(error)))
    copied = {name: raw_value for name, raw_value in options.items()
              if name not in ("vacuum_pipe_url", "target_share")}
    checked = _read_options(section, copied, problems, warnings)
    if len(problems) > before:
        return None
    return VacuumPipe(prefix=prefix, url=url.text, target_share=share,
                      options=frozen_mapping(checked), file=where)


def _without_vmtypes(raw, warnings):
    """(sections, their files) with Vac's old [vmtype NAME] read as [machinetype NAME]."""
    sections, section_files = {}, dict(raw.section_files)
    for section, options in raw.sections.items():
        kind, _, name = section.partition(" ")
        if kind == "vmtype":
            warnings.append(ConfigProblem(section_files[section][-1], section, None, None,
                                          f"deprecated: read as [machinetype {name}]"))
            # A [machinetype NAME] of the same name wins, wherever it appears.
            section_files.setdefault(f"machinetype {name}", section_files[section])
            section = f"machinetype {name}"
            options = {**options, **sections.get(section, {})}
        elif section in sections:
            options = {**sections[section], **options}
        sections[section] = options
    return sections, section_files


def _local_machinetype(name, checked, where, settings, pipe_prefixes, problems, *, written,
                       failed) -> Machinetype | None:
    machinetype, build_problems = build_machinetype(
        name, checked, settings or _PLACEHOLDER_SETTINGS, files_name=name)
    if any(name.startswith(prefix + "-") for prefix in pipe_prefixes):
        # A section named like a pipe's machinetype may only complete or override
        # what the pipe sends; it is checked again once the pipe is expanded.
        return machinetype
    section = f"machinetype {name}"
    for option, value, reason in build_problems:
        if failed and (value is not None or option in written
                       or any(DEPRECATED.get(old) == option for old in written)):
            # Already reported as a bad value; checks across options would only echo it.
            continue
        problems.append(ConfigProblem(where, section, option, value, reason))
    if (machinetype is not None and machinetype.machine_model == "singularity"
            and settings is not None and not settings.singularity_accounts):
        problems.append(ConfigProblem(
            where, section, "machine_model", "singularity",
            "singularity machinetypes need singularity_user or singularity_user_prefix in [settings]"))
        return None
    return machinetype
