"""The options of a checkpoint handler: when and what it saves."""

from __future__ import annotations

from dataclasses import dataclass

from ignitrain.errors import is_count

__all__ = ["CheckpointOptions"]


@dataclass(frozen=True)
class CheckpointOptions:
    """When and what :class:`CheckpointHandler` saves (see :func:`attach_checkpoints`).

    Raises:
        TypeError, ValueError: A bad option, named with what is allowed.
    """

    save_every: int = -1
    best_metric: str | None = None
    best_mode: str | None = None
    save_best: bool = True
    save_last: bool = True
    accumulation_steps: int = 1
    sharded: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.save_every, bool)
            or not isinstance(self.save_every, int)
            or (self.save_every < -1)
        ):
            raise ValueError(
                f"Argument save_every={self.save_every!r} is not allowed: expected N > 0 "
                "iterations, -1 (each epoch) or 0 (off)"
            )
        if self.best_metric is not None and not isinstance(self.best_metric, str):
            raise TypeError(
                f"Argument best_metric={self.best_metric!r} is not allowed: expected a str"
            )
        if self.best_mode not in (None, "min", "max"):
            raise ValueError(
                f"Argument best_mode={self.best_mode!r} is not allowed: expected 'min', 'max' "
                "or None"
            )
        if not is_count(self.accumulation_steps) or self.accumulation_steps < 1:
            raise ValueError(
                f"Argument accumulation_steps={self.accumulation_steps!r} is not allowed: "
                "expected an integer >= 1"
            )
