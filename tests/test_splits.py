"""``ignitrain.splits``: reproducible train/val/test indices and their argument checks."""

import numpy as np
import pytest

from ignitrain import datasets
from ignitrain.splits import Splits, check_flag, check_fractions, check_seed, split_indices


def test_split_indices_is_a_pure_function_of_the_seed_and_covers_every_row_once():
    a = split_indices(100, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_indices(100, val_fraction=0.2, test_fraction=0.1, seed=3)
    c = split_indices(100, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert [len(part) for part in a] == [70, 20, 10]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))


def test_stratified_split_keeps_every_class_in_validation():
    labels = np.array([0] * 90 + [1] * 10)
    _, val, _ = split_indices(100, val_fraction=0.2, test_fraction=0.0, seed=0, labels=labels)
    assert set(labels[val].tolist()) == {0, 1}


def test_datasets_keeps_the_old_names():
    assert datasets.Splits is Splits
    assert datasets.split_indices is split_indices


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: check_fractions(0.5, 0.5),
            ValueError,
            r"val_fraction \+ test_fraction must be < 1",
        ),
        (lambda: check_fractions(True, 0.1), TypeError, "val_fraction must be a number"),
        (lambda: check_fractions(0.1, 1.0), ValueError, r"test_fraction must be in \[0, 1\)"),
        (lambda: check_seed(-1), TypeError, "seed must be a non-negative int, got -1"),
        (lambda: check_seed(1.0), TypeError, "seed must be a non-negative int"),
        (lambda: check_flag("normalize", 1), TypeError, "normalize must be True or False, got 1"),
        (lambda: split_indices(10.0), TypeError, "num_samples must be an int, got 10.0"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
