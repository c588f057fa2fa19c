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
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from torch import nn

from ignitrain.config import ConfigError, suggest
from ignitrain.distributed import own_rank_state, with_rank_states
from ignitrain.flavors import _recipe as recipe
from ignitrain.predict import GenericPredictor
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import Trainer

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
    if isinstance(result, torch.Tensor) or _is_number(result):
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().item())
    if _is_number(value):
        return float(value)
    return None


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
            if key != "loss" and (value := _scalar(value)) is not None:
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


# -- means of step outputs ----------------------------------------------------------------


def batch_size_of(batch: Any) -> int:
    """Leading size of the first tensor in ``batch`` (dict values, tuple items), else 1."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0)) if batch.dim() > 0 else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, (tuple, list)) or isinstance(batch, Mapping):
        for item in items:
            if isinstance(item, torch.Tensor) and item.dim() > 0:
                return int(item.size(0))
    return 1


def _reduce_sums(sums: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
    """``{key: sum / weight}`` over all processes (keys unioned across ranks)."""
    keys = sorted(sums)
    if idist.get_world_size() > 1:
        # ranks may have seen different keys (or no batch at all): agree on the union
        gathered = idist.all_gather(json.dumps(keys))
        keys = sorted({k for text in gathered for k in json.loads(text)})
        both = torch.tensor(
            [[sums.get(k, 0.0), weights.get(k, 0.0)] for k in keys], dtype=torch.float64
        ).reshape(-1, 2)
        both = idist.all_reduce(both)
        sums = {k: both[i, 0].item() for i, k in enumerate(keys)}
        weights = {k: both[i, 1].item() for i, k in enumerate(keys)}
    return {k: sums[k] / weights[k] for k in keys if weights[k] > 0}


class OutputMean(Metric):
    """Mean of every scalar value of a dict output, each batch weighted by its size.

    Attached to an engine it reads the (dict) output and weighs it by the size of
    ``engine.state.batch`` (see :func:`batch_size_of`); non-scalar values (logits...)
    are skipped. ``update(values)`` (weight 1) or ``update((values, weight))`` feed it
    by hand. ``compute()`` returns ``{key: mean}`` — attached, each key becomes a
    metric of its own — reduced across processes. With ``perplexity=True`` it adds
    ``"perplexity" = exp(mean loss)``.

    Args:
        output_transform: Maps the engine output to the dict of values.
        perplexity: Also report ``exp`` of the mean of ``loss_key``.
        loss_key: The value ``perplexity`` exponentiates.
    """

    required_output_keys = None

    def __init__(
        self,
        output_transform: Callable = lambda x: x,
        *,
        perplexity: bool = False,
        loss_key: str = "loss",
        device: Any = "cpu",
    ):
        self.perplexity = perplexity
        self.loss_key = loss_key
        super().__init__(
            output_transform, device=device, skip_unrolling=True, metrics_result_mode="flatten"
        )

    @reinit__is_reduced
    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        values, weight = (output, 1.0) if isinstance(output, Mapping) else output
        if not isinstance(values, Mapping):
            raise TypeError(f"OutputMean expects a dict of values, got {type(values).__name__}")
        for key, value in values.items():
            if (value := _scalar(value)) is not None:
                self._sums[key] = self._sums.get(key, 0.0) + value * weight
                self._weights[key] = self._weights.get(key, 0.0) + weight

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        self.update(
            (self._output_transform(engine.state.output), batch_size_of(engine.state.batch))
        )

    def compute(self) -> dict[str, float]:
        means = _reduce_sums(self._sums, self._weights)
        if not means:
            raise NotComputableError("OutputMean needs at least one batch with a scalar value")
        if self.perplexity:
            if self.loss_key not in means:
                raise ValueError(
                    f"perplexity needs a {self.loss_key!r} value from the evaluation step; "
                    f"it returned {sorted(means)}"
                )
            loss = means[self.loss_key]
            means["perplexity"] = math.exp(loss) if loss < 709.0 else math.inf
        return means


class TrainOutputMeans:
    """Epoch means of the scalar values of the training output other than ``exclude``.

    Keys are discovered as they appear, so a ``train_step`` returning
    ``{"loss": ..., "accuracy": ...}`` gets ``engine.state.metrics["accuracy"]`` (logged
    as ``train/accuracy``). Like :class:`~ignitrain.handlers.metrics.EpochMean` it
    resets only at a true epoch start and is checkpointable, so a mid-epoch resume
    keeps the means of the iterations before the interruption.
    """

    def __init__(self, exclude: tuple[str, ...] = ("loss",)):
        self.exclude = tuple(exclude)
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def attach(self, engine: Engine) -> TrainOutputMeans:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)
        return self

    def _started(self, engine: Engine) -> None:
        length = engine.state.epoch_length
        if not length or engine.state.iteration == (engine.state.epoch - 1) * length:
            self.sums, self.counts = {}, {}

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping):
            return
        for key, value in output.items():
            if key not in self.exclude and (value := _scalar(value)) is not None:
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0.0) + 1.0

    def _completed(self, engine: Engine) -> None:
        engine.state.metrics.update(_reduce_sums(self.sums, self.counts))

    def state_dict(self) -> dict[str, Any]:
        # per-rank sums (reduced only at the epoch's end): every rank's is kept
        return with_rank_states({"sums": dict(self.sums), "counts": dict(self.counts)})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = own_rank_state(dict(state))
        self.sums = {str(k): float(v) for k, v in state["sums"].items()}
        self.counts = {str(k): float(v) for k, v in state["counts"].items()}


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
    config = recipe.check_config(config)
    model = recipe.check_model(model, seed=config.seed)
    user_metrics = recipe.check_metrics(metrics)
    _check_step_fn(train_step, "train_step")
    _check_step_fn(eval_step, "eval_step")
    if config.loss is not None:
        raise ConfigError(
            f"TrainConfig.loss={config.loss!r} is not used by create_trainer: the model (or "
            "train_step) computes the loss. Leave it None, or use a flavor that takes a loss "
            "(create_classification_trainer, create_regression_trainer...)"
        )
    want_perplexity = _check_metric_names(config.metrics)

    device = recipe.setup_run(config)
    train_loader, val_loader = recipe.make_loaders(train_data, val_data, config)
    net, model = recipe.place_model(model, config, device)
    opt = recipe.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    step = train_step or default_step
    update = generic_update(net, opt_step, step, device, channels_last=config.channels_last)
    engine = recipe.make_engine(update, train_loader, config)
    # before attach_handlers, so History records these means at the same EPOCH_COMPLETED
    output_means = TrainOutputMeans().attach(engine)

    def all_metrics() -> dict[str, Metric]:
        found: dict[str, Metric] = {"step_outputs": OutputMean(perplexity=want_perplexity)}
        found.update({name: copy.deepcopy(m) for name, m in user_metrics.items()})
        return found

    eval_fn = generic_evaluate(
        model, device, opt_step.autocast, eval_step or step, channels_last=config.channels_last
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
        predictor=GenericPredictor(model, device, opt_step.autocast),
    )
    trainer.checkpointables["train_output_means"] = output_means
    recipe.attach_handlers(trainer, opt_steps={"optimizer": opt_step}, default_best_metric="loss")
    trainer.flavor = "generic"  # recorded in checkpoints; a resume into another refuses
    return trainer
