"""The errors ignitrain raises for bad input, and the checks they share.

Kept apart from the modules that raise them so that every module can import them at
its top without an import cycle (``config`` and ``registry`` used to import each other
only for ``ConfigError``).
"""

from __future__ import annotations

import difflib
import numbers
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "JobError",
    "is_count",
    "is_number",
    "not_allowed",
    "suggest",
]


class ConfigError(ValueError):
    """A configuration value is not allowed (a ``ValueError``)."""


class JobError(Exception):
    """A mistake in a job file or command line: the message says what and where."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the objects it should be loaded into."""


def suggest(name: str, choices: Any) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def is_number(value: Any) -> bool:
    """A real number that is not a ``bool`` (``True`` is an ``int`` in Python)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """An integer that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def not_allowed(what: str, value: Any, why: str, exc: type[Exception] = ValueError) -> Exception:
    """The one phrasing of a refused value: ``exc(f"{what}={value!r} is not allowed: {why}")``.

    Example:
        >>> raise not_allowed("Argument num_iter", 1, "expected an integer >= 2")
        Traceback (most recent call last):
        ValueError: Argument num_iter=1 is not allowed: expected an integer >= 2
    """
    return exc(f"{what}={value!r} is not allowed: {why}")
