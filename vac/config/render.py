"""The effective configuration as INI text, secrets masked, for vacd --check-config."""

from __future__ import annotations

import dataclasses

from vac.config.model import Configuration, Machinetype, Settings

MASK = "********"
# Fields that are computed or carried along rather than written as options.
_NOT_OPTIONS = {"name", "files_name", "pipe", "user_data_options", "user_data_files",
                "machinefeatures_options"}


def render_effective(config: Configuration, expansions=()) -> str:
    """INI text a person can read and vac can read back (masked values aside)."""
    lines = ["# Effective vac configuration, read from:"]
    lines += [f"#   {path}" for path in config.files] or ["#   (no files)"]
    for warning in config.warnings:
        # The value is left out: a misspelt option may well hold a secret.
        lines.append(f"# warning: {dataclasses.replace(warning, value=None)}")
    lines += ["", "[settings]"]
    lines += _fields(config.settings)
    lines += _prefixed("user_data_option_", config.settings.user_data_options, mask=True)
    lines += _prefixed("user_data_file_", config.settings.user_data_files, mask=False)
    lines += _prefixed("machinefeatures_option_", config.settings.machinefeatures_options,
                       mask=False)
    for name, machinetype in config.machinetypes.items():
        lines += ["", f"[machinetype {name}]"] + _machinetype(machinetype)
    for name, options in config.machinetype_options.items():
        if name not in config.machinetypes:
            lines += ["", "# completes a machinetype sent by a pipe", f"[machinetype {name}]"]
            lines += _options(options)
    for prefix, pipe in config.vacuum_pipes.items():
        lines += ["", f"[vacuum_pipe {prefix}]", f"vacuum_pipe_url = {pipe.url}",
                  f"target_share = {_text(pipe.target_share)}"]
        lines += _options(pipe.options)
    for expansion in expansions:
        lines += ["", f"# machinetypes from [vacuum_pipe {expansion.prefix}]"]
        for problem in expansion.problems:
            lines.append(f"# problem: {problem}")
        for name, machinetype in expansion.machinetypes.items():
            lines += ["", f"# [machinetype {name}] from the pipe"]
            lines += ["# " + line for line in _machinetype(machinetype)]
    return "\n".join(lines) + "\n"


def _machinetype(machinetype: Machinetype) -> list[str]:
    return (_fields(machinetype)
            + _prefixed("user_data_option_", machinetype.user_data_options, mask=True)
            + _prefixed("user_data_file_", machinetype.user_data_files, mask=False))


def _fields(obj: Settings | Machinetype) -> list[str]:
    lines = []
    for field in dataclasses.fields(obj):
        if field.name in _NOT_OPTIONS:
            continue
        value = getattr(obj, field.name)
        if value is None:
            lines.append(f"# {field.name} is not set")
        else:
            lines.append(f"{field.name} = {_text(value, field.name)}")
    return lines


def _options(options) -> list[str]:
    return [f"{name} = {MASK if name.startswith('user_data_option_') else _text(value, name)}"
            for name, value in options.items()]


def _prefixed(prefix: str, values, *, mask: bool) -> list[str]:
    return [f"{prefix}{name} = {MASK if mask else value}" for name, value in values.items()]


def _text(value, name: str = "") -> str:
    if isinstance(value, bool):
        # Vac reads draining only as "yes"; the proxy flags as "true".
        if name == "draining":
            return "yes" if value else "no"
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)
