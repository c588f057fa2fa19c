"""ignitrain's whole handler stack on an Ignite engine you built yourself.

Start from a plain Ignite script::

    trainer = create_supervised_trainer(model, optimizer, loss_fn)
    evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy(), ...})

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_results(engine):               # the script's own validation, as before
        evaluator.run(train_loader)
        evaluator.run(val_loader)

and add, before or after the script's own handlers (the order does not matter)::

    train_loader = ignitrain.resumable_loader(train_set, trainer, config)
    attached = ignitrain.attach(trainer, config, model=model, optimizer=optimizer,
                                evaluator=evaluator, train_data=train_loader,
                                val_data=val_loader)
    trainer.run(train_loader, max_epochs=config.num_epochs)

:func:`attach` gives the engine what a flavor factory attaches (checkpoints with exact
resume, History, schedules, stopping rules, TensorBoard, preemption) through the same
switchboard (:func:`ignitrain.flavors.build_trainer`), and returns what it
attached (:class:`Attached`, a read-only mapping like ``trainer.handlers``).

An evaluator the script runs on several data sets is told apart by the data of each
run (``splits``): only the ``"val"`` runs reach early stopping, ``stop_when``, a
``plateau`` schedule and the best checkpoint; each split is recorded in History under
its own name; a run on other data (a final test) reaches none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.data import attach_epoch_sync, is_dataset, make_train_loader
from ignitrain.flavors import AttachOptions, attach_validation, build_trainer, check_config
from ignitrain.handlers.attached import AttachedHandlers, recording
from ignitrain.handlers.history import History
from ignitrain.trainer import Learning, RunData, RunParts, Trainer

__all__ = ["Attached", "SplitView", "attach", "resumable_loader"]


class Attached(AttachedHandlers):
    """What :func:`attach` attached, by name, plus the holder it built.

    Attributes:
        trainer: A :class:`~ignitrain.Trainer` over the user's engine (``history``,
            ``checkpoints``, ``resume(...)``, ``save_checkpoint(...)``).
    """

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self._entries = trainer.handlers._entries  # the same entries, one mapping

    @property
    def history(self) -> History:
        """The run's History."""
        return self.trainer.history

    def resume(self, path: str = "latest") -> Attached:
        """Restore the engine, model, optimizer, schedules... from a checkpoint."""
        self.trainer.resume(path)
        return self


class SplitView(Engine):
    """The runs of a shared evaluator on one data set, as an engine of their own.

    After each run of ``evaluator`` on ``data`` (``COMPLETED``) the view takes the
    run's metrics and fires its own ``COMPLETED``: handlers attached to the view (early
    stopping, the best checkpoint, History's ``"val/*"``) see only those runs.
    Ignite's evaluator records nothing about which data a run was on except
    ``state.dataloader``, which this compares by identity.
    """

    def __init__(self, evaluator: Engine, data: Any) -> None:
        super().__init__(lambda engine, batch: None)
        self.evaluator = evaluator
        self.data = data

    def relay(self, evaluator: Engine) -> None:
        """Evaluator ``COMPLETED`` handler: fire this view's ``COMPLETED`` for its data."""
        if evaluator.state.dataloader is not self.data:
            return
        self.state.metrics = evaluator.state.metrics
        self.state.dataloader = evaluator.state.dataloader
        self.state.output = evaluator.state.output
        self.fire_event(Events.COMPLETED)


def resumable_loader(data: Any, engine: Engine, config: TrainConfig | Mapping) -> Any:
    """A training ``DataLoader`` whose order resumes exactly, tied to ``engine``'s epoch.

    The one helper for exact resume on a plain engine: a ``ResumableSampler`` (the
    order of epoch ``e`` depends on ``(seed, e)`` only; a resumed epoch skips the
    samples already seen), the loader's own ``torch.Generator`` (creating an iterator
    never consumes the global RNG) and the ``EPOCH_STARTED`` sync between them and the
    engine. Batch size, workers, ``drop_last``, ``shuffle`` and ``seed`` come from
    ``config``.

    Raises:
        TypeError: ``data`` is not a ``Dataset`` (a ready loader cannot be resumed
            exactly) or ``engine`` is not an Ignite ``Engine``.
    """
    config = check_config(config)
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    if not is_dataset(data):
        raise TypeError(
            f"Argument data={type(data).__name__} is not allowed: expected a torch Dataset "
            "(resumable_loader builds the loader; a ready DataLoader cannot skip samples)"
        )
    loader = make_train_loader(data, config)
    attach_epoch_sync(engine, loader, config.seed or 0)
    return loader


def _one(value: Any, kind: type, name: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        items = dict(value)
    else:
        items = {name: value}
    for key, item in items.items():
        if not isinstance(item, kind):
            raise TypeError(
                f"Argument {name}={item!r} is not allowed: expected a {kind.__module__}."
                f"{kind.__qualname__} (or a mapping name -> one); got {type(item).__name__} "
                f"for {key!r}"
            )
    if not items:
        raise ValueError(f"Argument {name} is empty: expected at least one")
    return items


def attach(
    engine: Engine,
    config: TrainConfig | Mapping,
    *,
    model: nn.Module | Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
    evaluator: Engine | None = None,
    val_data: Any = None,
    train_data: Any = None,
    splits: Mapping[str, Any] | None = None,
    validate: bool = False,
    default_best_metric: str = "loss",
) -> Attached:
    """Attach ignitrain's handler stack to an engine you made (e.g. ``create_supervised_trainer``).

    Attaches what ``config`` asks for, as a flavor factory does: checkpoints (periodic,
    best by ``best_metric``, last, preempt) with exact resume, History (and
    ``history.json``), LR/momentum schedules, early stopping / ``stop_when`` /
    ``time_limit`` / ``max_steps``, TensorBoard, progress bar, epoch summary, and
    SIGTERM preemption (signal handlers installed only while the engine runs).

    Args:
        engine: The training engine; its output is the loss (a number or a scalar
            tensor), or a dict with ``"loss"``.
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its fields).
        model: The model (or name -> model) checkpoints save.
        optimizer: The optimizer (or name -> optimizer) schedules drive.
        evaluator: Your evaluation engine with its metrics attached.
        val_data: The validation data the evaluator runs on: its runs decide early
            stopping and the best checkpoint.
        train_data: The loader ``engine.run`` iterates (for schedule lengths); make it
            with :func:`resumable_loader` for exact resume.
        splits: Other data sets the evaluator runs on, by History name (e.g.
            ``{"train_eval": train_loader}``); recorded, never deciding.
        validate: ``True``: ignitrain runs ``evaluator`` on ``val_data`` after every
            ``validate_every``-th epoch. ``False`` (default): your own handler does.
        default_best_metric: ``best_metric`` when the config names none.

    Returns:
        :class:`Attached`: every attached handler by name (removable, as
        ``trainer.handlers``), with ``.trainer``, ``.history`` and ``.resume()``. With
        ``config.resume`` set, the checkpoint is already restored.

    Raises:
        TypeError, ValueError: A bad argument, named with what is allowed.
    """
    config = check_config(config)
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    if evaluator is not None and not isinstance(evaluator, Engine):
        raise TypeError(
            f"Argument evaluator={evaluator!r} is not allowed: expected an Ignite Engine or None"
        )
    if evaluator is None and (val_data is not None or splits or validate):
        raise ValueError("val_data, splits and validate=True need an evaluator=<Engine>")
    if evaluator is not None and val_data is None:
        raise ValueError(
            "evaluator= needs val_data=<the data it validates on>: ignitrain decides on "
            "those runs only"
        )
    models = _one(model, nn.Module, "model")
    optimizers = _one(optimizer, torch.optim.Optimizer, "optimizer")

    views: dict[str, SplitView] = {}
    if evaluator is not None:
        views["val"] = SplitView(evaluator, val_data)
        for name, data in (splits or {}).items():
            if name == "val":
                raise ValueError("splits={'val': ...} is not allowed: pass val_data instead")
            views[name] = SplitView(evaluator, data)
    # the views' relays and ignitrain's own validation run come before the switchboard's
    # handlers; they are recorded into the mapping the switchboard fills
    first = AttachedHandlers()
    if views:
        with recording(first, "splits", evaluator):
            for view in views.values():
                evaluator.add_event_handler(Events.COMPLETED, view.relay)
    if validate:
        with recording(first, "validation", engine):
            attach_validation(engine, evaluator, val_data, every=config.validate_every)
    parts = RunParts(
        engine,
        config,
        Learning(models, optimizers),
        data=RunData(train_data, val_data),
        evaluators=views,
    )
    trainer = build_trainer(
        parts, AttachOptions(default_best_metric=default_best_metric, validate=False), first
    )
    if config.resume is not None:
        trainer.resume(config.resume)
    return Attached(trainer)
