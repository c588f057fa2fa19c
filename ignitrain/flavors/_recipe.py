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

from ignitrain.callbacks import attach_callbacks
from ignitrain.checks import check_data, check_run_config
from ignitrain.config import TrainConfig
from ignitrain.console import attach_console
from ignitrain.data import (
    attach_epoch_sync,
    loader_length,
    make_eval_loader,
    make_train_loader,
    quiet_ignite_auto_loggers,
)
from ignitrain.handlers.attached import AttachedHandler, AttachedHandlers, recording
from ignitrain.handlers.history import History, attach_history
from ignitrain.handlers.logging import attach_epoch_summary, attach_progress_bar, attach_tensorboard
from ignitrain.handlers.metrics import attach_epoch_mean
from ignitrain.handlers.modes import infer_mode
from ignitrain.train_ranking import is_train_metric, ranking_source
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
    "attach_evaluation_sets",
    "attach_handlers",
    "schedule_context",
]

logger = logging.getLogger("ignitrain")


# -- checks at the factory's door ---------------------------------------------------


def check_config(config: Any) -> TrainConfig:
    """``config`` must be a ``TrainConfig`` (a mapping is converted)."""
    if isinstance(config, Mapping):
        return check_run_config(TrainConfig.from_dict(config))
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an ignitrain.TrainConfig, got {type(config).__name__}")
    return check_run_config(config)  # seed range, writable output_dir (ignitrain/checks.py)


def check_model(model: Any, name: str = "model", *, seed: int | None = None) -> nn.Module:
    """``model``, or ``model()`` built after seeding with ``seed`` when it is a factory."""
    if _is_factory(model):
        from ignitrain.seeding import seed_everything

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
    import inspect

    try:
        inspect.signature(model).bind()
    except (TypeError, ValueError):
        return False  # e.g. a forward function passed by mistake: "must be a Module"
    return True


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
    attach_epoch_sync(engine, train_loader, config.seed or 0)
    return engine


def make_evaluator_factory(
    eval_fn: Callable[[Engine, Any], Any], metrics_fn: Callable[[], Mapping[str, Metric]]
) -> Callable[[], Engine]:
    """A callable building a fresh evaluation ``Engine`` with fresh metric objects."""

    def make() -> Engine:
        evaluator = Engine(eval_fn)
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
    predictor: Callable[[Any], Any] | None = None,
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
        predictor=predictor,
    )


# -- handlers -------------------------------------------------------------------------


def attach_validation(engine: Engine, evaluator: Engine, loader: Any, *, every: int = 1) -> None:
    """Run ``evaluator`` on ``loader`` after every ``every``-th epoch and the last one."""
    from ignitrain.handlers.evaluation import EvalSet, attach_evaluations

    attach_evaluations(engine, [EvalSet("val", evaluator, loader, every)])


def attach_evaluation_sets(
    trainer: Trainer, metric: str, ema: Any = None
) -> tuple[Callable[[Engine], Any], Engine | None, str]:
    """The evaluation sets of ``trainer.val_loader`` and which one decides.

    ``val_loader`` is one data set (``"val"``) or a mapping ``{"val": ..., "test": ...}``;
    each set gets an evaluator in ``trainer.evaluators`` (and, with ``ema``, an
    ``"ema/<set>"`` one run with the EMA weights). ``metric`` (``"accuracy"``,
    ``"val/accuracy"``, ``"ema/val/accuracy"``) names the set whose runs drive best
    checkpoints, stop rules and plateau schedules (a bare name: ``"val"``, else the first
    set not named ``"test"``).

    Returns:
        ``(attach, decision evaluator or None, metric name in its state.metrics)``;
        ``attach(engine)`` registers the runs (see
        :func:`~ignitrain.handlers.evaluation.attach_evaluations`).
    """
    from ignitrain.handlers.evaluation import EvalSet, attach_evaluations, eval_sets, split_metric

    config = trainer.config
    found = eval_sets(
        trainer.val_loader,
        lambda data: make_eval_loader(data, config),
        validate_every=config.validate_every,
        eval_every=config.eval_every,
    )
    if "val" not in found:
        trainer.evaluators.pop("val", None)
    sets = []
    for name, (loader, every) in found.items():
        evaluator = trainer.evaluators.get(name) or trainer.make_evaluator()
        trainer.evaluators[name] = evaluator
        sets.append(EvalSet(name, evaluator, loader, every))
        if ema is not None:
            trainer.evaluators[f"ema/{name}"] = ema_evaluator = trainer.make_evaluator()
            sets.append(EvalSet(f"ema/{name}", ema_evaluator, loader, every, ema.swapped))
    default = "val" if "val" in found else next((n for n in found if n != "test"), "val")
    attach = lambda engine: attach_evaluations(engine, sets)  # noqa: E731
    if is_train_metric(metric):  # issue 13: ranked by the training epoch means instead
        return attach, trainer.evaluators.get(default), metric
    split, metric = split_metric(metric, trainer.evaluators, default)
    if split in found:
        trainer.val_loader = found[split][0]
    return attach, trainer.evaluators.get(split), metric


def attach_handlers(
    trainer: Trainer,
    *,
    opt_steps: Mapping[str, Any],
    default_best_metric: str,
    loss_names: tuple[str, ...] = ("loss",),
    validate: bool = True,
) -> AttachedHandlers:
    """The switchboard: attach everything the config asks for; return what it attached.

    The flavors and :func:`ignitrain.attach` both call this. On the training engine,
    in this order (numbered where the order matters, with the reason):

    1. ``stop_reasons``: declares ``engine.state.stop_reason`` before any rule can stop.
    2. ``epoch_mean_<loss>``: epoch means of the losses, before History reads them.
    3. ``<optimizer>_<lr|momentum>_schedule`` and ``lr_writers``: schedules, and the check
       (at ``STARTED``) that no other handler writes the same optimizer value.
    4. ``validation``: the evaluator after every ``validate_every``-th epoch (skipped with
       ``validate=False``, when the user's own handler runs the evaluator).
    5. ``stop_report``: before History's own ``COMPLETED`` save, so ``history.json``
       holds the stop reason.
    6. ``history``; 7. stop rules (``early_stopping``, ``stop_when``, ``time_limit``,
       ``max_steps``), deciding on the validation run's ``COMPLETED``.
    8. ``tensorboard``, ``progress_bar``, ``epoch_summary``.
    9. ``checkpoints`` and ``preemption``: last, so they save what the others produced.

    Every entry of the returned mapping (also ``trainer.handlers``) lists its Ignite
    event handlers: ``engine.remove_event_handler(fn, event)`` removes one,
    ``entry.detach()`` all of them.

    ``trainer.evaluators["val"]`` is the engine every decision listens to (with
    :func:`ignitrain.attach` a :class:`~ignitrain.stack.SplitView` of a shared
    evaluator).
    """
    config, engine = trainer.config, trainer.engine
    handlers = trainer._handlers
    out_dir = Path(config.output_dir) if config.output_dir else None
    objects = trainer.checkpointables
    objects["trainer"] = engine
    for name, model in trainer.models.items():
        objects[name] = model
    for name, optimizer in trainer.optimizers.items():
        objects[name] = optimizer
    for name, step in opt_steps.items():
        objects[f"{name}_step"] = step

    from ignitrain.handlers.stopping import record_stop_reasons

    with recording(handlers, "stop_reasons", engine):
        record_stop_reasons(engine)
    for name in loss_names:
        with recording(handlers, f"epoch_mean_{name}", engine) as entry:
            objects[f"epoch_mean_{name}"] = attach_epoch_mean(engine, name, _key(name))
            entry.handler = objects[f"epoch_mean_{name}"]

    # issue 15: EMA weights (before checkpoints: a periodic save holds this iteration's
    # update); evaluation sets and the one that decides (best_metric="val/accuracy")
    with recording(handlers, "ema", engine) as entry:
        ema = entry.handler = _attach_ema(trainer, objects, opt_steps)
    best_metric = config.best_metric or default_best_metric
    evaluations, val, best_metric = attach_evaluation_sets(trainer, best_metric, ema)
    best_mode = config.best_mode or infer_mode(best_metric)
    # issue 13: best_metric="train/loss" ranks by the training epoch means (no val needed)
    with recording(handlers, "train_ranking", engine):
        ranked_by, ranked_name = ranking_source(engine, val, best_metric)
    _attach_schedules(trainer, objects, ranked_by, ranked_name, best_mode)
    if validate:
        with recording(handlers, "validation", engine, *trainer.evaluators.values()):
            evaluations(engine)
    with recording(handlers, "stop_report", engine):
        engine.add_event_handler(Events.COMPLETED, _report_stop, trainer.history)
    # issue 13: wall time into history.meta and the final line, before History saves
    with recording(handlers, "console", engine):
        attach_console(trainer, best_metric)
    with recording(handlers, "history", engine, *trainer.evaluators.values()) as entry:
        entry.handler = attach_history(
            engine,
            trainer.history,
            evaluators=trainer.evaluators,
            optimizer=trainer.optimizer,
            log_every=config.log_every,
            path=out_dir / "history.json" if out_dir else None,
        )
    objects["history"] = trainer.history
    _attach_stopping(trainer, objects, ranked_by, ranked_name, best_mode)
    tensorboard = None
    if out_dir is not None and config.tensorboard:
        with recording(handlers, "tensorboard", engine) as entry:
            tensorboard = entry.handler = attach_tensorboard(
                engine, trainer.history, out_dir / "tb"
            )
    with recording(handlers, "progress_bar", engine) as entry:
        entry.handler = attach_progress_bar(engine, enabled=config.progress_bar)
    with recording(handlers, "epoch_summary", engine):
        attach_epoch_summary(engine, trainer.history)
    with recording(handlers, "callbacks", engine):
        attach_callbacks(trainer)  # issue 13: fn(trainer, epoch, metrics), after the History
    with recording(handlers, "checkpoints", engine, ranked_by) as entry:
        _attach_checkpoints(
            trainer, objects, ranked_by, ranked_name, best_mode, out_dir, tensorboard
        )
        entry.handler = trainer.checkpoints
    _split_preemption(handlers)
    _attach_records(trainer, out_dir)  # issue 15: run.json, MLflow, profile (last: sees all)
    return handlers


def _split_preemption(handlers: AttachedHandlers) -> None:
    # The checkpoint attach call also attaches preemption; list it under its own name.
    from ignitrain.handlers.preemption import PreemptionHandler

    if "checkpoints" not in handlers:
        return
    entry = handlers["checkpoints"]
    mine = [
        e for e in entry.events if isinstance(getattr(e[2], "__self__", None), PreemptionHandler)
    ]
    if mine:
        entry.events[:] = [e for e in entry.events if e not in mine]
        handlers._add(AttachedHandler("preemption", mine, mine[0][2].__self__))


def _attach_records(trainer: Trainer, out_dir: Path | None) -> None:
    config, engine, handlers = trainer.config, trainer.engine, trainer._handlers
    if out_dir is not None:
        from ignitrain.run_record import attach_run_record

        with recording(handlers, "run_record", engine) as entry:
            entry.handler = attach_run_record(engine, out_dir, device=trainer.device)
    if config.mlflow:
        from ignitrain.handlers.mlflow import attach_mlflow

        with recording(handlers, "mlflow", engine, *trainer.evaluators.values()) as entry:
            entry.handler = attach_mlflow(trainer, out_dir)
    if config.profile:
        from ignitrain.handlers.profile import attach_profiler

        with recording(handlers, "profile", engine) as entry:
            entry.handler = attach_profiler(engine, out_dir)


def _attach_ema(trainer: Trainer, objects: dict, opt_steps: Mapping[str, Any]) -> Any:
    config = trainer.config
    if config.ema_decay is None:
        return None
    from ignitrain.handlers.ema import attach_ema

    # a GAN averages its generator; every other flavor its one model
    name = "generator" if "generator" in trainer.models else next(iter(trainer.models))
    step = opt_steps.get(name) or next(iter(opt_steps.values()))
    objects["ema"] = ema = attach_ema(
        trainer.engine,
        trainer.models[name],
        decay=config.ema_decay,
        warmup=config.ema_warmup,
        stepped=lambda engine: step.group(engine)[2],
    )
    return ema


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
    from ignitrain.handlers.schedules import attach_lr_writer_guard, attach_schedule, build_schedule

    config, handlers = trainer.config, trainer._handlers
    guarded: list[tuple[Any, str]] = []
    if (
        config.lr_scheduler is not None
        or config.momentum_scheduler is not None
        or config.warmup_steps
    ):
        context = schedule_context(trainer)
        for field, param in (("lr_scheduler", "lr"), ("momentum_scheduler", "momentum")):
            spec = getattr(config, field)
            warmup = config.warmup_steps if param == "lr" else 0
            if spec is None and not warmup:
                continue
            for name, optimizer in trainer.optimizers.items():
                schedule = build_schedule(
                    spec if spec is not None else "constant",
                    optimizer,
                    warmup_steps=warmup,
                    param_name=param,
                    field=field,
                    **context,
                )
                if schedule is None:
                    continue
                key = f"{name}_{param}_schedule"
                with recording(handlers, key, trainer.engine, val) as entry:
                    entry.handler = attach_schedule(
                        trainer.engine,
                        schedule,
                        evaluator=val,
                        metric=metric,
                        mode=mode,
                        accumulation_steps=config.grad_accumulation_steps,
                    )
                objects[key] = schedule
                guarded.append((optimizer, param))
    with recording(handlers, "lr_writers", trainer.engine) as entry:
        # Always: FastaiLRFinder on the run's engine is refused even without a schedule.
        entry.handler = attach_lr_writer_guard(trainer.engine, guarded)


def schedule_context(trainer: Trainer) -> dict[str, int]:
    """``num_epochs``, optimizer steps per epoch and the eval loader length of a run.

    Under gradient accumulation an epoch of ``L`` micro-batches makes
    ``ceil(L / grad_accumulation_steps)`` optimizer steps (the last group of an epoch
    may be shorter): schedules, ``warmup_steps`` and ``max_steps`` count those.
    """
    config = trainer.config
    batches = loader_length(trainer.train_loader) or 1
    k = config.grad_accumulation_steps
    return {
        "num_epochs": config.num_epochs,
        "steps_per_epoch": -(-batches // k),
        "train_loader_len": batches,
        "eval_loader_len": loader_length(trainer.val_loader) or 0,
    }


def _attach_stopping(
    trainer: Trainer,
    objects: dict,
    val: Engine | None,
    metric: str,
    mode: str,
) -> None:
    config, engine, handlers = trainer.config, trainer.engine, trainer._handlers
    needs_val = config.early_stopping_patience is not None or config.stop_when
    if needs_val and val is None:
        raise ValueError(
            "TrainConfig.early_stopping_patience/stop_when need validation data: "
            "pass val_data to the factory, or rank by a training metric with "
            "best_metric='train/loss'"
        )
    if not (needs_val or config.time_limit is not None or config.max_steps is not None):
        return
    from ignitrain.handlers import stopping

    if config.early_stopping_patience is not None:
        with recording(handlers, "early_stopping", engine, val) as entry:
            objects["early_stopping"] = entry.handler = stopping.attach_early_stopping(
                engine,
                val,
                metric,
                patience=config.early_stopping_patience,
                min_delta=config.early_stopping_min_delta,
                mode=mode,
            )
    if config.stop_when:
        with recording(handlers, "stop_when", engine, val) as entry:
            objects["stop_when"] = entry.handler = stopping.attach_stop_when(
                engine, val, config.stop_when
            )
    if config.time_limit is not None:
        with recording(handlers, "time_limit", engine) as entry:
            objects["time_limit"] = entry.handler = stopping.attach_time_limit(
                engine, config.time_limit
            )
    if config.max_steps is not None:
        with recording(handlers, "max_steps", engine) as entry:
            entry.handler = stopping.attach_max_steps(
                engine, config.max_steps, accumulation_steps=config.grad_accumulation_steps
            )


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
        # issue 14: under FSDP a stop mid accumulation group finishes the group first
        boundary=_group_end(config.grad_accumulation_steps) if sharded else None,
    )


def _group_end(k: int) -> Callable[[Engine], bool] | None:
    from ignitrain.steps import ends_accumulation_group

    return None if k == 1 else lambda engine: ends_accumulation_group(engine, k)


def _flushed_extra(trainer: Trainer, tensorboard: Any) -> dict:
    # A SIGKILL loses TensorBoard events still in the writer's queue, and a resumed run
    # purges nothing before its checkpoint: flush first, so every value the checkpoint
    # covers is on disk when the checkpoint is.
    if tensorboard is not None:
        tensorboard.flush()
    return trainer.checkpoint_extra()


def _report_stop(engine: Engine, history: Any) -> None:
    from ignitrain.handlers.stopping import stop_reason

    reason = stop_reason(engine)
    history.meta["stop_reason"] = reason or "completed"
    history.meta["stopped_at"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
    if reason:
        logger.info(
            "Training stopped early at epoch %d, iteration %d: %s",
            engine.state.epoch,
            engine.state.iteration,
            reason,
        )
