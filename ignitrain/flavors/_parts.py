"""The parts every flavor factory is built from, in the order a factory uses them.

A factory reads top to bottom like a recipe (data flows one way: config -> parts ->
handlers -> Trainer)::

    config = check_config(config)                       # once, at the factory's door
    device = setup_run(config)                          # seed, determinism, device
    train_loader, val_loader = make_loaders(train_data, val_data, config)
    net, model = place_model(model, config, device)     # DDP / FSDP / compile / channels_last
    optimizer = make_optimizer(config, model)
    opt_step = OptimizerStep(optimizer, net, StepOptions.from_config(config, device), device)
    engine = make_engine(update_fn, train_loader, config)
    parts = RunParts(engine, config, Learning(...), Steps(...), RunData(...))
    trainer = build_trainer(parts, AttachOptions(...))  # flavors/_attach.py: handlers, then Trainer
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from ignitrain.checks import check_data, check_run_config
from ignitrain.config import TrainConfig
from ignitrain.data import (
    attach_epoch_sync,
    loader_length,
    make_eval_loader,
    make_train_loader,
    quiet_ignite_auto_loggers,
)
from ignitrain.engine import LeanEngine
from ignitrain.errors import ConfigError, suggest
from ignitrain.fsdp import FSDPOptions, shard_model
from ignitrain.metric_names import is_train_metric
from ignitrain.registry import build_optimizer
from ignitrain.seeding import seed_everything
from ignitrain.trainer import Learning

__all__ = [
    "check_config",
    "check_model",
    "check_metrics",
    "resolve_device",
    "setup_run",
    "make_loaders",
    "place_model",
    "make_optimizer",
    "make_engine",
    "make_evaluator_factory",
    "one_model",
    "evaluator_metric_names",
    "check_watched_metrics",
    "warn_long_warmup",
]


# -- checks at the factory's door ---------------------------------------------------


def check_config(config: Any) -> TrainConfig:
    """``config`` must be a ``TrainConfig`` (a mapping is converted); checked once.

    Raises:
        TypeError: ``config`` is neither a ``TrainConfig`` nor a mapping.
    """
    if isinstance(config, Mapping):
        return check_run_config(TrainConfig.from_dict(config))
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an ignitrain.TrainConfig, got {type(config).__name__}")
    return check_run_config(config)  # seed range, writable output_dir (ignitrain/checks.py)


def check_model(model: Any, name: str = "model", *, seed: int | None = None) -> nn.Module:
    """``model``, or ``model()`` built after seeding with ``seed`` when it is a factory.

    Raises:
        TypeError: not a ``torch.nn.Module`` (nor a factory of one).
        ValueError: the module has no parameters.
    """
    if _is_factory(model):
        seed_everything(seed)  # issue 13: initial weights follow config.seed
        model = model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{name} ({type(model).__name__}) has no parameters to train")
    return model


def _is_factory(model: Any) -> bool:
    """A callable taking no arguments that is not a module: ``lambda: Net()``, ``Net``."""
    if isinstance(model, nn.Module) or not callable(model):
        return False
    try:
        inspect.signature(model).bind()
    except (TypeError, ValueError):
        return False  # e.g. a forward function passed by mistake: "must be a Module"
    return True


def check_metrics(metrics: Any) -> dict[str, Metric]:
    """The user's extra metrics as a dict (``None``: none).

    Raises:
        TypeError: not a mapping of name -> ``ignite.metrics.Metric``.
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping name -> ignite.metrics.Metric, got {type(metrics).__name__}"
        )
    for name, metric in metrics.items():
        if not isinstance(metric, Metric):
            raise TypeError(
                f"metrics[{name!r}] must be an ignite.metrics.Metric, got {type(metric).__name__}"
            )
    return dict(metrics)


# -- run set-up -----------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"``: this process's CUDA device, else MPS, else CPU.

    Raises:
        ValueError: a CUDA device is named but CUDA is not available.
    """
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"TrainConfig.device={name!r} is not allowed: CUDA is not available here"
            )
        return device
    if torch.cuda.is_available():
        return idist.device()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup_run(config: TrainConfig) -> torch.device:
    """Seed Python/NumPy/torch (``seed + rank``), set determinism, pick the device."""
    if config.seed is not None:
        # the one seeder; each rank its own stream (dropout, augmentation differ per rank)
        seed_everything(config.seed + idist.get_rank())
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return resolve_device(config.device)


def make_loaders(train_data: Any, val_data: Any, config: TrainConfig) -> tuple[Any, Any]:
    """Loaders from Datasets (built from the config) or the user's own iterables.

    Raises:
        ValueError: no training data, or it gives no batches.
    """
    if train_data is None:
        raise ValueError(
            "train_data must be a Dataset, a DataLoader or an iterable of batches, got None"
        )
    train_loader = make_train_loader(train_data, config)
    if loader_length(train_loader) == 0:
        raise ValueError(
            f"train_data gives no batches (batch_size={config.batch_size}, "
            f"drop_last={config.drop_last}, {idist.get_world_size()} process(es)): "
            "use a smaller batch_size or more data"
        )
    val_loader = make_eval_loader(val_data, config)
    check_data(train_data, val_data, val_loader, config)  # one-pass, empty (ignitrain/checks.py)
    return train_loader, val_loader


def place_model(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """``(net, model)``: ``net`` runs the training forward (DDP-wrapped, compiled);
    ``model`` is the user's module, which checkpoints and evaluation use."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if idist.get_world_size() > 1 and config.parallel == "fsdp":  # issue 14
        net = model = shard_model(model, FSDPOptions.from_config(config, device), device)
    elif idist.get_world_size() > 1:
        quiet_ignite_auto_loggers()
        net = idist.auto_model(model)
    else:
        net = model.to(device)
    if config.compile:
        net = torch.compile(net)
    return net, model


def make_optimizer(
    config: TrainConfig, model: nn.Module, optimizer: Any = None
) -> torch.optim.Optimizer:
    """The optimizer named in the config (or given), over ``model``'s parameters.

    Raises:
        TypeError: an optimizer factory returned something else than an optimizer.
    """
    spec = config.optimizer if optimizer is None else optimizer
    opt = build_optimizer(
        spec,
        (p for p in model.parameters() if p.requires_grad),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        extra=config.optimizer_kwargs,
    )
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer factory must return a torch.optim.Optimizer, got {type(opt).__name__}"
        )
    return idist.auto_optim(opt)


def make_engine(
    update_fn: Callable[[Engine, Any], Any], train_loader: Any, config: TrainConfig
) -> Engine:
    """The training ``Engine`` (a :class:`~ignitrain.engine.LeanEngine`) with its data
    order tied to the epoch (registered first)."""
    engine = LeanEngine(update_fn)
    attach_epoch_sync(engine, train_loader, config.seed or 0)
    return engine


def make_evaluator_factory(
    eval_fn: Callable[[Engine, Any], Any], metrics_fn: Callable[[], Mapping[str, Metric]]
) -> Callable[[], Engine]:
    """A callable building a fresh evaluation ``Engine`` with fresh metric objects."""

    def make() -> Engine:
        evaluator = LeanEngine(eval_fn)
        metrics = metrics_fn()
        for name, metric in metrics.items():
            metric.attach(evaluator, name)
        if all(_names_known(m) for m in metrics.values()):
            _METRIC_NAMES[evaluator] = frozenset(
                n
                for name, m in metrics.items()
                for n in (name, *vars(m).get("ignitrain_names", ()))
            )
        return evaluator

    return make


# Which metric names each evaluator made here computes, when they are known before it
# runs: the names a stop rule or best checkpoint watches are checked at factory time.
_METRIC_NAMES: weakref.WeakKeyDictionary[Engine, frozenset[str]] = weakref.WeakKeyDictionary()


def _names_known(metric: Metric) -> bool:
    # A metric whose compute() returns a mapping adds its keys to state.metrics (Ignite),
    # so its names are known before a run only when it says them (``ignitrain_names``, e.g.
    # AccuracyLoss): not for the every-key OutputMean, nor for a user's metric class
    # (not Ignite's, not ours) that might return a mapping.
    # vars(): Ignite's Metric.__getattr__ turns any missing attribute into a MetricsLambda
    if vars(metric).get("key", "") is None:  # OutputMean over every key of the step output
        return False
    return type(metric).__module__.startswith(("ignite.metrics", "ignitrain."))


def evaluator_metric_names(evaluator: Engine | None) -> frozenset[str] | None:
    """The metric names ``evaluator`` computes, or ``None`` when they are known only
    after it ran (a metric returning a mapping, a user's metric class, a user's engine)."""
    return None if evaluator is None else _METRIC_NAMES.get(evaluator)


def one_model(
    model: nn.Module, optimizer: torch.optim.Optimizer, opt_step: Any, device: torch.device
) -> Learning:
    """The :class:`~ignitrain.trainer.Learning` of a one-model, one-optimizer flavor."""
    return Learning({"model": model}, {"optimizer": optimizer}, {"optimizer": opt_step}, device)


def check_watched_metrics(config: TrainConfig, evaluator: Engine | None, metric: str) -> None:
    """Refuse, before training, a best/stop metric the deciding evaluator never computes.

    Args:
        config: The checked config (``stop_when`` names).
        evaluator: The evaluator whose runs decide (``None``: no validation).
        metric: The metric ranking best checkpoints and early stopping (split-free).

    Without this a typo (``best_metric="acuracy"``, ``stop_when={"los": 0.1}``) fails
    only after the first epoch's evaluation. Skipped when the names are known only
    after a run (see :func:`evaluator_metric_names`).
    """
    computed = evaluator_metric_names(evaluator)
    if computed is None:
        return
    watched = dict.fromkeys(config.stop_when, "stop_when")
    if not is_train_metric(metric):
        watched.setdefault(metric, "best_metric")
    for name, field in watched.items():
        if name not in computed:
            raise ConfigError(
                f"TrainConfig.{field}: metric {name!r} is not computed by the validation "
                f"evaluator.{suggest(name, computed)} It computes: {', '.join(sorted(computed))}"
            )


def warn_long_warmup(config: TrainConfig, context: Mapping[str, int]) -> None:
    """Warn at factory time when ``warmup_steps`` is not shorter than the run."""
    # issue 12: a warm-up longer than the run never reaches the configured lr; said once
    # at factory time (a short smoke run may mean it, so not refused)
    total = context["num_epochs"] * context["steps_per_epoch"]
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if config.warmup_steps and config.warmup_steps >= total:
        warnings.warn(
            f"TrainConfig.warmup_steps={config.warmup_steps} is not shorter than the run "
            f"({total} optimizer steps): the lr never reaches lr={config.lr}",
            UserWarning,
            stacklevel=4,
        )
