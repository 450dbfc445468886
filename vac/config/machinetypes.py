"""Machinetype options: checking each one, then building a complete Machinetype."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vac.config import values
from vac.config.model import DEFAULT_MAX_WALLCLOCK_SECONDS, MACHINE_MODELS, Machinetype, Settings, frozen_mapping
from vac.config.values import BadValue

NAME_RE = re.compile(r"[a-z0-9-]+")
USER_DATA_OPTION = "user_data_option_"
USER_DATA_FILE = "user_data_file_"
REQUIRED = ("machine_model", "root_image", "user_data")
# Bounds far beyond any sensible value, so absurd numbers from a pipe stop here.
LARGEST_INT = 2**31 - 1
LARGEST_NUMBER = 1e9
# Per machinetype. Every repository is watched by the keeper and bound into each
# container, and every tmp_binds path is a mount: a few are used, never thousands.
MAX_REPOSITORIES = 64
MAX_TMP_BINDS = 32
# Old Vac spellings still found in sites' files, read as their current names.
DEPRECATED = {"vm_model": "machine_model", "machineoutputs_days": "machines_dir_days",
              "cernvm_signing_dn": "image_signing_dn"}


@dataclass(frozen=True)
class OptionSpec:
    """How to read one machinetype option: its kind, its least value, its check."""

    kind: str  # "int", "number", "bool", "text" or "words"
    minimum: float | None = None
    # Called with the text (or each word) and whether it came from an untrusted pipe.
    check: Callable[[str, bool], None] | None = None
    # For "words": how many there may be.
    max_words: int | None = None

    def check_range(self, number: float) -> None:
        """BadValue if an "int" or "number" is below its minimum or beyond what vac stores."""
        if self.minimum is not None:
            values.check_minimum(number, self.minimum)
        largest = LARGEST_INT if self.kind == "int" else LARGEST_NUMBER
        if abs(number) > largest:
            raise BadValue(f"too large (more than {largest:g})")


def check_machine_model(text: str, untrusted: bool) -> None:
    """docker or singularity; VM models are outside what vac runs."""
    if text in MACHINE_MODELS:
        return
    if text.startswith("vm-") or "cernvm" in text or text in ("vm", "raw"):
        raise BadValue("VM machine models are not supported: only docker and singularity are")
    raise BadValue("unknown machine model: only docker and singularity are supported")


def check_root_image(text: str, untrusted: bool) -> None:
    """docker://IMAGE, an http(s) URL, a file name, or an absolute path (/cvmfs/... from a pipe)."""
    _refuse_parent_components(text)
    if text.startswith("docker://"):
        values.check_docker_image(text)
    elif text.startswith(("http://", "https://")):
        values.check_http_url(text)
    elif "/" not in text:
        values.check_file_name(text)
    elif untrusted and not text.startswith("/cvmfs/"):
        raise BadValue(
            "from a pipe, a root_image with / must be docker://, /cvmfs/... or http(s)://")
    elif not text.startswith("/"):
        raise BadValue("must be docker://IMAGE, an http(s):// URL, an absolute path or a file name")
    else:
        values.check_absolute_path(text)


def check_user_data(text: str, untrusted: bool) -> None:
    """An http(s) URL, a file name under files/, or (locally only) an absolute path."""
    _refuse_parent_components(text)
    if text.startswith(("http://", "https://")):
        values.check_http_url(text)
    elif "/" not in text:
        values.check_file_name(text)
    elif untrusted:
        raise BadValue("from a pipe, a user_data with / must be an http(s):// URL")
    elif not text.startswith("/"):
        raise BadValue("must be an http(s):// URL, an absolute path or a file name")
    else:
        values.check_absolute_path(text)


def _refuse_parent_components(text: str) -> None:
    # Said first, whatever else is wrong: ".." is the mistake that matters most.
    if ".." in text.split("/"):
        raise BadValue('must not contain ".." components')


def check_user_data_file(text: str, untrusted: bool) -> None:
    """A file name under files/, or (locally only) an absolute path."""
    if untrusted or "/" not in text:
        values.check_file_name(text)
    else:
        values.check_absolute_path(text)


def check_command(text: str, untrusted: bool) -> None:
    """One absolute path, run without arguments."""
    values.check_absolute_path(text)


def check_tmp_bind(text: str, untrusted: bool) -> None:
    """A clean absolute container path other than /, free of mount-spec separators."""
    # Docker's mount syntax gives ":" and "," meaning; refuse them before anything else.
    if ":" in text or "," in text:
        raise BadValue('a tmp_binds path must not contain ":" or ","')
    values.check_absolute_path(text)


def check_repository(text: str, untrusted: bool) -> None:
    """A CernVM-FS repository name such as lhcb.cern.ch."""
    values.check_file_name(text)


def check_file(text: str, untrusted: bool) -> None:
    """A file name without any directory part."""
    values.check_file_name(text)


def check_one_line(text: str, untrusted: bool) -> None:
    """Text that ends up in records and logs: one line, no control characters."""
    values.check_text(text, limit=1024)
    if not text:
        raise BadValue("is empty")


def check_accounting_text(text: str, untrusted: bool) -> None:
    """accounting_fqan and machinegroup: one line of printable ASCII that fits APEL's column."""
    if not text:
        raise BadValue("is empty")
    values.check_apel_field(text)


def check_option_text(text: str, untrusted: bool) -> None:
    """A user_data template value: any text but NUL and control characters."""
    values.check_text(text, multiline=True)


OPTIONS: dict[str, OptionSpec] = {
    "machine_model": OptionSpec("text", check=check_machine_model),
    "root_image": OptionSpec("text", check=check_root_image),
    "user_data": OptionSpec("text", check=check_user_data),
    "container_command": OptionSpec("text", check=check_command),
    "cvmfs_repositories": OptionSpec("words", check=check_repository, max_words=MAX_REPOSITORIES),
    "tmp_binds": OptionSpec("words", check=check_tmp_bind, max_words=MAX_TMP_BINDS),
    "target_share": OptionSpec("number"),
    "min_processors": OptionSpec("int", 1),
    "max_processors": OptionSpec("int", 1),
    "max_wallclock_seconds": OptionSpec("int", 1),
    "min_wallclock_seconds": OptionSpec("int", 0),
    "backoff_seconds": OptionSpec("int", 0),
    "fizzle_seconds": OptionSpec("int", 0),
    "heartbeat_file": OptionSpec("text", check=check_file),
    "heartbeat_seconds": OptionSpec("int", 0),
    "accounting_fqan": OptionSpec("text", check=check_accounting_text),
    "machinegroup": OptionSpec("text", check=check_accounting_text),
    "machines_dir_days": OptionSpec("number", 0),
    "disk_gb_per_processor": OptionSpec("int", 1),
    "image_signing_dn": OptionSpec("text", check=check_one_line),
    "user_data_proxy": OptionSpec("bool"),
    "legacy_proxy": OptionSpec("bool"),
    "mjf_http": OptionSpec("bool"),
}
_USER_DATA_OPTION_SPEC = OptionSpec("text", check=check_option_text)
_USER_DATA_FILE_SPEC = OptionSpec("text", check=check_user_data_file)


def option_spec(name: str) -> OptionSpec | None:
    """How to read a machinetype option, or None if it is not one."""
    if name.startswith(USER_DATA_OPTION):
        values.check_option_suffix(name[len(USER_DATA_OPTION):])
        return _USER_DATA_OPTION_SPEC
    if name.startswith(USER_DATA_FILE):
        values.check_option_suffix(name[len(USER_DATA_FILE):])
        return _USER_DATA_FILE_SPEC
    return OPTIONS.get(name)


def convert_option(spec: OptionSpec, value: object, *, from_json: bool, untrusted: bool) -> object:
    """The typed value of one option, or BadValue saying why not."""
    if spec.kind == "int":
        number = values.json_int(value) if from_json else values.ini_int(value)
    elif spec.kind == "number":
        number = values.json_number(value) if from_json else values.ini_number(value)
    elif spec.kind == "bool":
        return values.json_bool(value) if from_json else values.ini_bool(value)
    else:
        text = values.json_text(value) if from_json else value
        if spec.kind == "words":
            words = tuple(text.split())
            # The count first: it says what is wrong with a list of thousands.
            if spec.max_words is not None and len(words) > spec.max_words:
                raise BadValue(f"lists {len(words)} entries, more than the {spec.max_words} "
                               "allowed per machinetype")
            values.check_text(text, multiline=True)
            for word in words:
                spec.check(word, untrusted)
            return words
        spec.check(text, untrusted)
        return text
    spec.check_range(number)
    return number


def build_machinetype(name: str, options: Mapping[str, object], settings: Settings, *,
                      files_name: str, pipe: str | None = None):
    """A complete Machinetype from merged checked options, or None and [(option, value, reason)]."""
    problems = [(option, None, "required option is missing") for option in REQUIRED
                if option not in options]
    model = options.get("machine_model")
    image = options.get("root_image")
    if model == "docker" and image is not None and not image.startswith("docker://"):
        problems.append(("root_image", image,
                         "a docker machinetype needs a docker://IMAGE root_image"))
    if model == "singularity" and image is not None and image.startswith("docker://"):
        problems.append(("root_image", image, "docker:// images need machine_model = docker"))
    min_processors = options.get("min_processors", 1)
    max_processors = options.get("max_processors", 1)
    if min_processors > max_processors:
        problems.append(("min_processors", str(min_processors),
                         f"greater than max_processors ({max_processors})"))
    max_wallclock = options.get("max_wallclock_seconds", DEFAULT_MAX_WALLCLOCK_SECONDS)
    min_wallclock = options.get("min_wallclock_seconds", max_wallclock)
    if min_wallclock > max_wallclock:
        problems.append(("min_wallclock_seconds", str(min_wallclock),
                         f"greater than max_wallclock_seconds ({max_wallclock})"))
    if problems:
        return None, problems
    fqan = options.get("accounting_fqan")
    fields = {key: value for key, value in options.items() if key in OPTIONS}
    fields.update(
        name=name, min_wallclock_seconds=min_wallclock,
        machinegroup=options.get("machinegroup") or fqan or name,
        disk_gb_per_processor=options.get("disk_gb_per_processor", settings.disk_gb_per_processor),
        user_data_options=_prefixed(settings.user_data_options, options, USER_DATA_OPTION),
        user_data_files=_prefixed(settings.user_data_files, options, USER_DATA_FILE),
        files_name=files_name, pipe=pipe)
    return Machinetype(**fields), []


def _prefixed(defaults: Mapping[str, str], options: Mapping[str, object], prefix: str):
    # The factory-wide [settings] values are the defaults each machinetype can override.
    merged = dict(defaults)
    merged.update((key[len(prefix):], value) for key, value in options.items()
                  if key.startswith(prefix))
    return frozen_mapping(sorted(merged.items()))
