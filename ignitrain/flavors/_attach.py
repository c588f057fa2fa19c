"""The one switchboard: config -> handlers, returning what it attached; then the Trainer.

:func:`build_trainer` is the last step of every flavor factory and of
:func:`ignitrain.attach`: it runs :func:`attach_handlers` on the finished
:class:`~ignitrain.trainer.RunParts` and builds the :class:`~ignitrain.Trainer` from the
parts and the :class:`~ignitrain.trainer.RunOutputs` it returned. Nothing fills the
Trainer in afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain.callbacks import attach_callbacks
from ignitrain.config import TrainConfig
from ignitrain.console import attach_console
from ignitrain.data import loader_length, make_eval_loader
from ignitrain.distributed import agree_any
from ignitrain.flavors import _parts
from ignitrain.handlers import stopping
from ignitrain.handlers.attached import AttachedHandler, AttachedHandlers, recording
from ignitrain.handlers.checkpoint import CheckpointStore, RNGState, attach_checkpoints
from ignitrain.handlers.checkpoint.sharded_run import uses_fsdp
from ignitrain.handlers.ema import attach_ema
from ignitrain.handlers.evaluation import EvalSet, attach_evaluations, eval_sets, split_metric
from ignitrain.handlers.history import History, attach_history
from ignitrain.handlers.logging import attach_epoch_summary, attach_progress_bar, attach_tensorboard
from ignitrain.handlers.metrics import attach_epoch_mean
from ignitrain.handlers.mlflow import attach_mlflow
from ignitrain.handlers.modes import infer_mode
from ignitrain.handlers.preemption import PreemptionHandler, attach_preemption
from ignitrain.handlers.profile import attach_profiler
from ignitrain.handlers.schedules import attach_lr_writer_guard, attach_schedule, build_schedule
from ignitrain.run_record import attach_run_record
from ignitrain.steps import ends_accumulation_group
from ignitrain.train_ranking import is_train_metric, ranking_source
from ignitrain.trainer import RunOutputs, RunParts, Trainer, checkpoint_extra, checkpoint_name

__all__ = [
    "AttachOptions",
    "attach_handlers",
    "attach_validation",
    "build_trainer",
    "schedule_context",
]

logger = logging.getLogger("ignitrain")


@dataclass(frozen=True)
class AttachOptions:
    """What a flavor tells the switchboard beyond the config.

    Attributes:
        default_best_metric: ``best_metric`` when the config names none.
        loss_names: Output keys whose epoch means are recorded (``"loss"``; GAN:
            ``"d_loss"``, ``"g_loss"``).
        validate: ``False`` when the user's own handler runs the evaluator
            (:func:`ignitrain.attach`).
    """

    default_best_metric: str = "loss"
    loss_names: tuple[str, ...] = ("loss",)
    validate: bool = True


@dataclass(frozen=True)
class _Run:
    # What the handlers attached here read while the Trainer does not exist yet
    # (console, MLflow, callbacks take "a trainer": this has the fields they read).
    engine: Engine
    config: TrainConfig
    history: History
    evaluators: Mapping[str, Engine]
    models: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    device: torch.device | None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimizers.get("optimizer", next(iter(self.optimizers.values())))


@dataclass(frozen=True)
class _Decision:
    # The evaluation run that decides (best checkpoint, stop rules, plateau schedule).
    engine: Engine | None
    metric: str
    mode: str


def build_trainer(
    parts: RunParts,
    options: AttachOptions | None = None,
    handlers: AttachedHandlers | None = None,
) -> Trainer:
    """Attach every handler the config asks for, then build the :class:`Trainer`.

    ``handlers``: a mapping already holding what the caller attached first
    (:func:`ignitrain.attach`'s ``"splits"``); the switchboard's entries follow.

    Callbacks (``fn(trainer, epoch, metrics)``) are attached in their place in the
    order; the one back-reference of the run, the finished Trainer, is handed to their
    handler once it exists.
    """
    outputs = attach_handlers(parts, options or AttachOptions(), handlers)
    trainer = Trainer(parts, outputs)
    if "callbacks" in outputs.handlers:
        outputs.handlers["callbacks"].handler.trainer = trainer
    return trainer


def attach_validation(engine: Engine, evaluator: Engine, loader: Any, *, every: int = 1) -> None:
    """Run ``evaluator`` on ``loader`` after every ``every``-th epoch and the last one."""
    attach_evaluations(engine, [EvalSet("val", evaluator, loader, every)])


def attach_handlers(
    parts: RunParts, options: AttachOptions, handlers: AttachedHandlers | None = None
) -> RunOutputs:
    """The switchboard: attach everything the config asks for; return what it attached.

    On the training engine, in this order (numbered where the order matters, with the
    reason):

    1. ``stop_reasons``: declares ``engine.state.stop_reason`` before any rule can stop.
    2. ``epoch_mean_<loss>``: epoch means of the losses, before History reads them.
    3. ``ema``: before checkpoints, so a periodic save holds this iteration's update.
    4. ``<optimizer>_<lr|momentum>_schedule`` and ``lr_writers``: schedules, and the check
       (at ``STARTED``) that no other handler writes the same optimizer value.
    5. ``validation``: the evaluator after every ``validate_every``-th epoch (skipped with
       ``validate=False``, when the user's own handler runs the evaluator).
    6. ``stop_report`` and ``console``: before History's own ``COMPLETED`` save, so
       ``history.json`` holds the stop reason and the wall time.
    7. ``history``; 8. stop rules (``early_stopping``, ``stop_when``, ``time_limit``,
       ``max_steps``), deciding on the validation run's ``COMPLETED``.
    9. ``tensorboard``, ``progress_bar``, ``epoch_summary``, ``callbacks``.
    10. ``checkpoints`` and ``preemption``: last, so they save what the others produced;
        then ``run_record``, ``mlflow``, ``profile`` (they see everything).

    Every entry of the returned ``handlers`` (``trainer.handlers``) lists its Ignite
    event handlers: ``engine.remove_event_handler(fn, event)`` removes one,
    ``entry.detach()`` all of them.
    """
    config, engine, learning = parts.config, parts.engine, parts.learning
    handlers = AttachedHandlers() if handlers is None else handlers
    out_dir = Path(config.output_dir) if config.output_dir else None
    objects = _checkpointables(parts)
    with recording(handlers, "stop_reasons", engine):
        stopping.record_stop_reasons(engine)
    for name in options.loss_names:
        with recording(handlers, f"epoch_mean_{name}", engine) as entry:
            objects[f"epoch_mean_{name}"] = attach_epoch_mean(engine, name, _key(name))
            entry.handler = objects[f"epoch_mean_{name}"]
    with recording(handlers, "ema", engine) as entry:  # issue 15
        ema = entry.handler = _attach_ema(parts, objects)
    # evaluation sets and the one that decides (best_metric="val/accuracy")
    evaluators, val_loader, sets, decision = _evaluation_sets(parts, options, ema)
    _parts.check_watched_metrics(config, decision.engine, decision.metric)
    # issue 13: best_metric="train/loss" ranks by the training epoch means (no val needed)
    with recording(handlers, "train_ranking", engine):
        ranked_by, ranked_name = ranking_source(engine, decision.engine, decision.metric)
    decision = _Decision(ranked_by, ranked_name, decision.mode)
    _attach_schedules(parts, handlers, objects, decision, val_loader)
    if options.validate:
        with recording(handlers, "validation", engine, *evaluators.values()):
            attach_evaluations(engine, sets)
    history = History()
    run = _Run(engine, config, history, evaluators, learning.models, learning.optimizers,
               learning.device)  # fmt: skip
    with recording(handlers, "stop_report", engine):
        engine.add_event_handler(Events.COMPLETED, _report_stop, history)
    with recording(handlers, "console", engine):  # issue 13: wall time, the final line
        attach_console(run, decision.metric)
    with recording(handlers, "history", engine, *evaluators.values()) as entry:
        entry.handler = attach_history(
            engine,
            history,
            evaluators=evaluators,
            optimizer=run.optimizer,
            log_every=config.log_every,
            path=out_dir / "history.json" if out_dir else None,
        )
    objects["history"] = history
    _attach_stopping(config, engine, handlers, objects, decision)
    tensorboard = None
    if out_dir is not None and config.tensorboard:
        with recording(handlers, "tensorboard", engine) as entry:
            tensorboard = entry.handler = attach_tensorboard(engine, history, out_dir / "tb")
    with recording(handlers, "progress_bar", engine) as entry:
        entry.handler = attach_progress_bar(engine, enabled=config.progress_bar)
    with recording(handlers, "epoch_summary", engine):
        attach_epoch_summary(engine, history)
    with recording(handlers, "callbacks", engine) as entry:
        entry.handler = attach_callbacks(run)  # issue 13: fn(trainer, epoch, metrics)
    with recording(handlers, "checkpoints", engine, decision.engine) as entry:
        entry.handler = checkpoints = _attach_checkpoints(
            parts, objects, decision, lambda: _flushed_extra(parts, tensorboard)
        )
    _split_preemption(handlers)
    _attach_records(run, handlers, out_dir)  # issue 15: run.json, MLflow, profile
    return RunOutputs(history, evaluators, val_loader, objects, checkpoints, handlers)


def _checkpointables(parts: RunParts) -> dict[str, Any]:
    # the flavor's own state first, then the engine, models, optimizers and their steps
    objects: dict[str, Any] = dict(parts.state)
    objects["trainer"] = parts.engine
    models = parts.learning.models
    objects.update(models)
    for name, optimizer in parts.learning.optimizers.items():
        objects[checkpoint_name(name, models)] = optimizer
    for name, step in parts.learning.opt_steps.items():
        objects[f"{name}_step"] = step
    return objects


def _evaluation_sets(
    parts: RunParts, options: AttachOptions, ema: Any
) -> tuple[dict[str, Engine], Any, list[EvalSet], _Decision]:
    """The evaluation sets of ``parts.data.val_data`` and which one decides.

    ``val_data`` is one data set (``"val"``) or a mapping ``{"val": ..., "test": ...}``;
    each set gets an evaluator (and, with ``ema``, an ``"ema/<set>"`` one run with the
    EMA weights). ``best_metric`` (``"accuracy"``, ``"val/accuracy"``,
    ``"ema/val/accuracy"``) names the set whose runs drive best checkpoints, stop rules
    and plateau schedules (a bare name: ``"val"``, else the first set not named
    ``"test"``).

    Returns:
        ``(evaluators, the deciding set's loader, the sets, the decision)``.
    """
    config = parts.config
    make = parts.steps.make_evaluator
    found = eval_sets(
        parts.data.val_data,
        lambda data: make_eval_loader(data, config),
        validate_every=config.validate_every,
        eval_every=config.eval_every,
    )
    evaluators = dict(parts.evaluators)
    if "val" not in found:
        evaluators.pop("val", None)
    sets = []
    for name, (loader, every) in found.items():
        evaluator = evaluators.get(name) or make()
        evaluators[name] = evaluator
        sets.append(EvalSet(name, evaluator, loader, every))
        if ema is not None:
            evaluators[f"ema/{name}"] = ema_evaluator = make()
            sets.append(EvalSet(f"ema/{name}", ema_evaluator, loader, every, ema.swapped))
    default = "val" if "val" in found else next((n for n in found if n != "test"), "val")
    metric = config.best_metric or options.default_best_metric
    mode = config.best_mode or infer_mode(metric)
    val_loader = parts.data.val_data
    if is_train_metric(metric):  # issue 13: ranked by the training epoch means instead
        return evaluators, val_loader, sets, _Decision(evaluators.get(default), metric, mode)
    split, metric = split_metric(metric, evaluators, default)
    if split in found:
        val_loader = found[split][0]
    return evaluators, val_loader, sets, _Decision(evaluators.get(split), metric, mode)


def _split_preemption(handlers: AttachedHandlers) -> None:
    # The checkpoint attach call also attaches preemption; list it under its own name.
    if "checkpoints" not in handlers:
        return
    entry = handlers["checkpoints"]
    mine = [
        e for e in entry.events if isinstance(getattr(e[2], "__self__", None), PreemptionHandler)
    ]
    if mine:
        entry.events[:] = [e for e in entry.events if e not in mine]
        handlers._add(AttachedHandler("preemption", mine, mine[0][2].__self__))


def _attach_records(run: _Run, handlers: AttachedHandlers, out_dir: Path | None) -> None:
    config, engine = run.config, run.engine
    if out_dir is not None:
        with recording(handlers, "run_record", engine) as entry:
            entry.handler = attach_run_record(engine, out_dir, device=run.device)
    if config.mlflow:
        with recording(handlers, "mlflow", engine, *run.evaluators.values()) as entry:
            entry.handler = attach_mlflow(run, out_dir)
    if config.profile:
        with recording(handlers, "profile", engine) as entry:
            entry.handler = attach_profiler(engine, out_dir)


def _attach_ema(parts: RunParts, objects: dict) -> Any:
    config, models, opt_steps = parts.config, parts.learning.models, parts.learning.opt_steps
    if config.ema_decay is None:
        return None
    # a GAN averages its generator; every other flavor its one model
    name = "generator" if "generator" in models else next(iter(models))
    step = opt_steps.get(name) or next(iter(opt_steps.values()))
    objects["ema"] = ema = attach_ema(
        parts.engine,
        models[name],
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
    parts: RunParts,
    handlers: AttachedHandlers,
    objects: dict,
    decision: _Decision,
    val_loader: Any,
) -> None:
    config, engine = parts.config, parts.engine
    guarded: list[tuple[Any, str]] = []
    if (
        config.lr_scheduler is not None
        or config.momentum_scheduler is not None
        or config.warmup_steps
    ):
        context = schedule_context(config, parts.data.train_loader, val_loader)
        _parts.warn_long_warmup(config, context)
        for field, param in (("lr_scheduler", "lr"), ("momentum_scheduler", "momentum")):
            spec = getattr(config, field)
            warmup = config.warmup_steps if param == "lr" else 0
            if spec is None and not warmup:
                continue
            for name, optimizer in parts.learning.optimizers.items():
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
                key = f"{checkpoint_name(name, parts.learning.models)}_{param}_schedule"
                with recording(handlers, key, engine, decision.engine) as entry:
                    entry.handler = attach_schedule(
                        engine,
                        schedule,
                        evaluator=decision.engine,
                        metric=decision.metric,
                        mode=decision.mode,
                        accumulation_steps=config.grad_accumulation_steps,
                    )
                objects[key] = schedule
                guarded.append((optimizer, param))
    with recording(handlers, "lr_writers", engine) as entry:
        # Always: FastaiLRFinder on the run's engine is refused even without a schedule.
        entry.handler = attach_lr_writer_guard(engine, guarded)


def schedule_context(config: TrainConfig, train_loader: Any, val_loader: Any) -> dict[str, int]:
    """``num_epochs``, optimizer steps per epoch and the eval loader length of a run.

    Under gradient accumulation an epoch of ``L`` micro-batches makes
    ``ceil(L / grad_accumulation_steps)`` optimizer steps (the last group of an epoch
    may be shorter): schedules, ``warmup_steps`` and ``max_steps`` count those.
    """
    batches = loader_length(train_loader) or 1
    k = config.grad_accumulation_steps
    return {
        "num_epochs": config.num_epochs,
        "steps_per_epoch": -(-batches // k),
        "train_loader_len": batches,
        "eval_loader_len": loader_length(val_loader) or 0,
    }


def _attach_stopping(
    config: TrainConfig,
    engine: Engine,
    handlers: AttachedHandlers,
    objects: dict,
    decision: _Decision,
) -> None:
    val, metric = decision.engine, decision.metric
    needs_val = config.early_stopping_patience is not None or config.stop_when
    if needs_val and val is None:
        raise ValueError(
            "TrainConfig.early_stopping_patience/stop_when need validation data: "
            "pass val_data to the factory, or rank by a training metric with "
            "best_metric='train/loss'"
        )
    if config.early_stopping_patience is not None:
        with recording(handlers, "early_stopping", engine, val) as entry:
            objects["early_stopping"] = entry.handler = stopping.attach_early_stopping(
                engine,
                val,
                metric,
                patience=config.early_stopping_patience,
                min_delta=config.early_stopping_min_delta,
                mode=decision.mode,
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
    parts: RunParts, objects: dict, decision: _Decision, extra_fn: Callable[[], dict]
) -> Any:
    """The checkpoint handler (``None`` without ``output_dir``), with preemption."""
    objects["rng"] = RNGState()
    config, engine = parts.config, parts.engine
    if config.output_dir is None:
        return None
    # write, fsync, rename, pointer and eviction run on a worker thread: the training
    # thread only serializes (measured: a 117 MiB checkpoint blocks it 0.69x a bare
    # torch.save, against 1.05-1.45x inline). A failed commit raises at the next save
    # or at the end.
    # issue 14: FSDP models are saved as sharded folders, by every rank, inline
    sharded = uses_fsdp(parts.learning.models)
    store = CheckpointStore(
        Path(config.output_dir) / "checkpoints", n_saved=config.n_saved, background=not sharded
    )
    journal = objects["history"].journal_path  # rank 0's; the others write no checkpoint
    if journal is not None:
        store.depends_on.append(journal)  # its fsync orders before each checkpoint's
    val = decision.engine
    checkpoints = attach_checkpoints(
        engine,
        objects,
        store,
        save_every=config.save_every,
        evaluator=val,
        best_metric=decision.metric,
        best_mode=decision.mode,
        save_best=config.save_best and val is not None,
        save_last=True,
        extra_fn=extra_fn,
        accumulation_steps=config.grad_accumulation_steps,  # save_every counts optimizer steps
        sharded=sharded,
    )
    # Under several processes every rank must stop at the same iteration: a signal
    # reaching one rank is agreed over all of them (one small all-reduce per iteration).
    agree = agree_any if idist.get_world_size() > 1 else None
    attach_preemption(
        engine,
        lambda: checkpoints.save_now("preempt", f"iter{engine.state.iteration:08d}"),
        agree=agree,
        # issue 14: under FSDP a stop mid accumulation group finishes the group first
        boundary=_group_end(config.grad_accumulation_steps) if sharded else None,
    )
    return checkpoints


def _group_end(k: int) -> Callable[[Engine], bool] | None:
    return None if k == 1 else lambda engine: ends_accumulation_group(engine, k)


def _flushed_extra(parts: RunParts, tensorboard: Any) -> dict:
    # A SIGKILL loses TensorBoard events still in the writer's queue, and a resumed run
    # purges nothing before its checkpoint: flush first, so every value the checkpoint
    # covers is on disk when the checkpoint is.
    if tensorboard is not None:
        tensorboard.flush()
    return checkpoint_extra(parts)


def _report_stop(engine: Engine, history: Any) -> None:
    reason = stopping.stop_reason(engine)
    history.meta["stop_reason"] = reason or "completed"
    history.meta["stopped_at"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
    if reason:
        logger.info(
            "Training stopped early at epoch %d, iteration %d: %s",
            engine.state.epoch,
            engine.state.iteration,
            reason,
        )
