"""Regression flavor on real data (scikit-learn's diabetes)."""

import pytest
import torch
from torch import nn

import ignitrain
from ignitrain import TrainConfig


def _model(n):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n, 32), nn.ReLU(), nn.Linear(32, 1))


def test_learns_diabetes(diabetes_splits):
    cfg = TrainConfig(num_epochs=30, optimizer="adamw", lr=1e-2, batch_size=32, progress_bar=False)
    trainer = ignitrain.create_regression_trainer(
        _model(diabetes_splits.num_features), cfg, diabetes_splits.train, diabetes_splits.val
    )
    history = trainer.train()
    assert history["val/loss"][-1] < history["val/loss"][0] * 0.7
    metrics = trainer.evaluate(diabetes_splits.test)
    assert set(metrics) == {"loss", "mae", "rmse", "r2"}
    assert metrics["r2"] > 0.3  # a linear model reaches ~0.45 on diabetes
    assert metrics["rmse"] == pytest.approx(metrics["loss"] ** 0.5, rel=1e-4)


def test_regression_rejects_classification_metric_names(diabetes_splits):
    with pytest.raises(ValueError, match="metrics=\\['f1'\\] is not allowed for regression"):
        ignitrain.create_regression_trainer(
            _model(10), TrainConfig(metrics=["f1"]), diabetes_splits.train
        )
