"""``create_classification_trainer``: ``model(x) -> logits`` trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ignite.metrics import Fbeta, Metric, Precision, Recall, TopKCategoricalAccuracy
from torch import nn

from ignitrain.errors import ConfigError, suggest
from ignitrain.flavors._parts import check_config
from ignitrain.flavors.supervised import SupervisedFlavor, build_supervised_trainer
from ignitrain.handlers.metrics import AccuracyLoss
from ignitrain.trainer import Trainer

__all__ = [
    "create_classification_trainer",
    "classification_metrics",
    "check_classification_metric_names",
]

_EXTRA = ("top2", "top3", "top5", "top10", "precision", "recall", "f1")


def classification_metrics(
    loss_fn: Callable, extra: list[str] | tuple[str, ...] = ()
) -> dict[str, Metric]:
    """Accuracy and loss, plus ``extra`` by name: ``topK``, ``precision``, ``recall``, ``f1``.

    Precision, recall and F1 are macro averages over classes.
    """
    check_classification_metric_names(extra)
    # one pass for both (Ignite's Accuracy + Loss, the same values): writes "accuracy", "loss"
    metrics: dict[str, Metric] = {"accuracy_loss": AccuracyLoss(loss_fn)}
    for name in extra:
        if name.startswith("top"):
            metrics[name] = TopKCategoricalAccuracy(k=int(name[3:]))
        elif name == "precision":
            metrics[name] = Precision(average=True)
        elif name == "recall":
            metrics[name] = Recall(average=True)
        else:  # "f1"
            precision, recall = Precision(average=False), Recall(average=False)
            metrics[name] = Fbeta(1.0, average=True, precision=precision, recall=recall)
    return metrics


def check_classification_metric_names(extra: list[str] | tuple[str, ...]) -> None:
    """Each name must be ``topK`` (K >= 1), ``precision``, ``recall`` or ``f1``.

    Raises:
        ConfigError: a name is none of those (with a close match).
    """
    for name in extra:
        if name.startswith("top") and name[3:].isdigit() and int(name[3:]) >= 1:
            continue
        if name not in ("precision", "recall", "f1"):
            raise ConfigError(
                f"TrainConfig.metrics contains {name!r}, not a classification metric."
                f"{suggest(name, _EXTRA)} Allowed: topK with K >= 1 (e.g. 'top5'), "
                "'precision', 'recall', 'f1'"
            )


def create_classification_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a trainer for ``model(x) -> logits`` over batches ``(x, y)`` of class indices.

    The loop it runs::

        for epoch in 1..num_epochs:
            for x, y in train_loader:                 # order fixed by (seed, epoch)
                with autocast:  loss = cross_entropy(model(x), y)
                backward(loss / group_size)           # accumulation, no_sync under DDP
                if end of group: clip; optimizer.step(); schedules
            if epoch % validate_every == 0:           # after the epoch, not interleaved
                metrics = evaluate(model, val_loader)  # accuracy, loss (+ extras)
            history, stop rules, TensorBoard, checkpoints

    Attached to ``trainer.engine``: epoch sync of the data order (``EPOCH_STARTED``);
    epoch mean of the loss; schedules (``ITERATION_STARTED``/``EPOCH_COMPLETED``);
    validation, History, stop rules, summary, checkpoints (``EPOCH_COMPLETED``);
    periodic checkpoints (``ITERATION_COMPLETED``); last checkpoint (``COMPLETED``).

    Args:
        model: ``nn.Module`` returning logits of shape ``(N, C)``.
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its options).
        train_data: A ``Dataset`` (loaders are built from the config) or a loader.
        val_data: Validation ``Dataset``/loader; ``None`` skips validation.
        optimizer: Optimizer object or factory, overriding ``config.optimizer``.
        loss: Loss overriding ``config.loss`` (default: cross-entropy).
        metrics: Extra Ignite metrics for evaluation, by name.

    Returns:
        A :class:`~ignitrain.Trainer`; metrics are ``accuracy`` and ``loss``.

    Example:
        >>> cfg = TrainConfig(num_epochs=5)
        >>> trainer = create_classification_trainer(model, cfg, train_ds, val_ds)
        >>> history = trainer.train()
        >>> trainer.evaluate(test_ds)["accuracy"]
    """
    config = check_config(config)  # the one check of the config
    extra = tuple(config.metrics)
    check_classification_metric_names(extra)  # before building anything
    return build_supervised_trainer(
        model,
        config,
        train_data,
        val_data,
        SupervisedFlavor(
            default_loss=nn.CrossEntropyLoss,
            flavor_metrics=lambda loss_fn: classification_metrics(loss_fn, extra),
            default_best_metric="accuracy",
            name="classification",
        ),
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
    )
