"""Real datasets that ship inside scikit-learn, split reproducibly into train/val/test.

Every helper reads data bundled with the installed scikit-learn package (the
``sklearn.datasets.load_*`` loaders); nothing is downloaded. Each returns a
:class:`Splits` of three ``TensorDataset``\\ s and what a model needs to know about
them (``num_features``, ``num_classes``) plus an ``info`` dict that records how the
split and normalisation were made (JSON-friendly: the exact indices, the seed, the
train statistics), so an inference script can apply the same transform.

Splits are a pure function of ``seed``: the same seed gives the same indices in
every run and every process, which is what distributed training needs (each rank
builds the same split and Ignite's ``auto_dataloader`` shards it).

Example:
    >>> from ignitrain import datasets
    >>> splits = datasets.digits(seed=0)
    >>> x, y = splits.train[0]
    >>> x.shape, y.dtype, splits.num_classes
    (torch.Size([1, 8, 8]), torch.int64, 10)
    >>> datasets.get("iris", test_fraction=0.2).info["sizes"]
    {'train': 98, 'val': 22, 'test': 30}
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ignitrain.config import suggest

__all__ = [
    "NAMES",
    "Splits",
    "breast_cancer",
    "diabetes",
    "digits",
    "get",
    "iris",
    "linnerud",
    "split_indices",
    "wine",
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


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Argument {name} must be a number in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"Argument {name} must be in [0, 1), got {value!r}.")
    return float(value)


def _check_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    val = _check_fraction("val_fraction", val_fraction)
    test = _check_fraction("test_fraction", test_fraction)
    if val + test >= 1.0:
        raise ValueError(
            f"Arguments val_fraction + test_fraction must be < 1 to leave training data, "
            f"got {val_fraction!r} + {test_fraction!r} = {val + test!r}."
        )
    return val, test


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"Argument seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def _check_flag(name: str, value: Any) -> bool:
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
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise TypeError(f"Argument num_samples must be an int, got {num_samples!r}.")
    val_fraction, test_fraction = _check_fractions(val_fraction, test_fraction)
    seed = _check_seed(seed)
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


# ---------------------------------------------------------------------------------------
# Building Splits


def _sklearn_datasets() -> Any:
    # scikit-learn is optional: only these helpers need it.
    try:
        import sklearn.datasets
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "ignitrain.datasets reads the datasets bundled with scikit-learn, which is not "
            "installed: pip install scikit-learn (or pip install 'ignitrain[examples]')."
        ) from err
    return sklearn.datasets


def _standardize(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale columns to zero mean and unit variance using TRAIN rows only (no leakage)."""
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    # A column constant over the training rows carries no information; dividing by 1
    # keeps it finite instead of producing inf/NaN.
    std = np.where(std > 1e-12, std, 1.0)
    return (x - mean) / std, mean, std


def _make_splits(
    x: np.ndarray,
    y: torch.Tensor,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    num_classes: int | None,
    info: dict[str, Any],
) -> Splits:
    x_all = torch.as_tensor(x, dtype=torch.float32)
    datasets = [TensorDataset(x_all[torch.as_tensor(i)], y[torch.as_tensor(i)]) for i in indices]
    info = {
        **info,
        "sizes": {k: len(i) for k, i in zip(("train", "val", "test"), indices)},
        "indices": {k: i.tolist() for k, i in zip(("train", "val", "test"), indices)},
    }
    num_features = int(np.prod(x.shape[1:]))
    return Splits(*datasets, num_features=num_features, num_classes=num_classes, info=info)


def _base_info(name: str, task: str, seed: int, val: float, test: float, bunch: Any) -> dict:
    info: dict[str, Any] = {
        "name": name,
        "task": task,
        "seed": seed,
        "val_fraction": val,
        "test_fraction": test,
        "num_samples": int(bunch.data.shape[0]),
        "feature_names": [str(f) for f in bunch.feature_names],
    }
    if "target_names" in bunch:
        info["target_names"] = [str(t) for t in bunch.target_names]
    return info


def _tabular_classification(
    name: str, *, val_fraction: Any, test_fraction: Any, seed: Any, normalize: Any
) -> Splits:
    val, test = _check_fractions(val_fraction, test_fraction)
    seed = _check_seed(seed)
    normalize = _check_flag("normalize", normalize)
    bunch = getattr(_sklearn_datasets(), f"load_{name}")()
    indices = split_indices(
        len(bunch.target), val_fraction=val, test_fraction=test, seed=seed, labels=bunch.target
    )
    info = _base_info(name, "classification", seed, val, test, bunch)
    x = bunch.data.astype(np.float64)
    info["input_shape"] = [x.shape[1]]
    if normalize:
        x, mean, std = _standardize(x, indices[0])
        info["feature_mean"], info["feature_std"] = mean.tolist(), std.tolist()
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    num_classes = len(bunch.target_names)
    return _make_splits(x, y, indices, num_classes=num_classes, info=info)


def _tabular_regression(
    name: str,
    bunch: Any,
    *,
    val_fraction: Any,
    test_fraction: Any,
    seed: Any,
    normalize: Any,
    normalize_target: Any,
) -> Splits:
    val, test = _check_fractions(val_fraction, test_fraction)
    seed = _check_seed(seed)
    normalize = _check_flag("normalize", normalize)
    normalize_target = _check_flag("normalize_target", normalize_target)
    n = bunch.data.shape[0]
    indices = split_indices(n, val_fraction=val, test_fraction=test, seed=seed)
    info = _base_info(name, "regression", seed, val, test, bunch)
    x = bunch.data.astype(np.float64)
    info["input_shape"] = [x.shape[1]]
    if normalize:
        x, mean, std = _standardize(x, indices[0])
        info["feature_mean"], info["feature_std"] = mean.tolist(), std.tolist()
    # Targets are always 2-D (N, outputs) so a model's (N, outputs) prediction and the
    # target have the same shape for MSE (a (N,) target would silently broadcast).
    target = bunch.target.astype(np.float64).reshape(n, -1)
    if normalize_target:
        # Keep the statistics: predictions are mapped back with y * std + mean.
        target, mean, std = _standardize(target, indices[0])
        info["target_mean"], info["target_std"] = mean.tolist(), std.tolist()
    info["num_targets"] = target.shape[1]
    y = torch.as_tensor(target, dtype=torch.float32)
    return _make_splits(x, y, indices, num_classes=None, info=info)


# ---------------------------------------------------------------------------------------
# Public helpers, one per dataset


def digits(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    image: bool = True,
    normalize: bool = True,
) -> Splits:
    """Handwritten digits 0-9: 1,797 grey 8x8 images, 10 classes (stratified split).

    Args:
        val_fraction: Fraction of samples for validation.
        test_fraction: Fraction of samples for testing.
        seed: Seed of the split.
        image: ``True``: samples of shape ``(1, 8, 8)`` for a CNN; ``False``: 64 flat
            features for an MLP.
        normalize: Divide pixel values (0..16) by 16 into ``[0, 1]``; ``False`` keeps
            the raw 0..16 values. (Pixels share one scale, so no per-column statistics.)

    Returns:
        ``Splits`` with ``float32`` inputs and ``int64`` labels of shape ``(N,)``.
    """
    val, test = _check_fractions(val_fraction, test_fraction)
    seed = _check_seed(seed)
    image = _check_flag("image", image)
    normalize = _check_flag("normalize", normalize)
    bunch = _sklearn_datasets().load_digits()
    indices = split_indices(
        len(bunch.target), val_fraction=val, test_fraction=test, seed=seed, labels=bunch.target
    )
    info = _base_info("digits", "classification", seed, val, test, bunch)
    x = bunch.data.astype(np.float64)
    if normalize:
        x = x / 16.0
    if image:
        x = x.reshape(-1, 1, 8, 8)
    info["input_shape"] = list(x.shape[1:])
    info["pixel_scale"] = 16.0 if normalize else 1.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return _make_splits(x, y, indices, num_classes=10, info=info)


def iris(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
) -> Splits:
    """Iris flowers: 150 samples, 4 features, 3 classes (stratified split).

    Args:
        val_fraction: Fraction of samples for validation.
        test_fraction: Fraction of samples for testing.
        seed: Seed of the split.
        normalize: Standardise features with the training rows' mean and std (kept in
            ``info["feature_mean"]`` / ``info["feature_std"]``).

    Returns:
        ``Splits`` with ``float32`` features and ``int64`` labels.
    """
    return _tabular_classification(
        "iris",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
    )


def wine(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
) -> Splits:
    """Wine cultivars: 178 samples, 13 chemical features, 3 classes (stratified split).

    Args: as :func:`iris`.

    Returns:
        ``Splits`` with ``float32`` features and ``int64`` labels.
    """
    return _tabular_classification(
        "wine",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
    )


def breast_cancer(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
) -> Splits:
    """Breast cancer Wisconsin: 569 samples, 30 features, 2 classes (stratified split).

    Args: as :func:`iris`.

    Returns:
        ``Splits`` with ``float32`` features and ``int64`` labels (0 malignant, 1 benign).
    """
    return _tabular_classification(
        "breast_cancer",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
    )


def diabetes(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
    normalize_target: bool = False,
) -> Splits:
    """Diabetes progression: 442 samples, 10 features, one continuous target (regression).

    The raw (unscaled) features are read and, with ``normalize``, standardised with the
    training rows' statistics only (scikit-learn's pre-scaled copy uses all rows).

    Args:
        val_fraction: Fraction of samples for validation.
        test_fraction: Fraction of samples for testing.
        seed: Seed of the split.
        normalize: Standardise features with training statistics.
        normalize_target: Standardise the target with training statistics; the mean and
            std are kept in ``info["target_mean"]`` / ``info["target_std"]`` to map
            predictions back (``y * std + mean``).

    Returns:
        ``Splits`` with ``float32`` features and ``float32`` targets of shape ``(N, 1)``.
    """
    bunch = _sklearn_datasets().load_diabetes(scaled=False)
    return _tabular_regression(
        "diabetes",
        bunch,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
        normalize_target=normalize_target,
    )


def linnerud(
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
    normalize_target: bool = False,
) -> Splits:
    """Linnerud fitness: 20 samples, 3 exercise features -> 3 body measurements (regression).

    Tiny (20 rows: 14/3/3 with the default fractions): a smoke-test dataset for
    multi-output regression, not a benchmark.

    Args: as :func:`diabetes`.

    Returns:
        ``Splits`` with ``float32`` features and ``float32`` targets of shape ``(N, 3)``.
    """
    bunch = _sklearn_datasets().load_linnerud()
    return _tabular_regression(
        "linnerud",
        bunch,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        normalize=normalize,
        normalize_target=normalize_target,
    )


_FACTORIES: dict[str, Callable[..., Splits]] = {
    "digits": digits,
    "iris": iris,
    "wine": wine,
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "linnerud": linnerud,
}

NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""Names accepted by :func:`get`."""


def get(name: str, **kwargs: Any) -> Splits:
    """Build the dataset called ``name`` (one of :data:`NAMES`) with its keyword options.

    Case and ``-``/``_`` are ignored (``"Breast-Cancer"`` works).

    Args:
        name: Dataset name.
        **kwargs: Options of that dataset's helper (``seed``, ``val_fraction``...).

    Returns:
        The dataset's ``Splits``.

    Raises:
        TypeError: ``name`` is not a string, or an option is not one the helper takes.
        ValueError: Unknown name (with the closest match) or a bad option value.
    """
    if not isinstance(name, str):
        raise TypeError(f"Argument name must be a dataset name (str), got {name!r}.")
    key = name.strip().lower().replace("-", "_")
    if key not in _FACTORIES:
        raise ValueError(
            f"Unknown dataset {name!r}; available: {', '.join(NAMES)}.{suggest(key, NAMES)}"
        )
    return _FACTORIES[key](**kwargs)
