"""The parts every flavor factory is built from, in the order a factory uses them.

A factory reads top to bottom like a recipe::

    device = setup_run(config)                          # seed, determinism, device
    train_loader, val_loader = make_loaders(train_data, val_data, config)
    net, model = place_model(model, config, device)     # DDP / compile / channels_last
    optimizer = make_optimizer(config, model)
    opt_step = OptimizerStep(optimizer, net, StepOptions.from_config(config, device), device)
    engine = make_engine(update_fn, train_loader, config)
    trainer = Trainer(...)
    attach_handlers(trainer, ...)                       # every handler the config asks for
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.data import (
    attach_epoch_sync,
    loader_length,
    make_eval_loader,
    make_train_loader,
    quiet_ignite_auto_loggers,
)
from ignitrain.handlers._modes import infer_mode
from ignitrain.handlers.history import History, attach_history
from ignitrain.handlers.logging import attach_epoch_summary, attach_progress_bar, attach_tensorboard
from ignitrain.handlers.metrics import attach_epoch_mean
from ignitrain.trainer import Trainer

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
    "single_model_trainer",
    "attach_validation",
    "attach_handlers",
]

logger = logging.getLogger("ignitrain")


# -- checks at the factory's door ---------------------------------------------------


def check_config(config: Any) -> TrainConfig:
    """``config`` must be a ``TrainConfig`` (a mapping is converted)."""
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an ignitrain.TrainConfig, got {type(config).__name__}")
    return config


def check_model(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{name} ({type(model).__name__}) has no parameters to train")
    return model


def check_metrics(metrics: Any) -> dict[str, Metric]:
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
    """``"auto"``: this process's CUDA device, else MPS, else CPU."""
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
        seed = config.seed + idist.get_rank()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return resolve_device(config.device)


def make_loaders(train_data: Any, val_data: Any, config: TrainConfig) -> tuple[Any, Any]:
    """Loaders from Datasets (built from the config) or the user's own iterables."""
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
    return train_loader, make_eval_loader(val_data, config)


def place_model(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """``(net, model)``: ``net`` runs the training forward (DDP-wrapped, compiled);
    ``model`` is the user's module, which checkpoints and evaluation use."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if idist.get_world_size() > 1 and config.parallel == "fsdp":  # issue 14
        from ignitrain.fsdp import FSDPOptions, shard_model

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
    """The optimizer named in the config (or given), over ``model``'s parameters."""
    from ignitrain.registry import build_optimizer

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
    """The training ``Engine`` with its data order tied to the epoch (registered first)."""
    engine = Engine(update_fn)
    engine.logger = _engine_logger("train")
    attach_epoch_sync(engine, train_loader, config.seed or 0)
    return engine


def make_evaluator_factory(
    eval_fn: Callable[[Engine, Any], Any], metrics_fn: Callable[[], Mapping[str, Metric]]
) -> Callable[[], Engine]:
    """A callable building a fresh evaluation ``Engine`` with fresh metric objects."""

    def make() -> Engine:
        evaluator = Engine(eval_fn)
        evaluator.logger = _engine_logger("eval")
        for name, metric in metrics_fn().items():
            metric.attach(evaluator, name)
        return evaluator

    return make


def single_model_trainer(
    *,
    engine: Engine,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    eval_fn: Callable[[Engine, Any], Any],
    metrics_fn: Callable[[], Mapping[str, Metric]],
    train_loader: Any,
    val_loader: Any,
    train_step: Callable[[Engine, Any], Any],
    device: torch.device,
) -> Trainer:
    """The :class:`Trainer` of a one-model, one-optimizer flavor, with a fresh History
    and a ``"val"`` evaluator when there is validation data (handlers not attached yet)."""
    make_evaluator = make_evaluator_factory(eval_fn, metrics_fn)
    return Trainer(
        engine=engine,
        config=config,
        models={"model": model},
        optimizers={"optimizer": optimizer},
        history=History(),
        make_evaluator=make_evaluator,
        train_loader=train_loader,
        val_loader=val_loader,
        evaluators={"val": make_evaluator()} if val_loader is not None else {},
        train_step=train_step,
        device=device,
    )


def _engine_logger(name: str) -> logging.Logger:
    """Ignite engines log every run start/end at INFO; keep that at WARNING unless the
    user set a level on ``ignitrain.engines`` themselves."""
    parent = logging.getLogger("ignitrain.engines")
    if parent.level == logging.NOTSET:
        parent.setLevel(logging.WARNING)
    return logging.getLogger(f"ignitrain.engines.{name}")


# -- handlers -------------------------------------------------------------------------


def attach_validation(engine: Engine, evaluator: Engine, loader: Any, *, every: int = 1) -> None:
    """Run ``evaluator`` on ``loader`` after every ``every``-th epoch and the last one."""

    def validate(engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % every == 0 or epoch == engine.state.max_epochs:
            evaluator.run(loader)

    engine.add_event_handler(Events.EPOCH_COMPLETED, validate)


def attach_handlers(
    trainer: Trainer,
    *,
    opt_steps: Mapping[str, Any],
    default_best_metric: str,
    loss_names: tuple[str, ...] = ("loss",),
) -> None:
    """Attach everything the config asks for, in an order that makes each see the last.

    On the training engine, in this order: epoch means of the losses; LR/momentum
    schedules; validation (``EPOCH_COMPLETED``); History; stop rules; TensorBoard,
    progress bar and epoch summary; checkpoints and preemption (last, so they save
    what the handlers before them produced). Handlers are plain Ignite handlers:
    ``trainer.engine.remove_event_handler`` removes any of them.
    """
    config, engine = trainer.config, trainer.engine
    out_dir = Path(config.output_dir) if config.output_dir else None
    objects = trainer.checkpointables
    objects["trainer"] = engine
    for name, model in trainer.models.items():
        objects[name] = model
    for name, optimizer in trainer.optimizers.items():
        objects[name] = optimizer
    for name, step in opt_steps.items():
        objects[f"{name}_step"] = step
    for name in loss_names:
        objects[f"epoch_mean_{name}"] = attach_epoch_mean(engine, name, _key(name))

    val = trainer.evaluators.get("val")
    best_metric = config.best_metric or default_best_metric
    best_mode = config.best_mode or infer_mode(best_metric)
    _attach_schedules(trainer, objects, val, best_metric, best_mode)
    if val is not None:
        attach_validation(engine, val, trainer.val_loader, every=config.validate_every)
    # before History's own COMPLETED save, so history.json holds the stop reason
    engine.add_event_handler(Events.COMPLETED, _report_stop, trainer.history)
    attach_history(
        engine,
        trainer.history,
        evaluators=trainer.evaluators,
        optimizer=trainer.optimizer,
        log_every=config.log_every,
        path=out_dir / "history.json" if out_dir else None,
    )
    objects["history"] = trainer.history
    _attach_stopping(trainer, objects, val, best_metric, best_mode)
    tensorboard = None
    if out_dir is not None and config.tensorboard:
        tensorboard = attach_tensorboard(engine, trainer.history, out_dir / "tb")
    attach_progress_bar(engine, enabled=config.progress_bar)
    attach_epoch_summary(engine, trainer.history)
    _attach_checkpoints(trainer, objects, val, best_metric, best_mode, out_dir, tensorboard)


def _key(name: str) -> Callable[[Any], Any]:
    def value(output: Any) -> Any:
        if isinstance(output, Mapping):
            value = output.get(name)
        else:
            value = output if name == "loss" else None
        return value.item() if isinstance(value, torch.Tensor) else value

    return value


def _attach_schedules(
    trainer: Trainer, objects: dict, val: Engine | None, metric: str, mode: str
) -> None:
    config = trainer.config
    if (
        config.lr_scheduler is None
        and config.momentum_scheduler is None
        and not config.warmup_steps
    ):
        return
    from ignitrain.handlers.schedules import attach_schedule, build_schedule

    steps = loader_length(trainer.train_loader) or 1
    for field, param in (("lr_scheduler", "lr"), ("momentum_scheduler", "momentum")):
        spec = getattr(config, field)
        warmup = config.warmup_steps if param == "lr" else 0
        if spec is None and not warmup:
            continue
        for name, optimizer in trainer.optimizers.items():
            schedule = build_schedule(
                spec if spec is not None else "constant",
                optimizer,
                num_epochs=config.num_epochs,
                steps_per_epoch=steps,
                warmup_steps=warmup,
                param_name=param,
                field=field,
            )
            if schedule is None:
                continue
            attach_schedule(trainer.engine, schedule, evaluator=val, metric=metric, mode=mode)
            objects[f"{name}_{param}_schedule"] = schedule


def _attach_stopping(
    trainer: Trainer, objects: dict, val: Engine | None, metric: str, mode: str
) -> None:
    config, engine = trainer.config, trainer.engine
    needs_val = config.early_stopping_patience is not None or config.stop_when
    if needs_val and val is None:
        raise ValueError(
            "TrainConfig.early_stopping_patience/stop_when need validation data: "
            "pass val_data to the factory"
        )
    if not (needs_val or config.time_limit is not None or config.max_steps is not None):
        return
    from ignitrain.handlers import stopping

    if config.early_stopping_patience is not None:
        objects["early_stopping"] = stopping.attach_early_stopping(
            engine,
            val,
            metric,
            patience=config.early_stopping_patience,
            min_delta=config.early_stopping_min_delta,
            mode=mode,
        )
    if config.stop_when:
        objects["stop_when"] = stopping.attach_stop_when(engine, val, config.stop_when)
    if config.time_limit is not None:
        objects["time_limit"] = stopping.attach_time_limit(engine, config.time_limit)
    if config.max_steps is not None:
        stopping.attach_max_steps(engine, config.max_steps)


def _attach_checkpoints(
    trainer: Trainer,
    objects: dict,
    val: Engine | None,
    metric: str,
    mode: str,
    out_dir: Path | None,
    tensorboard: Any = None,
) -> None:
    from ignitrain.distributed import agree_any
    from ignitrain.handlers.checkpoint import CheckpointStore, RNGState, attach_checkpoints
    from ignitrain.handlers.preemption import attach_preemption

    objects["rng"] = RNGState()
    if out_dir is None:
        return
    config = trainer.config
    # write, fsync, rename, pointer and eviction run on a worker thread: the training
    # thread only serializes (measured: a 117 MiB checkpoint blocks it 0.69x a bare
    # torch.save, against 1.05-1.45x inline). A failed commit raises at the next save
    # or at the end.
    # issue 14: FSDP models are saved as sharded folders, by every rank, inline
    from ignitrain.handlers.sharded_run import uses_fsdp

    sharded = uses_fsdp(trainer.models)
    store = CheckpointStore(out_dir / "checkpoints", n_saved=config.n_saved, background=not sharded)
    trainer.checkpoints = attach_checkpoints(
        trainer.engine,
        objects,
        store,
        save_every=config.save_every,
        evaluator=val,
        best_metric=metric,
        best_mode=mode,
        save_best=config.save_best and val is not None,
        save_last=True,
        extra_fn=lambda: _flushed_extra(trainer, tensorboard),
        accumulation_steps=config.grad_accumulation_steps,  # save_every counts optimizer steps
        sharded=sharded,
    )
    # Under several processes every rank must stop at the same iteration: a signal
    # reaching one rank is agreed over all of them (one small all-reduce per iteration).
    agree = agree_any if idist.get_world_size() > 1 else None
    attach_preemption(
        trainer.engine,
        lambda: trainer.checkpoints.save_now(
            "preempt", f"iter{trainer.engine.state.iteration:08d}"
        ),
        agree=agree,
    )


def _flushed_extra(trainer: Trainer, tensorboard: Any) -> dict:
    # A SIGKILL loses TensorBoard events still in the writer's queue, and a resumed run
    # purges nothing before its checkpoint: flush first, so every value the checkpoint
    # covers is on disk when the checkpoint is.
    if tensorboard is not None:
        tensorboard.flush()
    return trainer.checkpoint_extra()


def _report_stop(engine: Engine, history: Any) -> None:
    reason = getattr(engine.state, "stop_reason", None)
    history.meta["stop_reason"] = reason or "completed"
    history.meta["stopped_at"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
    if reason:
        logger.info(
            "Training stopped early at epoch %d, iteration %d: %s",
            engine.state.epoch,
            engine.state.iteration,
            reason,
        )
