"""Names that come from files and configs: checked once, here, before they become symbols or paths.

A name read from a config, a cache manifest or a formula file is data. Two shapes are allowed:

* an **identifier** (features, formula variables): a Python identifier that is not a keyword and
  does not start with an underscore, so it is safe as a sympy symbol and in generated code;
* a **slug** (run, student and file names): letters, digits, ``_``, ``-`` and inner dots, never
  ``.`` or ``..`` and never a leading dot, so it is one plain path component inside its folder.

Both are at most :data:`MAX_NAME` characters.
"""

from __future__ import annotations

import keyword
import re

MAX_NAME = 64
_SLUG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class InvalidNameError(ValueError):
    """A name that is not a plain identifier or slug; the message names where it came from."""


def check_identifier(name: object, where: str) -> str:
    """``name`` if it is a plain identifier (see the module docstring); else `InvalidNameError` naming ``where``."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{where}: expected a name (a string), got {type(name).__name__}")
    if not (0 < len(name) <= MAX_NAME and name.isidentifier() and name.isascii()) or keyword.iskeyword(name) \
            or name.startswith("_"):  # fmt: skip
        raise InvalidNameError(f"{where}: {name[:80]!r} is not a plain name (letters, digits and _, not starting "
                               f"with a digit or _, at most {MAX_NAME} characters)")  # fmt: skip
    return name


def check_slug(name: object, where: str) -> str:
    """``name`` if it is a safe single path component (see the module docstring), else :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{where}: expected a name (a string), got {type(name).__name__}")
    if not (len(name) <= MAX_NAME and _SLUG.fullmatch(name)) or name.endswith("."):
        raise InvalidNameError(f"{where}: {name[:80]!r} is not a simple name (letters, digits, _, - and inner "
                               f"dots, not starting with a dot or -, at most {MAX_NAME} characters)")  # fmt: skip
    return name
