"""Reading the Vac-compatible INI files into sections of options that remember their file."""

from __future__ import annotations

import configparser
import glob
import os
from dataclasses import dataclass

from vac.config.problems import ConfigProblem

DEFAULT_DIRECTORY = "/etc/vac.d"
DEFAULT_FILES = ("/etc/vac.conf", "/var/run/vac.conf")


@dataclass(frozen=True)
class RawValue:
    """An option's text as written, and the file it came from."""

    text: str
    file: str


@dataclass(frozen=True)
class RawConfig:
    """Sections (lower-case names) of options, later files overriding earlier ones."""

    sections: dict[str, dict[str, RawValue]]
    section_files: dict[str, tuple[str, ...]]
    files: tuple[str, ...]


def default_paths(directory: str = DEFAULT_DIRECTORY, files=DEFAULT_FILES) -> list[str]:
    """Vac's file set: every *.conf in the directory (sorted), then the fixed files."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*.conf"))) + list(files)


def expand_paths(paths) -> list[str]:
    """Replace each directory in the list by the *.conf files it holds, sorted."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            expanded += sorted(glob.glob(os.path.join(glob.escape(path), "*.conf")))
        else:
            expanded.append(path)
    return expanded


def read_files(paths, *, required: bool = True) -> tuple[RawConfig, list[ConfigProblem]]:
    """Read and merge the files in order; a missing file is a problem only if required."""
    sections: dict[str, dict[str, RawValue]] = {}
    section_files: dict[str, list[str]] = {}
    files_read = []
    problems = []
    for path in expand_paths(paths):
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except FileNotFoundError:
            if required:
                problems.append(ConfigProblem(path, None, None, None, "file not found"))
            continue
        except (OSError, UnicodeDecodeError) as error:
            problems.append(ConfigProblem(path, None, None, None, f"cannot read the file: {error}"))
            continue
        parser = _parser()
        try:
            parser.read_string(text, source=path)
        except configparser.Error as error:
            # Keep going so one broken file still lets us report the others' problems.
            message = " ".join(str(error).split())
            problems.append(ConfigProblem(path, None, None, None,
                                          f"not a valid INI file: {message}"))
            continue
        files_read.append(path)
        for raw_name in parser.sections():
            name = " ".join(raw_name.lower().split())
            options = sections.setdefault(name, {})
            origins = section_files.setdefault(name, [])
            if path not in origins:
                origins.append(path)
            for option, text_value in parser.items(raw_name, raw=True):
                options[option] = RawValue(text_value.strip(), path)
    raw = RawConfig(sections, {name: tuple(files) for name, files in section_files.items()},
                    tuple(files_read))
    return raw, problems


def _parser() -> configparser.ConfigParser:
    # interpolation=None: Vac files contain literal % in URLs; strict=False: sections
    # and options may repeat, the last one wins as in Vac.
    return configparser.ConfigParser(interpolation=None, strict=False,
                                     default_section="\x00no default section\x00")
