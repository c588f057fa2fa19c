"""The options every schedule is built with, and their checks.

:class:`BuildOptions` groups what :func:`build_schedule` passes to the builders of
named schedules and of scheduler objects (instead of five keyword arguments each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ignitrain.errors import ConfigError, is_count, is_number, suggest

__all__ = ["UNITS", "BuildOptions", "check_factor", "check_int", "check_unit"]

#: The events a schedule can advance on.
UNITS: tuple[str, ...] = ("iteration", "epoch", "metric")


@dataclass(frozen=True)
class BuildOptions:
    """What a schedule drives and how it starts.

    Attributes:
        param_name: ``"lr"`` or ``"momentum"``.
        field: Config field named in error messages.
        unit: Unit override (``None``: the schedule's default).
        warmup_steps: Warm-up optimizer steps in front of the schedule.
        warmup_start_factor: Warm-up starts at this fraction of the first value.
    """

    param_name: str = "lr"
    field: str = "lr_scheduler"
    unit: str | None = None
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, else ``ValueError`` naming ``name``."""
    if not is_count(value) or value < minimum:
        raise ValueError(
            f"Argument {name}={value!r} is not allowed: expected an integer >= {minimum}"
        )
    return int(value)


def check_factor(value: Any) -> float:
    """A warm-up start factor in [0, 1]."""
    if not is_number(value) or not 0 <= value <= 1:
        raise ValueError(
            f"Argument warmup_start_factor={value!r} is not allowed: expected a number in [0, 1]"
        )
    return float(value)


def check_unit(unit: Any, allowed: tuple[str, ...], field: str, name: str) -> str:
    """``unit`` when schedule ``name`` allows it, else ``ConfigError`` with a suggestion."""
    if unit not in allowed:
        raise ConfigError(
            f"{field}: unit={unit!r} is not allowed for schedule {name!r}: expected "
            f"{' or '.join(repr(u) for u in allowed)}.{suggest(unit, allowed)}"
        )
    return unit
