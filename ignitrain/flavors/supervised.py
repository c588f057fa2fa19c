"""The shared factory behind the ``model(x) -> y_pred`` flavors (classification, regression).

Both differ only in the default loss and the metrics (a :class:`SupervisedFlavor`);
this module builds the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ignite.metrics import Loss, Metric
from torch import nn

from ignitrain.checks import first_batch_checked, first_batch_checked_eval
from ignitrain.config import TrainConfig
from ignitrain.flavors import _parts
from ignitrain.flavors._attach import AttachOptions, build_trainer
from ignitrain.predict import SupervisedPredictor
from ignitrain.registry import build_loss
from ignitrain.steps import OptimizerStep, StepOptions, supervised_evaluate, supervised_update
from ignitrain.trainer import RunData, RunParts, Steps, Trainer

__all__ = ["SupervisedFlavor", "build_supervised_trainer", "loss_metric"]


@dataclass(frozen=True)
class SupervisedFlavor:
    """What a supervised flavor adds to the shared factory.

    Attributes:
        default_loss: Builds the loss when neither ``loss=`` nor ``config.loss`` is set.
        flavor_metrics: ``loss_fn -> {name: Metric}``, called for each new evaluator.
        default_best_metric: Ranks checkpoints when ``config.best_metric`` is unset.
        name: The flavor's name, recorded in checkpoints (a resume into another refuses).
    """

    default_loss: Callable[[], Callable]
    flavor_metrics: Callable[[Callable], Mapping[str, Metric]]
    default_best_metric: str
    name: str


def build_supervised_trainer(
    model: nn.Module,
    config: TrainConfig,
    train_data: Any,
    val_data: Any,
    flavor: SupervisedFlavor,
    *,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a ``Trainer`` for ``model(x) -> y_pred`` trained on ``loss(y_pred, y)``.

    Args:
        config: Already checked by the flavor (:func:`ignitrain.flavors.check_config`).
        flavor: The flavor's default loss, metrics and ranking metric.

    Raises:
        TypeError: the model, metrics or loss are not usable.
    """
    model = _parts.check_model(model, seed=config.seed)
    user_metrics = _parts.check_metrics(metrics)
    loss_fn = build_loss(loss if loss is not None else config.loss, flavor.default_loss)
    if not callable(loss_fn):
        raise TypeError(f"loss must be callable (y_pred, y) -> loss, got {type(loss_fn).__name__}")

    device = _parts.setup_run(config)
    train_loader, val_loader = _parts.make_loaders(train_data, val_data, config)
    net, model = _parts.place_model(model, config, device)
    opt = _parts.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    checked = first_batch_checked(loss_fn, config.metrics)  # labels/shapes/topK, 1st batch
    update = supervised_update(net, opt_step, checked, device, channels_last=config.channels_last)
    engine = _parts.make_engine(update, train_loader, config)

    def all_metrics() -> dict[str, Metric]:
        found = dict(flavor.flavor_metrics(loss_fn))
        found.update({name: _fresh(m) for name, m in user_metrics.items()})
        return found

    eval_fn = first_batch_checked_eval(  # labels/shapes of each evaluation's first batch
        supervised_evaluate(model, device, opt_step.autocast, channels_last=config.channels_last),
        loss_fn,
    )
    predictor = SupervisedPredictor(
        model, device, opt_step.autocast, channels_last=config.channels_last
    )
    parts = RunParts(
        engine,
        config,
        _parts.one_model(model, opt, opt_step, device),
        Steps(update, _parts.make_evaluator_factory(eval_fn, all_metrics), predictor),
        RunData(train_loader, val_loader),
        flavor=flavor.name,
    )
    return build_trainer(parts, AttachOptions(default_best_metric=flavor.default_best_metric))


def loss_metric(loss_fn: Callable) -> Loss:
    """Ignite's ``Loss`` over ``(y_pred, y)`` eval outputs."""
    return Loss(loss_fn)


def _fresh(metric: Metric) -> Metric:
    # a user Metric object can be attached to one evaluator only; evaluate() builds new
    # evaluators, so each gets its own copy
    return copy.deepcopy(metric)
