"""Reproducible train/validation/test splits: which rows go where, as a pure function of a seed.

:func:`split_indices` is integer arithmetic on a seeded permutation (stratified by label
when asked), so every run and every process gets the same indices; :class:`Splits` is
what the dataset helpers of :mod:`ignitrain.datasets` return. Kept apart from the
datasets because it needs no scikit-learn and works on any data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import TensorDataset

from ignitrain.errors import is_count, is_number

__all__ = [
    "Splits",
    "check_flag",
    "check_fraction",
    "check_fractions",
    "check_seed",
    "split_indices",
]


class Splits(NamedTuple):
    """Train, validation and test sets of one dataset, with what a model needs to know.

    Attributes:
        train: Training ``TensorDataset`` of ``(features, target)`` pairs.
        val: Validation ``TensorDataset`` (empty when ``val_fraction=0``).
        test: Test ``TensorDataset`` (empty when ``test_fraction=0``).
        num_features: Number of input values per sample (64 for digits, also as images).
        num_classes: Number of classes, or ``None`` for regression.
        info: How the splits were made: ``name``, ``task``, ``seed``, ``sizes``,
            ``indices`` (rows of the original data in each split), ``input_shape``,
            ``feature_names``, ``target_names`` and the normalisation statistics.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_features: int
    num_classes: int | None
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------
# Argument validation


def check_fraction(name: str, value: Any) -> float:
    """A fraction in ``[0, 1)`` as a ``float``; the error names the argument."""
    if not is_number(value):
        raise TypeError(f"Argument {name} must be a number in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"Argument {name} must be in [0, 1), got {value!r}.")
    return float(value)


def check_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    """Both fractions, which must leave some rows for training."""
    val = check_fraction("val_fraction", val_fraction)
    test = check_fraction("test_fraction", test_fraction)
    if val + test >= 1.0:
        raise ValueError(
            f"Arguments val_fraction + test_fraction must be < 1 to leave training data, "
            f"got {val_fraction!r} + {test_fraction!r} = {val + test!r}."
        )
    return val, test


def check_seed(seed: Any) -> int:
    """A split seed: an ``int >= 0``."""
    if not is_count(seed) or seed < 0:
        raise TypeError(f"Argument seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def check_flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (no truthy stand-ins); the error names the argument."""
    if not isinstance(value, bool):
        raise TypeError(f"Argument {name} must be True or False, got {value!r}.")
    return value


# ---------------------------------------------------------------------------------------
# Splitting


def _apportion(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder).

    Integer arithmetic only, so the result is exact and the same on every machine.
    """
    whole = sum(sizes)
    if whole == 0 or total == 0:
        return [0] * len(sizes)
    counts = [size * total // whole for size in sizes]
    remainders = [size * total % whole for size in sizes]
    # Hand the leftover units to the groups that lost most to rounding down; a stable
    # sort breaks ties by group order so the result never depends on hashing.
    order = sorted(range(len(sizes)), key=lambda i: -remainders[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def split_indices(
    num_samples: int,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    labels: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproducible, disjoint train/val/test row indices that together cover the data.

    The test set gets ``round(num_samples * test_fraction)`` rows and the validation
    set ``round(num_samples * val_fraction)``; training gets the rest. With ``labels``
    the split is stratified: each class is shuffled on its own and shared out in
    proportion to its size, so every split keeps the class balance of the whole.

    Args:
        num_samples: Number of rows.
        val_fraction: Fraction of rows for validation, in ``[0, 1)``.
        test_fraction: Fraction of rows for testing, in ``[0, 1)``; the two sum below 1.
        seed: Seed of the shuffle; the same seed gives the same indices everywhere.
        labels: Optional class label per row (array-like of length ``num_samples``).

    Returns:
        ``(train, val, test)`` sorted ``int64`` index arrays.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A fraction is out of range, or no row would be left for training.
    """
    if not is_count(num_samples):
        raise TypeError(f"Argument num_samples must be an int, got {num_samples!r}.")
    val_fraction, test_fraction = check_fractions(val_fraction, test_fraction)
    seed = check_seed(seed)
    n_test = round(num_samples * test_fraction)
    n_val = round(num_samples * val_fraction)
    if num_samples - n_test - n_val < 1:
        raise ValueError(
            f"No training rows left: {num_samples} rows with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}; lower the fractions."
        )
    if labels is None:
        groups = [np.arange(num_samples)]
    else:
        labels = np.asarray(labels)
        if labels.shape != (num_samples,):
            raise ValueError(
                f"Argument labels must have shape ({num_samples},), got {labels.shape}."
            )
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(group) for group in groups]
    test_counts = _apportion([len(g) for g in groups], n_test)
    # Validation is shared out over what test left of each group, which keeps it
    # proportional to the class sizes while never taking more rows than remain.
    val_counts = _apportion([len(g) - t for g, t in zip(groups, test_counts)], n_val)
    parts: tuple[list, list, list] = ([], [], [])
    for group, t, v in zip(groups, test_counts, val_counts):
        parts[2].append(group[:t])
        parts[1].append(group[t : t + v])
        parts[0].append(group[t + v :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test
