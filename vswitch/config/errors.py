"""The one exception the loader raises, and how it words its mistakes for the user.

Every mistake is a (key path, reason) pair, and a file shows all of its mistakes at once, one line
each: ``FILE: KEYPATH: REASON``, or ``FILE: REASON`` when the problem concerns the file as a whole.
That format is an interface (people and scripts read it), so it is written in this one place.
"""
from __future__ import annotations

from typing import Sequence


class ConfigError(Exception):
    """A topology file that must not be applied, with every mistake found in it.

    ``path`` and ``reason`` describe the first mistake, ``errors`` lists all of them in the order
    they were found. A path is empty when the problem concerns the file as a whole (it cannot be
    read, or it is not TOML), and is then left out of the message.
    """

    file: str
    path: str
    reason: str
    errors: list[tuple[str, str]]

    def __init__(
        self,
        file: str,
        path: str,
        reason: str,
        *,
        errors: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        self.errors = list(errors) if errors else [(path, reason)]
        super().__init__(file, path, reason)

    @classmethod
    def collected(cls, file: str, errors: Sequence[tuple[str, str]]) -> ConfigError:
        path, reason = errors[0]
        return cls(file, path, reason, errors=errors)

    def __str__(self) -> str:
        return "\n".join(
            f"{self.file}: {path}: {reason}" if path else f"{self.file}: {reason}"
            for path, reason in self.errors
        )
