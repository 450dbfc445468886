"""Configuration problems: what is wrong, where, and why."""

from __future__ import annotations

from dataclasses import dataclass

# Values can come from a remote pipe: keep messages readable whatever they hold.
VALUE_SHOWN_CHARS = 120


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file or pipe document, located as precisely as known."""

    file: str
    section: str | None
    option: str | None
    value: str | None
    reason: str

    def __str__(self) -> str:
        parts = [self.file]
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.option is not None:
            if self.value is None:
                parts.append(self.option)
            else:
                parts.append(f"{self.option} = {shown_value(self.value)}")
        return " ".join(parts) + ": " + self.reason


def shown_value(value: object) -> str:
    """The repr of a value, shortened so a hostile value cannot flood a log line."""
    text = repr(value)
    if len(text) > VALUE_SHOWN_CHARS:
        text = text[:VALUE_SHOWN_CHARS] + f"... ({len(text)} characters)"
    return text


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every error found."""

    def __init__(self, problems, warnings=()):
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)
        lines = [f"{len(self.problems)} configuration problem(s):"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))
