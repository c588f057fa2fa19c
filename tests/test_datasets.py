"""Tests for ignitrain/datasets.py on the real datasets bundled with scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sklearn.datasets
import torch

from ignitrain import datasets

CLASSIFICATION = {"digits": 10, "iris": 3, "wine": 3, "breast_cancer": 2}
REGRESSION = {"diabetes": 1, "linnerud": 3}
RAW = {
    "digits": lambda: sklearn.datasets.load_digits(),
    "iris": lambda: sklearn.datasets.load_iris(),
    "wine": lambda: sklearn.datasets.load_wine(),
    "breast_cancer": lambda: sklearn.datasets.load_breast_cancer(),
    "diabetes": lambda: sklearn.datasets.load_diabetes(scaled=False),
    "linnerud": lambda: sklearn.datasets.load_linnerud(),
}


def _split_tensors(splits: datasets.Splits):
    return [(ds.tensors[0], ds.tensors[1]) for ds in (splits.train, splits.val, splits.test)]


def test_names_cover_every_helper():
    assert set(datasets.NAMES) == set(CLASSIFICATION) | set(REGRESSION)


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_classification_shapes_dtypes_and_labels(name):
    splits = datasets.get(name)
    raw = RAW[name]()
    assert splits.num_classes == CLASSIFICATION[name]
    assert splits.num_features == raw.data.shape[1]
    for x, y in _split_tensors(splits):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.shape == (len(x),)
        assert int(y.min()) >= 0 and int(y.max()) < splits.num_classes
        assert torch.isfinite(x).all()
    assert splits.info["task"] == "classification"
    # The record of the split can be written next to a run.
    json.dumps(splits.info)


@pytest.mark.parametrize("name", sorted(REGRESSION))
def test_regression_targets_are_float_2d(name):
    splits = datasets.get(name)
    assert splits.num_classes is None
    assert splits.info["task"] == "regression"
    for x, y in _split_tensors(splits):
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert y.shape == (len(x), REGRESSION[name])
        assert x.shape[1] == splits.num_features
    json.dumps(splits.info)


@pytest.mark.parametrize("name", datasets.NAMES)
def test_splits_are_disjoint_complete_and_hold_the_right_rows(name):
    splits = datasets.get(name, normalize=False)
    raw = RAW[name]()
    n = raw.data.shape[0]
    idx = splits.info["indices"]
    parts = [set(idx["train"]), set(idx["val"]), set(idx["test"])]
    assert sum(len(p) for p in parts) == n
    assert set().union(*parts) == set(range(n))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert splits.info["sizes"] == {k: len(v) for k, v in idx.items()}
    assert splits.info["sizes"]["test"] == round(n * 0.15)
    # Each split holds exactly the original rows it names (unnormalised here).
    target = raw.target.reshape(n, -1) if name in REGRESSION else raw.target
    for key, ds in zip(("train", "val", "test"), (splits.train, splits.val, splits.test)):
        rows = np.asarray(idx[key])
        x, y = ds.tensors
        np.testing.assert_allclose(x.reshape(len(rows), -1).numpy(), raw.data[rows], rtol=1e-6)
        np.testing.assert_allclose(y.numpy(), target[rows], rtol=1e-6)


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_classification_splits_are_stratified(name):
    splits = datasets.get(name, val_fraction=0.2, test_fraction=0.2, seed=3)
    whole = np.bincount(RAW[name]().target) / len(RAW[name]().target)
    for _, y in _split_tensors(splits):
        share = np.bincount(y.numpy(), minlength=len(whole)) / len(y)
        # Largest-remainder apportioning: each class is within a row or two of its share.
        assert np.abs(share - whole).max() <= 2 / len(y) + 1e-12


def test_same_seed_same_split_other_seed_other_split():
    a = datasets.iris(seed=5)
    b = datasets.iris(seed=5)
    c = datasets.iris(seed=6)
    assert a.info["indices"] == b.info["indices"]
    for (xa, ya), (xb, yb) in zip(_split_tensors(a), _split_tensors(b)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.info["indices"]["test"] != c.info["indices"]["test"]


@pytest.mark.slow
def test_split_is_identical_in_another_process():
    # Another interpreter with another hash seed must draw the same indices, as every
    # rank of a distributed job builds its own copy of the split.
    code = (
        "import json; from ignitrain import datasets; "
        "print(json.dumps(datasets.digits(seed=11).info['indices']))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == datasets.digits(seed=11).info["indices"]


def test_digits_image_flat_and_raw_views():
    image = datasets.digits()
    flat = datasets.digits(image=False)
    raw = datasets.digits(normalize=False)
    x_img, x_flat, x_raw = image.train.tensors[0], flat.train.tensors[0], raw.train.tensors[0]
    assert x_img.shape[1:] == (1, 8, 8) and x_flat.shape[1:] == (64,)
    assert image.info["input_shape"] == [1, 8, 8] and flat.info["input_shape"] == [64]
    assert image.num_features == flat.num_features == 64
    assert float(x_img.min()) == 0.0 and float(x_img.max()) == 1.0
    assert torch.equal(x_img.reshape(len(x_img), -1), x_flat)
    assert torch.allclose(x_raw / 16, x_img)


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "diabetes"])
def test_features_are_standardised_with_train_statistics_only(name):
    splits = datasets.get(name)
    raw = RAW[name]()
    train_rows = np.asarray(splits.info["indices"]["train"])
    x_train = splits.train.tensors[0].double()
    assert torch.allclose(
        x_train.mean(0), torch.zeros(x_train.shape[1], dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(
        x_train.std(0, unbiased=False), torch.ones(x_train.shape[1], dtype=torch.float64), atol=1e-4
    )
    np.testing.assert_allclose(splits.info["feature_mean"], raw.data[train_rows].mean(0))
    np.testing.assert_allclose(splits.info["feature_std"], raw.data[train_rows].std(0))
    # Held-out rows use the same (train) transform, so they are not exactly centred.
    test_rows = np.asarray(splits.info["indices"]["test"])
    expected = (raw.data[test_rows] - raw.data[train_rows].mean(0)) / raw.data[train_rows].std(0)
    np.testing.assert_allclose(splits.test.tensors[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_diabetes_target_standardisation_is_invertible():
    plain = datasets.diabetes()
    scaled = datasets.diabetes(normalize_target=True)
    assert "target_mean" not in plain.info
    y = scaled.train.tensors[1].double()
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
    mean, std = scaled.info["target_mean"][0], scaled.info["target_std"][0]
    restored = scaled.test.tensors[1].double() * std + mean
    assert torch.allclose(restored, plain.test.tensors[1].double(), atol=1e-3)


def test_empty_validation_split_and_get_normalises_the_name():
    splits = datasets.get("Breast-Cancer", val_fraction=0, test_fraction=0.25)
    assert len(splits.val) == 0 and splits.val.tensors[0].shape == (0, 30)
    assert len(splits.test) == round(569 * 0.25)
    assert len(splits.train) + len(splits.test) == 569


def test_linnerud_is_tiny_multi_output():
    splits = datasets.linnerud(normalize_target=True)
    assert splits.info["sizes"] == {"train": 14, "val": 3, "test": 3}
    assert splits.train.tensors[1].shape == (14, 3)
    assert len(splits.info["target_mean"]) == 3


def test_split_indices_without_labels_and_its_errors():
    train, val, test = datasets.split_indices(10, val_fraction=0.2, test_fraction=0.3, seed=1)
    assert (len(train), len(val), len(test)) == (5, 2, 3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="No training rows left: 2 rows"):
        datasets.split_indices(2, val_fraction=0.3, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), got \(3,\)"):
        datasets.split_indices(4, labels=[0, 1, 0])
    with pytest.raises(TypeError, match="num_samples must be an int"):
        datasets.split_indices(4.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"val_fraction": -0.1}, ValueError, r"val_fraction must be in \[0, 1\), got -0.1"),
        ({"test_fraction": 1.0}, ValueError, r"test_fraction must be in \[0, 1\), got 1.0"),
        (
            {"val_fraction": 0.6, "test_fraction": 0.5},
            ValueError,
            r"val_fraction \+ test_fraction must be < 1.*0.6 \+ 0.5",
        ),
        ({"val_fraction": "0.1"}, TypeError, "val_fraction must be a number"),
        ({"test_fraction": True}, TypeError, "test_fraction must be a number"),
        ({"seed": -1}, TypeError, "seed must be a non-negative int, got -1"),
        ({"seed": 1.5}, TypeError, "seed must be a non-negative int, got 1.5"),
        ({"normalize": "yes"}, TypeError, "normalize must be True or False, got 'yes'"),
        ({"image": 1}, TypeError, "image must be True or False, got 1"),
    ],
)
def test_digits_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.digits(**kwargs)


def test_get_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"Unknown dataset 'digit'.*Did you mean 'digits'\?"):
        datasets.get("digit")
    with pytest.raises(ValueError, match="available: digits, iris, wine"):
        datasets.get("mnist")
    with pytest.raises(TypeError, match="name must be a dataset name"):
        datasets.get(None)
    with pytest.raises(TypeError, match="image"):
        datasets.get("iris", image=True)
    with pytest.raises(TypeError, match="normalize_target must be True or False"):
        datasets.diabetes(normalize_target=None)


def test_missing_scikit_learn_gives_an_actionable_error(monkeypatch):
    # Simulate an environment without scikit-learn: a None entry makes import fail.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-learn"):
        datasets.iris()
