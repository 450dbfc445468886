"""Configuration as plain data for frames, and machinetypes back from plain data, checked.

The root sends the pipe fetcher what expanding a pipe needs (settings, the
[vacuum_pipe] section, the local [machinetype PREFIX-*] options) as plain maps;
the fetcher sends back the machinetypes it expanded, also as plain maps. The
root trusts no child: machinetype_from_plain() checks every field again (type,
bounds, characters, the same checks as the configuration's), so what it
rebuilds is typed, bounded and encodable whatever a child sent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from vac.config import values
from vac.config.machinetypes import NAME_RE, OPTIONS, check_option_text, check_user_data_file
from vac.config.model import Machinetype, Settings, VacuumPipe, frozen_mapping
from vac.config.pipes import MAX_ENTRIES, MAX_NAME_CHARS
from vac.config.values import BadValue

# What a pipe's report may carry besides its machinetypes: the first problems
# as text, each cut to a bound; the rest are only counted.
MAX_PROBLEMS_SENT = 50
MAX_PROBLEM_CHARS = 1000
_MACHINETYPE_FIELDS = {field.name: field for field in dataclasses.fields(Machinetype)}
_REQUIRED = ("name", "machine_model", "root_image", "user_data")
_MAPPINGS = {"user_data_options": check_option_text, "user_data_files": check_user_data_file}


def to_plain(value):
    """A frozen configuration value as msgpack-able data (maps, lists, scalars)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    return value


def _frozen(value):
    # Back from plain data: lists were tuples and maps were read-only mappings.
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return frozen_mapping(value)
    return value


def settings_from_plain(fields: Mapping) -> Settings:
    """Settings from to_plain(settings) (sent by the root, which checked them)."""
    return Settings(**{key: _frozen(value) for key, value in fields.items()})


def options_from_plain(options: Mapping) -> dict:
    """Checked machinetype options from to_plain(options) (sent by the root)."""
    return {key: _frozen(value) for key, value in options.items()}


def pipe_from_plain(fields: Mapping) -> VacuumPipe:
    """A VacuumPipe from to_plain(pipe) (sent by the root)."""
    return VacuumPipe(**{**fields, "options": frozen_mapping(options_from_plain(fields["options"]))})


def bounded_text(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """Text from outside made safe to send and show: escaped, and cut to `limit` characters."""
    text = values.escaped(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_problem_text(text: object) -> None:
    """A problem or error line as a child may send it: bounded text without control characters."""
    if not isinstance(text, str):
        raise BadValue(f"{values.json_type(text)} where a line of text is needed")
    values.check_text(text, limit=MAX_PROBLEM_CHARS)


def machinetypes_from_plain(machinetypes: list, prefix: str) -> Mapping[str, Machinetype]:
    """The machinetypes of pipe `prefix` from their plain maps, each checked; BadValue if any is bad."""
    if not isinstance(machinetypes, list):
        raise BadValue(f"machinetypes is {values.json_type(machinetypes)}, not a list")
    if len(machinetypes) > MAX_ENTRIES:
        raise BadValue(f"{len(machinetypes)} machinetypes, more than {MAX_ENTRIES}")
    checked = {}
    for fields in machinetypes:
        machinetype = machinetype_from_plain(fields, prefix)
        if machinetype.name in checked:
            raise BadValue(f"machinetype {machinetype.name} sent twice")
        checked[machinetype.name] = machinetype
    return frozen_mapping(sorted(checked.items()))


def machinetype_from_plain(fields: object, prefix: str) -> Machinetype:
    """A Machinetype of pipe `prefix` from to_plain(machinetype), every field checked, or BadValue."""
    if not isinstance(fields, dict):
        raise BadValue(f"a machinetype is {values.json_type(fields)}, not a map")
    unknown = [key for key in fields if key not in _MACHINETYPE_FIELDS]
    if unknown:
        raise BadValue("unknown machinetype fields " + ", ".join(
            values.escaped(repr(key))[:40] for key in unknown[:5]))
    missing = [key for key in _REQUIRED if key not in fields]
    if missing:
        raise BadValue("machinetype without " + ", ".join(missing))
    name = fields["name"]
    if not (isinstance(name, str) and NAME_RE.fullmatch(name) and len(name) <= MAX_NAME_CHARS
            and name.startswith(prefix + "-")):
        raise BadValue(f"machinetype name {values.escaped(repr(name))[:80]} is not "
                       f"{prefix}-SUFFIX of a-z, 0-9 and -")
    checked = {}
    for key, value in fields.items():
        try:
            checked[key] = _field(key, value, prefix)
        except BadValue as error:
            raise BadValue(f"machinetype {name}: {key}: {error}") from None
    machinetype = Machinetype(**checked)
    if machinetype.min_processors > machinetype.max_processors:
        raise BadValue(f"machinetype {name}: min_processors greater than max_processors")
    if machinetype.min_wallclock_seconds > machinetype.max_wallclock_seconds:
        raise BadValue(f"machinetype {name}: min_wallclock_seconds greater than "
                       "max_wallclock_seconds")
    return machinetype


def _field(key, value, prefix):
    if key == "name":
        return value
    if key in ("files_name", "pipe"):
        # A pipe's machinetypes take their files from the pipe's directory, as in Vac.
        if value != prefix:
            raise BadValue(f"must be {prefix}")
        return value
    if key in _MAPPINGS:
        return _mapping(value, _MAPPINGS[key])
    if value is None and _MACHINETYPE_FIELDS[key].default is None:
        return None
    spec = OPTIONS.get(key)
    if spec is None:
        # A field added to Machinetype needs its check here before a child may send it.
        raise BadValue("no check is defined for this field")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise BadValue(f"{values.json_type(value)} where true or false is needed")
        return value
    if spec.kind in ("int", "number"):
        return _number(value, spec)
    if spec.kind == "words":
        return _words(value, spec)
    if not isinstance(value, str):
        raise BadValue(f"{values.json_type(value)} where a string is needed")
    spec.check(value, False)
    return value


def _number(value, spec):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"{values.json_type(value)} where a number is needed")
    if spec.kind == "int" and not isinstance(value, int):
        raise BadValue(f"{values.json_type(value)} where an integer is needed")
    if not math.isfinite(value):
        raise BadValue("not a finite number")
    spec.check_range(value)
    return value


def _words(value, spec):
    if not isinstance(value, list):
        raise BadValue(f"{values.json_type(value)} where a list is needed")
    if len(value) > spec.max_words:
        raise BadValue(f"{len(value)} entries, more than {spec.max_words}")
    for word in value:
        if not isinstance(word, str):
            raise BadValue(f"{values.json_type(word)} where a string is needed")
        values.check_text(word)
        if not word or any(character.isspace() for character in word):
            raise BadValue("an entry is empty or holds whitespace")
        spec.check(word, False)
    return tuple(value)


def _mapping(value, check):
    if not isinstance(value, dict):
        raise BadValue(f"{values.json_type(value)} where a map is needed")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise BadValue("keys and values must be strings")
        values.check_option_suffix(key)
        check(item, False)
    return frozen_mapping(sorted(value.items()))
