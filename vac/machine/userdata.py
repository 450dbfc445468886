"""The /user_data script: obtaining its template and filling it in (INTERFACES.md §5)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from vac import __version__
from vac.http_fetch import DEFAULT_TIMEOUT_SECONDS, GRID_CA_PATH, FetchFailed, FetchTimedOut, fetch
from vac.machine.atomicfile import write_atomic
from vac.machine.layout import USER_DATA_ACCOUNT_MODE, USER_DATA_MODE, USER_DATA_SECRET_MODE, MachinePaths

log = logging.getLogger(__name__)

USER_AGENT = f"vac/{__version__}"
MANAGER_VERSION = f"Vac-compatible vac {__version__}"

MAX_TEMPLATE_BYTES = 4 * 1024 * 1024
# What a machine's /user_data may grow to once filled in: room for the largest
# template plus a few option files, far below what fills a state disk.
MAX_RENDERED_BYTES = 8 * 1024 * 1024
MAX_OPTION_FILE_BYTES = 1024 * 1024
_OPTION_NAME = re.compile(r"[a-z0-9_]+")
# Every pattern, filled or not: one left unfilled is deleted (INTERFACES.md §5).
_PATTERN = re.compile(r"##user_data_([a-z0-9_]*)##")
_OPTION_PREFIX = "user_data_option_"
_FILE_PREFIX = "user_data_file_"


class UserDataError(Exception):
    """The template or one of its files could not be obtained; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Template:
    """A user_data template and the http(s) URL it came from (None for a file)."""
    text: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateValues:
    """Everything that fills a template's ##user_data_NAME## patterns."""
    space: str
    machinetype: str
    machine_hostname: str
    manager_hostname: str
    machine_uuid: str
    machinefeatures_url: str
    jobfeatures_url: str
    joboutputs_url: str
    manager_version: str = MANAGER_VERSION
    root_image_url: str | None = None
    site: str | None = None
    x509_proxy: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    file_contents: Mapping[str, str] = field(default_factory=dict)


def is_http_url(location: str) -> bool:
    """True if `location` is fetched over the network rather than read from disk."""
    return location.startswith(("http://", "https://"))


def _decode(data: bytes) -> str:
    # Templates are scripts, not necessarily UTF-8: keep every byte as it came.
    return data.decode("utf-8", errors="surrogateescape")


def fetch_url(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, max_bytes: int = MAX_TEMPLATE_BYTES,
              ca_paths: Iterable[str] = (GRID_CA_PATH,)) -> bytes:
    """GET `url` by the rules of vac.http_fetch (status 200, size cap, deadline, no https->http)."""
    try:
        return fetch(url, timeout_seconds=timeout, max_bytes=max_bytes, user_agent=USER_AGENT,
                     ca_paths=ca_paths)
    except FetchTimedOut:
        raise UserDataError(f"fetching {url} took longer than {timeout:g} s; abandoned") from None
    except FetchFailed as error:
        raise UserDataError(f"fetching {url} failed: {error}") from None


def read_local_file(path: Path, max_bytes: int) -> bytes:
    """The contents of a local file, refusing one larger than `max_bytes`."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as error:
        raise UserDataError(f"cannot read {path}: {error.strerror or error}") from error
    if len(data) > max_bytes:
        raise UserDataError(f"{path} is more than the limit of {max_bytes} bytes")
    return data


def resolve_local(location: str, files_dir: Path) -> Path:
    """An absolute path as given, or a plain name under the machinetype's files/ directory."""
    if location.startswith("/"):
        if ".." in location.split("/"):
            raise UserDataError(f"{location!r} contains a '..' component")
        return Path(location)
    # Names under files/ come from pipes too: one plain component, never a way out.
    if not location or "/" in location or location in (".", ".."):
        raise UserDataError(f"{location!r} is neither an http(s) URL, an absolute path "
                            f"nor a plain file name under {files_dir}")
    return Path(files_dir) / location


def obtain_template(location: str, files_dir: Path, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                    max_bytes: int = MAX_TEMPLATE_BYTES,
                    ca_paths: Iterable[str] = (GRID_CA_PATH,)) -> Template:
    """The template named by the machinetype's `user_data`: fetched fresh if http(s), else read."""
    if is_http_url(location):
        data = fetch_url(location, timeout, max_bytes, ca_paths)
        log.debug("fetched user_data template %s (%d bytes)", location, len(data))
        return Template(_decode(data), url=location)
    return Template(_decode(read_local_file(resolve_local(location, files_dir), max_bytes)))


def split_user_data_options(options: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split `user_data_option_X` and `user_data_file_X` settings into ({X: value}, {X: file})."""
    values: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, value in options.items():
        for prefix, target in ((_OPTION_PREFIX, values), (_FILE_PREFIX, files)):
            if name.startswith(prefix):
                suffix = name[len(prefix):]
                if not _OPTION_NAME.fullmatch(suffix):
                    raise UserDataError(f"{name}: the part after {prefix} may only contain a-z 0-9 _")
                target[suffix] = value
    return values, files


def read_option_files(files: Mapping[str, str], files_dir: Path,
                      max_bytes: int = MAX_OPTION_FILE_BYTES) -> dict[str, str]:
    """The contents of each `user_data_file_X` ({X: contents}), read from disk."""
    contents = {}
    for suffix, location in files.items():
        try:
            contents[suffix] = _decode(read_local_file(resolve_local(location, files_dir), max_bytes))
        except UserDataError as error:
            raise UserDataError(f"user_data_file_{suffix}: {error}") from error
    return contents


def template_values(template: Template, values: TemplateValues) -> dict[str, str]:
    """Pattern name (after ##user_data_) -> its text, in the order of INTERFACES.md §5.

    Where two sources name one pattern, the earlier in that order wins, as it
    did when each was replaced in turn; None fills nothing (the pattern is
    then deleted as a leftover).
    """
    filled: dict[str, str] = {}

    def put(name: str, value: str | None) -> None:
        if value is not None:
            filled.setdefault(name, value)

    put("space", values.space)
    put("machinetype", values.machinetype)
    put("machine_hostname", values.machine_hostname)
    put("manager_version", values.manager_version)
    put("manager_hostname", values.manager_hostname)
    for kind in ("machinefeatures", "jobfeatures", "joboutputs"):
        url = getattr(values, f"{kind}_url")
        put(f"{kind}_url", url)
        put(f"manager_{kind}_url", url)
    # The UUID is known before templating (Vac filled it in only after it had
    # written user_data, leaving ##user_data_uuid## empty).
    put("uuid", values.machine_uuid)
    put("url", template.url)
    put("root_image_url", values.root_image_url)
    put("site", values.site)
    # Deprecated VM-era names.
    put("vmtype", values.machinetype)
    put("vm_hostname", values.machine_hostname)
    put("vmlm_version", values.manager_version)
    put("vmlm_hostname", values.manager_hostname)
    # A proxy made by the factory (user_data_proxy) takes the option's place, as in Vac.
    put("option_x509_proxy", values.x509_proxy)
    # Options before files: an explicit user_data_option_X wins its own pattern,
    # and the file's contents still fill ##user_data_file_X##.
    for suffix, value in sorted(values.options.items()):
        put(f"option_{suffix}", value)
    for suffix, contents in sorted(values.file_contents.items()):
        put(f"option_{suffix}", contents)
        put(f"file_{suffix}", contents)
    return filled


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogateescape"))


def render(template: Template, values: TemplateValues, max_template_bytes: int = MAX_TEMPLATE_BYTES,
           max_rendered_bytes: int = MAX_RENDERED_BYTES) -> str:
    """Fill in `template` (INTERFACES.md §5) in one pass; leftover patterns are deleted.

    Substituted text is never scanned again: a value that holds another
    pattern is put in as it is, so values cannot multiply each other.
    UserDataError if the template or the result would pass its limit (the
    machine then fails to start), raised before the oversized text is built.
    """
    template_bytes = _size(template.text)
    if template_bytes > max_template_bytes:
        raise UserDataError(f"the user_data template is {template_bytes} bytes, "
                            f"more than the limit of {max_template_bytes}")
    filled = template_values(template, values)
    sizes: dict[str, int] = {}
    # Each pattern replaced changes the size by its value's size less its own.
    rendered_bytes = template_bytes

    def substitute(match: re.Match) -> str:
        nonlocal rendered_bytes
        name = match.group(1)
        value = filled.get(name, "")
        if name not in sizes:
            sizes[name] = _size(value)
        rendered_bytes += sizes[name] - len(match.group(0))
        if rendered_bytes > max_rendered_bytes:
            raise UserDataError(f"the rendered user_data would be more than the limit of {max_rendered_bytes}"
                                f" bytes (##user_data_{name}## is filled with {sizes[name]} bytes)")
        return value

    return _PATTERN.sub(substitute, template.text)


def write_user_data(paths: MachinePaths, text: str, holds_key: bool = False,
                    owner: tuple[int, int] | None = None) -> None:
    """Store the rendered script as the machine's user_data (mode 0755, INTERFACES.md §3).

    With a proxy's private key in it (`holds_key`), 0700: the temporary file
    is created with that mode, so the key is never readable by others, not
    even for a moment, and inside the container only root can read it.
    With an `owner` (a Singularity machine's account, which runs it), it is
    that account's and 0500: it reads and runs it, nobody else.
    """
    data = text.encode("utf-8", errors="surrogateescape")
    if owner is not None:
        write_atomic(paths.user_data, data, USER_DATA_SECRET_MODE)
        os.chown(paths.user_data, *owner, follow_symlinks=False)
        os.chmod(paths.user_data, USER_DATA_ACCOUNT_MODE, follow_symlinks=False)
        return
    mode = USER_DATA_SECRET_MODE if holds_key else USER_DATA_MODE
    write_atomic(paths.user_data, data, mode)

