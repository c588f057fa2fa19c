"""``create_regression_trainer``: ``model(x) -> y_hat`` trained with mean squared error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ignite.metrics import MeanAbsoluteError, Metric, RootMeanSquaredError
from ignite.metrics.regression import R2Score
from torch import nn

from ignitrain.config import ConfigError
from ignitrain.flavors._parts import check_config
from ignitrain.flavors.supervised import SupervisedFlavor, build_supervised_trainer, loss_metric
from ignitrain.trainer import Trainer

__all__ = ["create_regression_trainer", "regression_metrics"]


def regression_metrics(loss_fn: Callable) -> dict[str, Metric]:
    """``loss``, ``mae``, ``rmse`` and ``r2`` over ``(y_pred, y)``."""
    return {
        "loss": loss_metric(loss_fn),
        "mae": MeanAbsoluteError(),
        "rmse": RootMeanSquaredError(),
        "r2": R2Score(),
    }


def create_regression_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a trainer for ``model(x) -> y_hat`` over batches ``(x, y)`` of real targets.

    The loop is the classification one (see
    :func:`~ignitrain.create_classification_trainer`) with ``loss = mse(y_hat, y)``
    and validation metrics ``loss``, ``mae``, ``rmse``, ``r2``; checkpoints rank by
    validation ``loss`` unless ``config.best_metric`` says otherwise. ``y_hat`` and
    ``y`` must have the same shape (e.g. ``(N, 1)``).

    Args:
        model: ``nn.Module`` returning predictions shaped like the targets.
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its options).
        train_data: A ``Dataset`` (loaders are built from the config) or a loader.
        val_data: Validation ``Dataset``/loader; ``None`` skips validation.
        optimizer: Optimizer object or factory, overriding ``config.optimizer``.
        loss: Loss overriding ``config.loss`` (default: MSE).
        metrics: Extra Ignite metrics for evaluation, by name.

    Returns:
        A :class:`~ignitrain.Trainer`.
    """
    config = check_config(config)  # the one check of the config
    if config.metrics:
        raise ConfigError(
            f"TrainConfig.metrics={config.metrics!r} is not allowed for regression: its metrics "
            "(loss, mae, rmse, r2) are always on; pass other Ignite metrics with metrics={...}"
        )
    return build_supervised_trainer(
        model,
        config,
        train_data,
        val_data,
        SupervisedFlavor(
            default_loss=nn.MSELoss,
            flavor_metrics=regression_metrics,
            default_best_metric="loss",
            name="regression",
        ),
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
    )
