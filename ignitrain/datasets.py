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

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ignitrain.errors import suggest
from ignitrain.splits import Splits, check_flag, check_fractions, check_seed, split_indices

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
    val, test = check_fractions(val_fraction, test_fraction)
    seed = check_seed(seed)
    normalize = check_flag("normalize", normalize)
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
    val, test = check_fractions(val_fraction, test_fraction)
    seed = check_seed(seed)
    normalize = check_flag("normalize", normalize)
    normalize_target = check_flag("normalize_target", normalize_target)
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
    val, test = check_fractions(val_fraction, test_fraction)
    seed = check_seed(seed)
    image = check_flag("image", image)
    normalize = check_flag("normalize", normalize)
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
