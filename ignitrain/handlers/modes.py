"""The one rule that says whether a metric is minimised or maximised, and what "better" is.

Checkpointing (best model), stopping (early stopping, ``stop_when``) and plateau
schedules must agree on what "better" means, so they all read it from here.
"""

from __future__ import annotations

import math
import re

from ignitrain.errors import suggest

__all__ = ["MODES", "infer_mode", "resolve_mode", "is_better", "is_reached"]

MODES = ("min", "max")

# Names that are errors by convention even though the word "error" is abbreviated away
# (the regression flavor's MAE/RMSE, language models' perplexity, speech WER/CER, the
# GAN flavor's FID).
_MINIMISED_TOKENS = frozenset(
    {"mae", "mse", "rmse", "msle", "mape", "nll", "perplexity", "ppl", "wer", "cer", "bpd", "fid"}
)


def infer_mode(metric_name: str) -> str:
    """Say whether ``metric_name`` improves downwards (``"min"``) or upwards (``"max"``).

    Names containing ``"loss"`` or ``"error"`` (any case) are minimised, and so are the
    common abbreviated error metrics when they appear as a word of the name (``"mae"``,
    ``"rmse"``, ``"val/perplexity"``, ``"nll"``...). Everything else is maximised.

    Args:
        metric_name: The metric's name, e.g. ``"val/loss"`` or ``"accuracy"``.

    Returns:
        ``"min"`` or ``"max"``.

    Raises:
        TypeError: If ``metric_name`` is not a string.

    Example:
        >>> infer_mode("val_loss"), infer_mode("accuracy"), infer_mode("rmse")
        ('min', 'max', 'min')
    """
    if not isinstance(metric_name, str):
        raise TypeError(
            f"Argument metric_name={metric_name!r} is not allowed: expected a metric name (str)"
        )
    name = metric_name.lower()
    if "loss" in name or "error" in name:
        return "min"
    tokens = set(re.split(r"[^a-z0-9]+", name))
    return "min" if tokens & _MINIMISED_TOKENS else "max"


def resolve_mode(metric_name: str, mode: str | None = None) -> str:
    """Return ``mode`` when given (validated), else :func:`infer_mode` of the name.

    Args:
        metric_name: The metric's name.
        mode: ``"min"``, ``"max"`` or ``None`` to infer it.

    Returns:
        ``"min"`` or ``"max"``.

    Raises:
        ValueError: If ``mode`` is neither ``None`` nor one of :data:`MODES`.
    """
    if mode is None:
        return infer_mode(metric_name)
    if mode not in MODES:
        raise ValueError(
            f"Argument mode={mode!r} is not allowed for metric {metric_name!r}: "
            f"expected 'min', 'max' or None (infer from the name).{suggest(mode, MODES)}"
        )
    return mode


def is_better(score: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``score`` improves on ``best`` by more than ``min_delta``.

    A NaN score is never better; any other score beats ``best=None`` (nothing seen yet).

    Args:
        score: The new value.
        best: The best value so far, or ``None``.
        mode: ``"min"`` or ``"max"``.
        min_delta: Smallest change that counts as an improvement (>= 0).

    Returns:
        ``True`` when ``score`` is an improvement.

    Example:
        >>> is_better(0.9, 1.0, "min"), is_better(float("nan"), None, "max")
        (True, False)
    """
    score = float(score)
    if math.isnan(score):
        return False
    if best is None or math.isnan(best):
        return True
    if mode == "min":
        return score < best - min_delta
    return score > best + min_delta


def is_reached(value: float, target: float, mode: str) -> bool:
    """Whether ``value`` reached ``target``: ``<=`` for ``"min"``, ``>=`` for ``"max"``.

    NaN never reaches a target.

    Example:
        >>> is_reached(0.05, 0.1, "min"), is_reached(0.98, 0.99, "max")
        (True, False)
    """
    value = float(value)
    if math.isnan(value):
        return False
    return value <= target if mode == "min" else value >= target
