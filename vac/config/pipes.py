"""Vacuum Pipes: turning an experiment's JSON document into checked machinetypes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vac.config import values
from vac.config.machinetypes import (NAME_RE, USER_DATA_FILE, USER_DATA_OPTION,
                                     build_machinetype, convert_option, option_spec)
from vac.config.model import Machinetype, Settings, VacuumPipe, frozen_mapping
from vac.config.problems import ConfigProblem
from vac.config.values import BadValue

# Limits on what a pipe publisher can send (README, "Trust boundaries").
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_ENTRIES = 256
MAX_OPTIONS_PER_ENTRY = 256
MAX_NAME_CHARS = 64
DEFAULT_CACHE_SECONDS = 3600
# A pipe must not be able to pin its copy for ever, nor make the fetcher refetch
# (and the root take in the whole document again) every second.
SHORTEST_CACHE_SECONDS = 60
LONGEST_CACHE_SECONDS = 7 * 86400
_NO_VALUE = object()
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
PIPE_KEYS = frozenset((
    "accounting_fqan", "backoff_seconds", "container_command", "cvmfs_repositories",
    "fizzle_seconds", "disk_gb_per_processor", "heartbeat_file", "heartbeat_seconds",
    "image_signing_dn", "legacy_proxy", "machine_model", "max_processors",
    "max_wallclock_seconds", "min_processors", "min_wallclock_seconds", "mjf_http", "root_image",
    "suffix", "target_share", "tmp_binds", "user_data", "user_data_proxy"))


class PipeError(Exception):
    """The whole pipe document is unusable: none of its machinetypes can be created."""


@dataclass(frozen=True)
class PipeExpansion:
    """The machinetypes one pipe document yields, and why any entries were skipped."""

    prefix: str
    machinetypes: Mapping[str, Machinetype]
    problems: tuple[ConfigProblem, ...]
    cache_seconds: int


def parse_pipe_document(document) -> dict:
    """The pipe document as a dict with a list of machinetypes, or PipeError."""
    if isinstance(document, str):
        document = document.encode("utf-8", errors="surrogatepass")
    if isinstance(document, (bytes, bytearray)):
        if len(document) > MAX_DOCUMENT_BYTES:
            raise PipeError(f"document is {len(document)} bytes, more than {MAX_DOCUMENT_BYTES}")
        try:
            document = json.loads(document.decode("utf-8-sig"), parse_constant=_no_constant)
        except UnicodeDecodeError as error:
            raise PipeError(f"document is not UTF-8 text: {error}") from None
        except RecursionError:
            raise PipeError("document is not valid JSON: nested too deeply") from None
        except ValueError as error:
            raise PipeError(f"document is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise PipeError(f"document is {values.json_type(document)}, not a JSON object")
    entries = document.get("machinetypes")
    if not isinstance(entries, list):
        raise PipeError("document has no \"machinetypes\" list")
    if len(entries) > MAX_ENTRIES:
        raise PipeError(f"document has {len(entries)} machinetypes, more than {MAX_ENTRIES}")
    return document


def cache_seconds_of(document: dict) -> int:
    """How long the publisher wants its document cached, within vac's bounds."""
    try:
        seconds = values.json_int(document.get("cache_seconds", DEFAULT_CACHE_SECONDS))
    except BadValue:
        return DEFAULT_CACHE_SECONDS
    return max(SHORTEST_CACHE_SECONDS, min(seconds, LONGEST_CACHE_SECONDS))


def expand_pipe(pipe: VacuumPipe, document, local_machinetypes: Mapping[str, Mapping[str, object]],
                settings: Settings) -> PipeExpansion:
    """The pipe's machinetypes (PipeError if the document as a whole is unusable).

    Precedence: local [machinetype PREFIX-SUFFIX] options, then the [vacuum_pipe PREFIX]
    section, then the entry. A bad entry is skipped with its own problem."""
    document = parse_pipe_document(document)
    problems = []
    section = f"vacuum_pipe {pipe.prefix}"
    if "cache_seconds" in document:
        problem = _cache_seconds_problem(document["cache_seconds"])
        if problem is not None:
            problems.append(ConfigProblem(pipe.url, section, "cache_seconds",
                                          _value_text(document["cache_seconds"]), problem))
    entries = document["machinetypes"]
    # Every entry's valid share counts, even a skipped entry's, so skipping one
    # entry never changes the shares of the others.
    share_total = sum(_entry_share(entry) for entry in entries)
    machinetypes, seen = {}, set()
    for index, entry in enumerate(entries):
        machinetype, entry_problems = _expand_entry(
            pipe, index, entry, share_total, local_machinetypes, settings, seen)
        problems += entry_problems
        if machinetype is not None:
            machinetypes[machinetype.name] = machinetype
    for name in sorted(local_machinetypes):
        if name.startswith(pipe.prefix + "-") and name not in machinetypes:
            _, missing = build_machinetype(name, local_machinetypes[name], settings,
                                           files_name=name)
            if missing:
                problems.append(ConfigProblem(
                    pipe.url, section, None, None,
                    f"the pipe has no entry for the incomplete local [machinetype {name}], "
                    "which is not created"))
    return PipeExpansion(pipe.prefix, frozen_mapping(sorted(machinetypes.items())),
                         tuple(problems), cache_seconds_of(document))


def _cache_seconds_problem(value) -> str | None:
    try:
        seconds = values.json_int(value)
    except BadValue as error:
        return f"{error}; using {DEFAULT_CACHE_SECONDS}"
    if seconds < SHORTEST_CACHE_SECONDS:
        return (f"less than vac's floor of {SHORTEST_CACHE_SECONDS} seconds; "
                f"the document is fetched again after {SHORTEST_CACHE_SECONDS} seconds")
    if seconds > LONGEST_CACHE_SECONDS:
        return (f"more than vac's limit of {LONGEST_CACHE_SECONDS} seconds; "
                f"the document is fetched again after {LONGEST_CACHE_SECONDS} seconds")
    return None


def _expand_entry(pipe, index, entry, share_total, local_machinetypes, settings, seen):
    where = f"vacuum_pipe {pipe.prefix}: machinetypes[{index}]"

    def problem(option, value=_NO_VALUE, reason=""):
        text = None if value is _NO_VALUE else _value_text(value)
        return ConfigProblem(pipe.url, where, None if option is None else _key_text(option),
                             text, reason)

    if not isinstance(entry, dict):
        return None, [problem(None, reason=f"entry is {values.json_type(entry)}, "
                                           "not an object; skipped")]
    if len(entry) > MAX_OPTIONS_PER_ENTRY:
        return None, [problem(None, reason=f"entry has {len(entry)} keys, more than "
                                          f"{MAX_OPTIONS_PER_ENTRY}; skipped")]
    if "suffix" not in entry:
        return None, [problem("suffix", reason="entry has no suffix; skipped")]
    suffix = entry["suffix"]
    name = f"{pipe.prefix}-{suffix}" if isinstance(suffix, str) else None
    if name is None or not NAME_RE.fullmatch(suffix) or len(name) > MAX_NAME_CHARS:
        return None, [problem("suffix", suffix, f"the suffix must be a string of a-z, 0-9 and - "
                                                f"making a name of at most {MAX_NAME_CHARS} "
                                                "characters; entry skipped")]
    if name in seen:
        return None, [problem("suffix", suffix, f"a second entry for {name}; skipped")]
    seen.add(name)
    skipped = f"; machinetype {name} not created"
    checked, problems, unknown = {}, [], []
    for key, value in entry.items():
        if key == "suffix":
            continue
        if not _accepted(key):
            unknown.append(str(key))
            continue
        try:
            checked[key] = convert_option(option_spec(key), value, from_json=True, untrusted=True)
        except BadValue as error:
            problems.append(problem(key, value, f"{error}{skipped}"))
    if unknown:
        shown = ", ".join(_key_text(key) for key in sorted(unknown)[:10])
        shown += " ..." if len(unknown) > 10 else ""
        problems_unknown = [problem(None, reason=f"unknown keys ignored: {shown}")]
    else:
        problems_unknown = []
    if "target_share" in checked and checked["target_share"] < 0:
        problems.append(problem("target_share", entry["target_share"],
                                f"must not be negative{skipped}"))
    if problems:
        return None, problems_unknown + problems
    checked.pop("target_share", None)
    share = _entry_share(entry)
    checked["target_share"] = pipe.target_share * share / share_total if share_total > 0 else 0.0
    checked.update(pipe.options)
    checked.update(local_machinetypes.get(name, {}))
    machinetype, build_problems = build_machinetype(name, checked, settings,
                                                    files_name=pipe.prefix, pipe=pipe.prefix)
    problems = [problem(option, _NO_VALUE if value is None else value, f"{reason}{skipped}")
                for option, value, reason in build_problems]
    if machinetype is not None and not math.isfinite(machinetype.target_share):
        problems.append(problem("target_share", entry.get("target_share"),
                                f"the share is not a finite number{skipped}"))
    if (machinetype is not None and machinetype.machine_model == "singularity"
            and not settings.singularity_accounts):
        problems.append(problem("machine_model", "singularity",
                                f"neither singularity_user nor singularity_user_prefix is set in [settings]{skipped}"))
    if problems:
        return None, problems_unknown + problems
    return machinetype, problems_unknown


def _accepted(key) -> bool:
    return isinstance(key, str) and (
        key in PIPE_KEYS or key.startswith(USER_DATA_OPTION) or key.startswith(USER_DATA_FILE))


def _entry_share(entry) -> float:
    # Only a valid, non-negative number counts; anything else adds nothing.
    if not isinstance(entry, dict) or "target_share" not in entry:
        return 0.0
    try:
        share = values.json_number(entry["target_share"])
    except BadValue:
        return 0.0
    return share if 0 <= share <= 1e9 else 0.0


def _key_text(key: str) -> str:
    # Keys are remote text too: plain names as they are, anything else quoted and cut.
    if _PLAIN_KEY_RE.fullmatch(key):
        return key
    return repr(key[:40])


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _value_text(value) -> str:
    # Keep what goes into a problem small, however big the value sent.
    if isinstance(value, str):
        return value[:1000]
    try:
        return json.dumps(value)[:1000]
    except (TypeError, ValueError, RecursionError):
        return f"({values.json_type(value)})"


def effective_machinetypes(local: Mapping[str, Machinetype],
                           pipe_machinetypes) -> Mapping[str, Machinetype]:
    """Every machinetype in force: the local ones, with each pipe's ({name: Machinetype}) added.

    A pipe machinetype already carries the local section's options on top, so it
    replaces a local machinetype of the same name."""
    merged = dict(local)
    for machinetypes in pipe_machinetypes:
        merged.update(machinetypes)
    return frozen_mapping(sorted(merged.items()))
