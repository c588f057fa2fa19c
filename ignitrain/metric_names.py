"""One spelling for metric names, whatever trainer the user comes from.

Validation metrics live in the evaluator under their bare name (``"loss"``,
``"accuracy"``) and in the History as ``"val/<name>"``; the trainers our users come
from write ``"eval_loss"`` (qurious' ``best_model_metric``), ``"val_loss"`` (Keras,
lis2) or ``"val/loss"`` (our own History). :func:`canonical_metric` maps all of them
to the one name ``TrainConfig.best_metric`` and ``stop_when`` use: the bare name for
a validation metric, ``"train/<name>"`` for a training metric (the epoch mean the
training engine computes, e.g. ``"train/loss"``). ``TrainConfig`` calls it once, at
construction, so every handler sees the canonical name.
"""

from __future__ import annotations

__all__ = ["VAL_PREFIXES", "TRAIN_PREFIXES", "canonical_metric", "is_train_metric", "train_name"]

VAL_PREFIXES = ("validation", "valid", "val", "eval", "evaluation")
"""Prefixes that mean "measured on the validation data" (followed by ``/``, ``_`` or ``.``)."""

TRAIN_PREFIXES = ("training", "train")
"""Prefixes that mean "measured on the training data"."""

_SEPARATORS = ("/", "_", ".")


def _strip(name: str, prefixes: tuple[str, ...]) -> str | None:
    lowered = name.lower()
    for prefix in prefixes:
        for sep in _SEPARATORS:
            head = prefix + sep
            if lowered.startswith(head) and len(name) > len(head):
                return name[len(head) :]
    return None


def canonical_metric(name: str) -> str:
    """``"eval_loss"``, ``"val/loss"``, ``"val_loss"`` -> ``"loss"``; ``"train_loss"`` ->
    ``"train/loss"``; anything else unchanged.

    Args:
        name: A metric name as the user wrote it.

    Returns:
        The canonical name.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` is empty.

    Example:
        >>> canonical_metric("eval_loss"), canonical_metric("train_loss")
        ('loss', 'train/loss')
    """
    if not isinstance(name, str):
        raise TypeError(f"Argument name={name!r} is not allowed: expected a metric name (str)")
    name = name.strip()
    if not name:
        raise ValueError("Argument name='' is not allowed: expected a metric name")
    bare = _strip(name, VAL_PREFIXES)
    if bare is not None:
        return bare
    bare = _strip(name, TRAIN_PREFIXES)
    if bare is not None:
        return f"train/{bare}"
    return name


def is_train_metric(name: str | None) -> bool:
    """Whether a canonical name refers to a training metric (``"train/loss"``)."""
    return isinstance(name, str) and name.startswith("train/")


def train_name(name: str) -> str:
    """``"train/loss"`` -> ``"loss"``: the name in the training engine's ``state.metrics``."""
    return name[len("train/") :] if is_train_metric(name) else name
