"""Shared fixtures: real data (scikit-learn's bundled digits and diabetes) and tiny models."""

import logging

import pytest
import torch
from torch import nn

from ignitrain import TrainConfig, datasets


@pytest.fixture(scope="session")
def digits_flat():
    """Digits as flat 64-feature vectors: (train, val, test) TensorDatasets."""
    return datasets.digits(seed=0, image=False)


@pytest.fixture(scope="session")
def diabetes_splits():
    return datasets.diabetes(seed=0)


def make_mlp(in_features=64, hidden=64, out=10, dropout=0.1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out)
    )


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="ignitrain")


def assert_same_tree(a, b, where=""):
    """Nested dicts/lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models run faster and steadier than on two
    threads of a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_maker(**defaults):
    """A test module's ``cfg(**overrides)``: ``TrainConfig`` of ``defaults`` with
    ``overrides`` over them, e.g. ``cfg = config_maker(num_epochs=2, progress_bar=False)``."""

    def cfg(**overrides):
        return TrainConfig(**{**defaults, **overrides})

    return cfg
