"""One rule decides whether a metric is minimised, for checkpoints and stopping alike."""

from __future__ import annotations

import math

import pytest

from ignitrain.handlers.modes import infer_mode, is_better, is_reached, resolve_mode


@pytest.mark.parametrize(
    "name",
    [
        "loss",
        "val/loss",
        "train_loss",
        "MeanSquaredError",
        "error_rate",
        "mae",
        "val/rmse",
        "MSE",
        "perplexity",
        "val/ppl",
        "wer",
        "fid",
        "nll",
    ],
)
def test_minimised_names(name):
    assert infer_mode(name) == "min"


@pytest.mark.parametrize(
    "name", ["accuracy", "val/accuracy", "top5", "f1", "precision", "recall", "r2", "maestro"]
)
def test_maximised_names(name):
    assert infer_mode(name) == "max"


def test_resolve_mode_keeps_an_explicit_mode():
    assert resolve_mode("loss") == "min"
    assert resolve_mode("loss", "max") == "max"


def test_is_better_and_is_reached():
    assert is_better(0.5, None, "max") and not is_better(math.nan, None, "max")
    assert is_better(0.8, 1.0, "min", 0.1) and not is_better(0.95, 1.0, "min", 0.1)
    assert is_better(1.2, 1.0, "max", 0.1) and not is_better(1.05, 1.0, "max", 0.1)
    assert is_reached(0.3, 0.3, "min") and not is_reached(0.31, 0.3, "min")
    assert is_reached(0.9, 0.9, "max") and not is_reached(math.nan, 0.9, "max")


def test_argument_validation():
    with pytest.raises(ValueError, match=r"mode='mx'.*Did you mean 'max'"):
        resolve_mode("accuracy", "mx")
    with pytest.raises(TypeError, match="name=3"):
        infer_mode(3)
