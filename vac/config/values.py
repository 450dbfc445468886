"""Converting option values to numbers, flags and words, and checking names, paths and URLs."""

from __future__ import annotations

import math
import re
import urllib.parse

# A component of a path or a file name: it cannot start with "." or "-", so "." and
# ".." and things that look like command options are out by construction.
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9._+@=:-]*"
_FILE_NAME_RE = re.compile(_COMPONENT)
_ABSOLUTE_PATH_RE = re.compile(rf"(?:/{_COMPONENT})+")
_OPTION_NAME_RE = re.compile(r"[a-z0-9_]+")
_URL_CHARACTERS_RE = re.compile(r"[A-Za-z0-9._~:/?#@&+,=%-]+")
# The grammar of an image reference, after docker/distribution's reference package.
_DOCKER_DOMAIN = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOCKER_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOCKER_REFERENCE_RE = re.compile(
    rf"(?:{_DOCKER_DOMAIN}(?:\.{_DOCKER_DOMAIN})*(?::[0-9]+)?/)?"
    rf"{_DOCKER_NAME}(?:/{_DOCKER_NAME})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHELL_METACHARACTERS = set(";&|$`<>()'\"\\*?[]{}!~#^")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# Longer numerals than this are refused before conversion: nothing sensible needs them.
MAX_NUMERAL_CHARS = 32
# Characters per value: a user_data option may hold a script or a certificate chain.
MAX_VALUE_CHARS = 65536
MAX_PATH_CHARS = 1024
# APEL's columns for text fields such as FQAN hold at most this many characters.
APEL_FIELD_CHARS = 255
# C0 and C1 control characters, DEL, and lone surrogates (which no UTF-8 encoder
# accepts, so a value holding one could not be put in a frame or a record).
_UNWANTED_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNWANTED_MULTILINE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_PRINTABLE_ASCII_RE = re.compile("[\x20-\x7e]*")


class BadValue(ValueError):
    """A value that cannot be used; the message is the reason, for a ConfigProblem."""


def ini_int(text: str) -> int:
    """An integer written in a file; "1.5" or "1e3" are not integers."""
    if len(text) > MAX_NUMERAL_CHARS:
        raise BadValue("too long for a number")
    if _INTEGER_RE.fullmatch(text):
        return int(text)
    if _NUMBER_RE.fullmatch(text):
        raise BadValue("not an integer (a whole number is needed here)")
    raise BadValue("not an integer")


def ini_number(text: str) -> float:
    """A finite decimal number written in a file."""
    if len(text) > MAX_NUMERAL_CHARS:
        raise BadValue("too long for a number")
    if not _NUMBER_RE.fullmatch(text):
        raise BadValue("not a number")
    number = float(text)
    if not math.isfinite(number):
        raise BadValue("not a finite number")
    return number


def ini_bool(text: str) -> bool:
    """A flag written as true/false, yes/no, on/off or 1/0."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadValue("not true or false")


def json_int(value: object) -> int:
    """An integer from a JSON document; digit strings are accepted because Vac read text."""
    if isinstance(value, bool):
        raise BadValue("a boolean where an integer is needed")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        raise BadValue("a floating-point number where an integer is needed")
    if isinstance(value, str):
        return ini_int(value)
    raise BadValue(f"{json_type(value)} where an integer is needed")


def json_number(value: object) -> float:
    """A finite number from a JSON document (numeric strings accepted, as in Vac)."""
    if isinstance(value, bool):
        raise BadValue("a boolean where a number is needed")
    if isinstance(value, str):
        return ini_number(value)
    if not isinstance(value, (int, float)):
        raise BadValue(f"{json_type(value)} where a number is needed")
    try:
        number = float(value)
    except OverflowError:
        raise BadValue("too large") from None
    if not math.isfinite(number):
        raise BadValue("not a finite number")
    return number


def json_bool(value: object) -> bool:
    """A flag from a JSON document: true/false, or Vac's "true"/"false" text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return ini_bool(value)
    raise BadValue(f"{json_type(value)} where true or false is needed")


def json_text(value: object) -> str:
    """A string from a JSON document."""
    if not isinstance(value, str):
        raise BadValue(f"{json_type(value)} where a string is needed")
    return value


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a floating-point number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_minimum(value: float, minimum: float) -> None:
    """Refuse values below the smallest meaningful one."""
    if value < minimum:
        if minimum == 0:
            raise BadValue("must not be negative")
        raise BadValue(f"must be at least {minimum:g}")


def check_text(text: str, *, multiline: bool = False, limit: int = MAX_VALUE_CHARS) -> None:
    """Refuse over-long text, lone surrogates, NUL and control characters.

    Newlines and tabs are allowed only where `multiline` (user_data option values)."""
    if len(text) > limit:
        raise BadValue(f"longer than {limit} characters")
    unwanted = (_UNWANTED_MULTILINE_RE if multiline else _UNWANTED_RE).search(text)
    if unwanted is None:
        return
    character = unwanted.group()
    if character == "\0":
        raise BadValue("contains a NUL character")
    if "\ud800" <= character <= "\udfff":
        raise BadValue(f"contains {character!r}, a lone surrogate, which is not valid Unicode")
    raise BadValue(f"contains the control character {character!r}")


def escaped(text: str) -> str:
    """The text with control characters and lone surrogates written as escapes (\\x1b, \\ud800).

    For text from outside that is only shown (problems, errors): always encodable,
    and no escape sequence reaches an operator's terminal."""
    return _UNWANTED_RE.sub(lambda match: repr(match.group())[1:-1], text)


def check_apel_field(text: str, *, limit: int = APEL_FIELD_CHARS) -> None:
    """Text that goes into APEL records: printable ASCII within APEL's column width.

    One non-ASCII byte in an outgoing record stops ssmsend's whole queue, run after run."""
    check_text(text, limit=limit)
    if not _PRINTABLE_ASCII_RE.fullmatch(text):
        character = next(c for c in text if not " " <= c <= "~")
        raise BadValue(f"contains {character!r}: APEL records take printable ASCII only")


def check_option_suffix(name: str) -> None:
    """The XXX of user_data_option_XXX and friends: a-z, 0-9 and _ only, as in Vac."""
    if not _OPTION_NAME_RE.fullmatch(name):
        raise BadValue("the part after the prefix may contain only a-z, 0-9 and _")


def check_file_name(text: str) -> None:
    """A plain file name: no "/", no "..", nothing a shell would act on."""
    _check_characters(text, allowed="", limit=255)
    if "/" in text:
        raise BadValue('must be a file name, without "/"')
    if not _FILE_NAME_RE.fullmatch(text):
        raise BadValue(
            "must be a file name of letters, digits and ._+@=:- not starting with . or -")


def check_absolute_path(text: str) -> None:
    """A clean absolute path: no "..", ".", "//" or trailing "/", nothing a shell would act on."""
    _check_characters(text, allowed="", limit=MAX_PATH_CHARS)
    if ".." in text.split("/"):
        raise BadValue('must not contain ".." components')
    if not text.startswith("/"):
        raise BadValue("must be an absolute path")
    if not _ABSOLUTE_PATH_RE.fullmatch(text):
        raise BadValue("must be a clean absolute path of letters, digits and ._+@=:- "
                       '(no ".", "//", trailing "/" or names starting with . or -)')


def check_http_url(text: str) -> None:
    """An http:// or https:// URL with a host and no ".." path components."""
    _check_characters(text, allowed="?#&~", limit=MAX_PATH_CHARS)
    if not _URL_CHARACTERS_RE.fullmatch(text):
        raise BadValue("contains characters not allowed in a URL")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise BadValue("must be an http:// or https:// URL")
    if not parts.hostname:
        raise BadValue("URL has no host")
    if ".." in parts.path.split("/"):
        raise BadValue('must not contain ".." components')


def check_docker_image(text: str) -> None:
    """docker://IMAGE where IMAGE follows Docker's reference grammar."""
    if not text.startswith("docker://"):
        raise BadValue("must be docker://IMAGE")
    reference = text[len("docker://"):]
    _check_characters(reference, allowed="", limit=MAX_PATH_CHARS)
    if ".." in reference.split("/"):
        raise BadValue('must not contain ".." components')
    if not _DOCKER_REFERENCE_RE.fullmatch(reference):
        raise BadValue("not a valid Docker image reference")


def _check_characters(text: str, *, allowed: str, limit: int) -> None:
    # Say exactly which character is wrong: a person fixing a file or a pipe needs to know.
    if not text:
        raise BadValue("is empty")
    check_text(text, limit=limit)
    for character in text:
        if character.isspace():
            raise BadValue("contains whitespace")
        if character in _SHELL_METACHARACTERS and character not in allowed:
            raise BadValue(f"contains the shell metacharacter {character!r}")
