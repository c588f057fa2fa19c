"""``create_trainer``: any model that computes its own loss, or your own step functions.

The default step calls the model on the batch as its shape suggests and reads the loss
from what it returns, Hugging Face style::

    dict batch    -> model(**batch)        tuple/list -> model(*batch)     tensor -> model(batch)
    output.loss (an object with .loss, e.g. a ModelOutput) | output["loss"] (a dict)
    | output[0] (a tuple whose first item is the loss)     | output (a scalar tensor)

Or pass ``train_step(model, batch)`` / ``eval_step(model, batch)`` and compute whatever
you like; the gradient machinery (AMP, accumulation, clipping, NaN guard, DDP
``no_sync``) stays ignitrain's, so your step only returns the loss.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from ignitrain.errors import ConfigError, is_number, suggest
from ignitrain.flavors import _parts
from ignitrain.flavors._attach import AttachOptions, build_trainer
from ignitrain.handlers.metrics import OutputMean, TrainOutputMeans, batch_size_of, scalar_value
from ignitrain.predict import GenericPredictor
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import RunData, RunParts, Steps, Trainer

__all__ = [
    "create_trainer",
    "call_model",
    "extract_loss",
    "default_step",
    "OutputMean",
    "TrainOutputMeans",
    "batch_size_of",
    "GENERIC_METRICS",
]

#: Names ``TrainConfig.metrics`` may hold for this flavor.
GENERIC_METRICS: tuple[str, ...] = ("perplexity",)

StepFn = Callable[[nn.Module, Any], Any]


# -- the default step -------------------------------------------------------------------


def call_model(model: Callable, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a sequence, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def extract_loss(output: Any) -> torch.Tensor:
    """The loss in a model's output.

    Looked up, in this order: a scalar tensor (the output itself); a mapping's
    ``"loss"``; an object's ``.loss`` attribute (Hugging Face ``ModelOutput``); the first
    item of a tuple/list.

    Raises:
        ValueError: no scalar loss was found; the message names the output type and
            its keys or attributes.
    """
    if isinstance(output, torch.Tensor):
        loss, where = output, "the output"
    elif isinstance(output, Mapping):
        loss, where = output.get("loss"), "output['loss']"
        if loss is None:
            loss = getattr(output, "loss", None)  # ModelOutput drops None fields from its keys
    elif isinstance(output, (tuple, list)) and output:
        loss, where = output[0], "output[0]"
    else:
        loss, where = getattr(output, "loss", None), "output.loss"
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point():
        return loss.reshape(())
    raise ValueError(_no_loss_message(output, loss, where))


def _no_loss_message(output: Any, loss: Any, where: str) -> str:
    kind = type(output).__name__
    if isinstance(output, Mapping):
        kind += f" with keys {list(output.keys())}"
    elif isinstance(output, (tuple, list)):
        kind += f" of {len(output)} items"
    if isinstance(loss, torch.Tensor):
        found = f"{where} is a {loss.dtype} tensor of shape {tuple(loss.shape)}, not a scalar loss"
    elif loss is None and hasattr(output, "loss"):
        found = "its loss is None (Hugging Face models compute it only when the batch has labels)"
    else:
        found = "it holds no loss"
    return (
        f"could not find the loss in the model output ({kind}): {found}. The model must return "
        "a scalar loss tensor, an object with .loss, a dict with 'loss' or a tuple (loss, ...); "
        "or pass train_step=(model, batch) -> loss to compute it yourself"
    )


def default_step(model: Callable, batch: Any) -> torch.Tensor:
    """``extract_loss(call_model(model, batch))``: the step used without ``train_step``."""
    return extract_loss(call_model(model, batch))


# -- step outputs -------------------------------------------------------------------------


def _as_values(result: Any, name: str) -> dict[str, Any]:
    """A step's result as a dict: a tensor/number is ``{"loss": result}``; a model output
    with a ``.loss`` attribute (returned as is by the step) is ``{"loss": result.loss}``."""
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, torch.Tensor) or is_number(result):
        return {"loss": result}
    if hasattr(result, "loss"):
        if result.loss is None:
            raise ValueError(_no_loss_message(result, None, "output.loss"))
        return {"loss": result.loss}
    raise TypeError(
        f"{name} must return a scalar loss tensor, a dict with 'loss' (and other values) or "
        f"a model output with .loss, got {type(result).__name__}"
    )


def _train_loss(values: Mapping[str, Any]) -> torch.Tensor:
    loss = values.get("loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        got = (
            f"a tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, torch.Tensor)
            else type(loss).__name__
        )
        raise ValueError(
            f"train_step must return the loss as a floating scalar tensor (or a dict whose "
            f"'loss' is one); got {got} among keys {list(values)}"
        )
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not require grad: it was computed under torch.no_grad(), detached, "
            "or from a model without trainable parameters"
        )
    return loss.reshape(())


def _check_step_fn(fn: Any, name: str) -> None:
    if fn is None:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be a callable (model, batch) -> ..., got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError as err:
        raise TypeError(f"{name} must accept two arguments (model, batch): {err}") from None
    except ValueError:  # builtins without a signature: trust them
        pass


# -- process functions ------------------------------------------------------------------


def generic_update(
    net: nn.Module,
    opt_step: OptimizerStep,
    step: StepFn,
    device: torch.device,
    *,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function: ``{"loss": float, **other scalar values}``."""

    def update(engine: Engine, batch: Any) -> dict[str, float]:
        train_mode(net)
        batch = to_device(_plain_mapping(batch), device, channels_last)
        with opt_step.forward_context(engine):
            values = _as_values(step(net, batch), "train_step")
            loss = _train_loss(values)
        opt_step.backward(engine, loss)
        out = {"loss": loss.item()}
        for key, value in values.items():
            if key != "loss" and (value := scalar_value(value)) is not None:
                out[key] = value
        return out

    return update


def generic_evaluate(
    model: nn.Module,
    device: torch.device,
    autocast: Callable[[], Any],
    step: StepFn,
    *,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, Any]]:
    """The evaluation process function: the dict ``step`` returns (a loss becomes ``{"loss"}``)."""

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> dict[str, Any]:
        model.eval()
        batch = to_device(_plain_mapping(batch), device, channels_last)
        with autocast():
            return _as_values(step(model, batch), "eval_step")

    return evaluate


def _plain_mapping(batch: Any) -> Any:
    # tokenizer outputs (BatchEncoding) are Mappings but not dicts; to_device moves dicts
    if isinstance(batch, Mapping) and not isinstance(batch, dict):
        return dict(batch)
    return batch


def _check_metric_names(names: Any) -> bool:
    for name in names:
        if name not in GENERIC_METRICS:
            raise ConfigError(
                f"TrainConfig.metrics contains {name!r}, not a metric of create_trainer."
                f"{suggest(name, GENERIC_METRICS)} Allowed: 'perplexity'. Every scalar your "
                "eval_step returns is reported; pass Ignite metrics through metrics="
            )
    return "perplexity" in names


# -- the factory ------------------------------------------------------------------------


def create_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    train_step: StepFn | None = None,
    eval_step: StepFn | None = None,
    optimizer: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a trainer for a model that returns its own loss, or for your own step.

    The loop it runs::

        for epoch in 1..num_epochs:
            for batch in train_loader:                # order fixed by (seed, epoch)
                batch = to_device(batch)
                with autocast:                        # your train_step runs in here
                    loss = train_step(model, batch)   # default: extract_loss(model(**batch))
                backward(loss / group_size)           # accumulation, no_sync under DDP
                if end of group: clip; optimizer.step(); schedules
            if epoch % validate_every == 0:
                for batch in val_loader:              # model.eval(), torch.no_grad()
                    values = eval_step(model, batch)  # default: train_step / {"loss": ...}
                metrics = batch-size-weighted means of values (+ perplexity = exp(loss))
            history, stop rules, TensorBoard, checkpoints

    ``train_step(model, batch)`` receives the training module (DDP-wrapped under
    several processes) and the batch already on the device, runs inside the autocast
    context, and returns the loss (a floating scalar tensor that requires grad) or a
    dict with ``"loss"`` and other values; scalar values are averaged per epoch and
    logged as ``train/<key>``. It must not call ``backward`` or step the optimizer:
    ignitrain's shared ``OptimizerStep`` does that (accumulation, clipping, AMP
    scaling, NaN guard).

    ``eval_step(model, batch)`` runs under ``torch.no_grad()`` with the model in eval
    mode and returns a dict (or a scalar loss, meaning ``{"loss": ...}``); every scalar
    value becomes a metric, the mean over the evaluation set weighted by batch size
    (the leading size of the first tensor in the batch). Non-scalar values (logits,
    labels) are passed on for the Ignite ``metrics=`` you add. Without ``eval_step``,
    evaluation uses ``train_step`` (or the default step) in eval mode, so it reports
    ``loss`` and the other values training logs.

    Attached to ``trainer.engine``: epoch sync of the data order (``EPOCH_STARTED``);
    epoch means of ``loss`` and of the other scalar values of the step output;
    LR/momentum schedules; validation, History, stop rules, epoch summary,
    TensorBoard (``EPOCH_COMPLETED``); periodic checkpoints (``ITERATION_COMPLETED``),
    best checkpoint and last one (``COMPLETED``) when ``config.output_dir`` is set.

    Args:
        model: The ``nn.Module`` to train.
        config: A :class:`~ignitrain.TrainConfig`. ``config.loss`` must stay ``None``
            (the model or ``train_step`` computes the loss); ``config.metrics`` may
            hold ``"perplexity"``; ``config.best_metric`` defaults to ``"loss"``.
        train_data: A ``Dataset`` (loaders built from the config) or a loader; batches
            are dicts, tuples/lists or tensors.
        val_data: Validation data like ``train_data``; ``None`` skips validation.
        train_step: ``(model, batch) -> loss | {"loss": loss, ...}``.
        eval_step: ``(model, batch) -> {name: value}`` (or a scalar loss).
        optimizer: Optimizer object or factory, overriding ``config.optimizer``.
        metrics: Extra Ignite metrics by name, fed the ``eval_step`` output dict (give
            them an ``output_transform``).

    Returns:
        A :class:`~ignitrain.Trainer`.

    Raises:
        ConfigError: ``config.loss`` is set, or ``config.metrics`` names an unknown metric.
        TypeError: ``train_step``/``eval_step`` is not a callable of two arguments.
        ValueError: at the first batch, when no loss is found in the model output.

    Example:
        >>> cfg = TrainConfig(num_epochs=3, lr=3e-4, metrics=["perplexity"])
        >>> trainer = create_trainer(gpt2, cfg, train_ds, val_ds)   # dict batches with labels
        >>> trainer.train()
        >>> trainer.evaluate(test_ds)["perplexity"]
    """
    config = _parts.check_config(config)
    model = _parts.check_model(model, seed=config.seed)
    user_metrics = _parts.check_metrics(metrics)
    _check_step_fn(train_step, "train_step")
    _check_step_fn(eval_step, "eval_step")
    if config.loss is not None:
        raise ConfigError(
            f"TrainConfig.loss={config.loss!r} is not used by create_trainer: the model (or "
            "train_step) computes the loss. Leave it None, or use a flavor that takes a loss "
            "(create_classification_trainer, create_regression_trainer...)"
        )
    want_perplexity = _check_metric_names(config.metrics)

    device = _parts.setup_run(config)
    train_loader, val_loader = _parts.make_loaders(train_data, val_data, config)
    net, model = _parts.place_model(model, config, device)
    opt = _parts.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    step = train_step or default_step
    update = generic_update(net, opt_step, step, device, channels_last=config.channels_last)
    engine = _parts.make_engine(update, train_loader, config)
    # before attach_handlers, so History records these means at the same EPOCH_COMPLETED
    output_means = TrainOutputMeans().attach(engine)

    def all_metrics() -> dict[str, Metric]:
        found: dict[str, Metric] = {"step_outputs": OutputMean(perplexity=want_perplexity)}
        found.update({name: copy.deepcopy(m) for name, m in user_metrics.items()})
        return found

    eval_fn = generic_evaluate(
        model, device, opt_step.autocast, eval_step or step, channels_last=config.channels_last
    )
    parts = RunParts(
        engine,
        config,
        _parts.one_model(model, opt, opt_step, device),
        Steps(
            update,
            _parts.make_evaluator_factory(eval_fn, all_metrics),
            GenericPredictor(model, device, opt_step.autocast),
        ),
        RunData(train_loader, val_loader),
        state={"train_output_means": output_means},
        flavor="generic",
    )
    return build_trainer(parts, AttachOptions(default_best_metric="loss"))
