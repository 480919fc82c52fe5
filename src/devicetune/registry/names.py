"""The names the registry accepts for models and files: plain, so never a path.

Every name that reaches the file system (model, file, cohort) is checked here first, so
``..``, slashes, NUL bytes or a leading dot can never walk out of the registry root.
"""

from __future__ import annotations

import re

from devicetune.errors import RegistryError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN.strip("^$"))


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a plain name.

    Raises:
        RegistryError: ``value`` could be read as a path, or is empty or too long.
    """
    if not _NAME.fullmatch(value):
        raise RegistryError(f"invalid {what} {value[:80]!r}: use letters, digits, '.', '_' "
                            "and '-', at most 128, starting with a letter or digit")
    return value
