"""The shared factory behind the ``model(x) -> y_pred`` flavors (classification, regression).

Both differ only in the default loss and the metrics; this module builds the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ignite.metrics import Loss, Metric
from torch import nn

from ignitrain.checks import first_batch_checked, first_batch_checked_eval
from ignitrain.flavors import _recipe as recipe
from ignitrain.predict import SupervisedPredictor
from ignitrain.registry import build_loss
from ignitrain.steps import OptimizerStep, StepOptions, supervised_evaluate, supervised_update
from ignitrain.trainer import Trainer

__all__ = ["build_supervised_trainer"]


def build_supervised_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    default_loss: Callable[[], Callable],
    flavor_metrics: Callable[[Callable], Mapping[str, Metric]],
    default_best_metric: str,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a ``Trainer`` for ``model(x) -> y_pred`` trained on ``loss(y_pred, y)``.

    Args:
        flavor_metrics: ``loss_fn -> {name: Metric}``, called for each new evaluator.
        default_best_metric: Ranks checkpoints when ``config.best_metric`` is unset.
    """
    config = recipe.check_config(config)
    model = recipe.check_model(model, seed=config.seed)
    user_metrics = recipe.check_metrics(metrics)
    loss_fn = build_loss(loss if loss is not None else config.loss, default_loss)
    if not callable(loss_fn):
        raise TypeError(f"loss must be callable (y_pred, y) -> loss, got {type(loss_fn).__name__}")

    device = recipe.setup_run(config)
    train_loader, val_loader = recipe.make_loaders(train_data, val_data, config)
    net, model = recipe.place_model(model, config, device)
    opt = recipe.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    checked = first_batch_checked(loss_fn, config.metrics)  # labels/shapes/topK, 1st batch
    update = supervised_update(net, opt_step, checked, device, channels_last=config.channels_last)
    engine = recipe.make_engine(update, train_loader, config)

    def all_metrics() -> dict[str, Metric]:
        found = dict(flavor_metrics(loss_fn))
        found.update({name: _fresh(m) for name, m in user_metrics.items()})
        return found

    eval_fn = first_batch_checked_eval(  # labels/shapes of each evaluation's first batch
        supervised_evaluate(model, device, opt_step.autocast, channels_last=config.channels_last),
        loss_fn,
    )
    trainer = recipe.single_model_trainer(
        engine=engine,
        config=config,
        model=model,
        optimizer=opt,
        eval_fn=eval_fn,
        metrics_fn=all_metrics,
        train_loader=train_loader,
        val_loader=val_loader,
        train_step=update,
        device=device,
        predictor=SupervisedPredictor(
            model, device, opt_step.autocast, channels_last=config.channels_last
        ),
    )
    recipe.attach_handlers(
        trainer, opt_steps={"optimizer": opt_step}, default_best_metric=default_best_metric
    )
    return trainer


def loss_metric(loss_fn: Callable) -> Loss:
    """Ignite's ``Loss`` over ``(y_pred, y)`` eval outputs."""
    return Loss(loss_fn)


def _fresh(metric: Metric) -> Metric:
    # a user Metric object can be attached to one evaluator only; evaluate() builds new
    # evaluators, so each gets its own copy
    import copy

    return copy.deepcopy(metric)
