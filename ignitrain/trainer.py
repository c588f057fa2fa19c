"""``Trainer``: what every flavor factory returns — a thin holder of Ignite engines.

All behaviour lives in ordinary Ignite handlers attached to ``trainer.engine`` and
``trainer.evaluators``; this class only keeps references and offers the verbs a
script needs: ``train()``, ``evaluate(data)``, ``predict(data)``, ``resume(...)``,
``save_checkpoint(...)``.

The data flows one way: a factory checks the config and builds the parts
(:class:`RunParts`, ``ignitrain/flavors/_parts.py``), the switchboard attaches the
handlers and returns what it made (:class:`RunOutputs`, ``ignitrain/flavors/_attach.py``),
and the ``Trainer`` is built last from both; nothing fills it in afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.data import make_eval_loader
from ignitrain.describe import describe_model
from ignitrain.handlers.attached import AttachedHandlers
from ignitrain.handlers.checkpoint import build_payload, save_atomic
from ignitrain.handlers.checkpoint.sharded_run import save_trainer_sharded, uses_fsdp
from ignitrain.handlers.history import History
from ignitrain.lr_finder import find_lr
from ignitrain.predict import SupervisedPredictor, predict
from ignitrain.resume import finish_interrupted_run, resume_from
from ignitrain.run_lock import hold_output_dir

__all__ = [
    "Trainer",
    "RunParts",
    "Learning",
    "Steps",
    "RunData",
    "RunOutputs",
    "checkpoint_extra",
    "checkpoint_name",
]

logger = logging.getLogger("ignitrain")


def _no_evaluator() -> Engine:
    raise RuntimeError(
        "trainer.evaluate() needs an evaluator factory, which ignitrain.attach does not "
        "have: run your own evaluator (evaluator.run(data)) instead"
    )


# -- the parts a Trainer is built from (small frozen groups, one concept each) -----------


@dataclass(frozen=True)
class Learning:
    """What learns: the models, their optimizers and optimizer steps, and the device.

    Attributes:
        models: Models by name (``"model"``; GAN: ``"generator"``, ``"discriminator"``).
        optimizers: Optimizers by name (``"optimizer"``; GAN: ``"generator"``,
            ``"discriminator"``); their checkpoint names are :func:`checkpoint_name`'s.
        opt_steps: The :class:`~ignitrain.steps.OptimizerStep` of each optimizer, by
            the name its state is checkpointed under (``"<name>_step"``).
        device: Where the models run (``None`` for :func:`ignitrain.attach`).
    """

    models: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    opt_steps: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device | None = None


@dataclass(frozen=True)
class Steps:
    """How a batch is processed: training, evaluation engines, prediction.

    Attributes:
        train_step: The training process function (for :meth:`Trainer.find_lr`).
        make_evaluator: Builds a fresh evaluation ``Engine`` with fresh metrics.
        predictor: ``batch -> (prediction, target)`` of :meth:`Trainer.predict`.
    """

    train_step: Callable[[Engine, Any], Any] | None = None
    make_evaluator: Callable[[], Engine] = _no_evaluator
    predictor: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class RunData:
    """The data of a run.

    Attributes:
        train_loader: The training data as the engine iterates it.
        val_data: A validation loader, a mapping ``{"val": ..., "test": ...}`` of
            them, or ``None``.
    """

    train_loader: Any
    val_data: Any = None


@dataclass(frozen=True)
class RunParts:
    """Everything a run is built from, before any handler is attached.

    Attributes:
        engine: The training ``Engine``.
        config: The checked :class:`~ignitrain.TrainConfig`.
        learning: Models, optimizers, optimizer steps, device.
        steps: Process functions and the evaluator factory.
        data: Training and validation data.
        evaluators: Evaluators made before the switchboard (``"val"``; with
            :func:`ignitrain.attach` the views of the user's evaluator).
        state: The flavor's own checkpointed objects (GAN: ``"fixed_noise"``).
        flavor: The factory's name for the task (``"classification"``, ``"regression"``,
            ``"seq2seq"``, ``"autoencoder"``, ``"gan"``, ``"generic"``), or ``None``;
            recorded in checkpoints so that a resume into another flavor refuses.
    """

    engine: Engine
    config: TrainConfig
    learning: Learning
    steps: Steps = field(default_factory=Steps)
    data: RunData = field(default_factory=lambda: RunData(None))
    evaluators: Mapping[str, Engine] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    flavor: str | None = None


@dataclass(frozen=True)
class RunOutputs:
    """What the switchboard attached and made (``ignitrain/flavors/_attach.py``).

    Attributes:
        history: The run's :class:`~ignitrain.History`.
        evaluators: Every evaluation engine by name (``"val"``, ``"test"``, ``"ema/val"``).
        val_loader: The data set whose evaluation decides (best checkpoint, stopping).
        checkpointables: Everything a checkpoint saves and a resume restores, by name.
        checkpoints: The checkpoint handler (``None`` without ``output_dir``).
        handlers: Every attached handler by name.
    """

    history: History
    evaluators: Mapping[str, Engine]
    val_loader: Any
    checkpointables: Mapping[str, Any]
    checkpoints: Any
    handlers: AttachedHandlers


def checkpoint_name(name: str, models: Mapping[str, Any]) -> str:
    """The checkpoint key of optimizer ``name``: ``name``, or ``"<name>_optimizer"``
    when a model has that name (GAN: ``"generator_optimizer"``)."""
    return f"{name}_optimizer" if name in models else name


def checkpoint_extra(parts: RunParts) -> dict[str, Any]:
    """Plain metadata stored beside the state: config, model description, progress, flavor."""
    engine = parts.engine
    return {
        "config": parts.config.to_dict(),
        "model_description": {name: describe_model(m) for name, m in parts.learning.models.items()},
        "iteration": int(engine.state.iteration),
        "epoch": int(engine.state.epoch),
        "world_size": idist.get_world_size(),
        "flavor": parts.flavor,
    }


# -- the holder ---------------------------------------------------------------------------


class Trainer:
    """The engines, models and state of one training run, built from finished parts.

    Args:
        parts: What the run is built from (engine, config, models, data, steps).
        outputs: What the switchboard attached and made (history, evaluators,
            checkpoints, handlers).

    Attributes:
        engine: The training ``Engine``; attach your own handlers to it.
        evaluators: Evaluation engines by name: ``"val"`` and each other evaluation set
            of a ``val_data`` mapping (``"test"``), and with EMA ``"ema/val"``...
        history: The run's :class:`~ignitrain.History`.
        config: The validated :class:`~ignitrain.TrainConfig`.
        models: Models by name (``"model"``; GAN: ``"generator"``, ``"discriminator"``).
        optimizers: Optimizers by name, keyed like ``models``.
        train_loader: The training data as the engine iterates it.
        val_loader: The validation data whose runs decide, or ``None``.
        checkpointables: Everything a checkpoint saves and a resume restores, by name.
        checkpoints: The checkpoint handler (``None`` without ``output_dir``).
        handlers: Read-only mapping, by name, of every handler ignitrain attached
            (see :class:`~ignitrain.handlers.attached.AttachedHandlers`).
        predictor: ``batch -> (prediction, target)`` of :meth:`predict` (the flavor's).
        flavor: The factory's name for the task (recorded in checkpoints), or ``None``.

    Raises:
        TypeError: ``parts`` is not a :class:`RunParts` or ``outputs`` not a
            :class:`RunOutputs`.
    """

    def __init__(self, parts: RunParts, outputs: RunOutputs) -> None:
        if not isinstance(parts, RunParts):
            raise TypeError(
                f"Argument parts={type(parts).__name__} is not allowed: expected "
                "ignitrain.trainer.RunParts (use a create_*_trainer factory or ignitrain.attach)"
            )
        if not isinstance(outputs, RunOutputs):
            raise TypeError(
                f"Argument outputs={type(outputs).__name__} is not allowed: expected "
                "ignitrain.trainer.RunOutputs (what the switchboard returns)"
            )
        self._parts = parts
        self.flavor = parts.flavor
        self.engine = parts.engine
        self.config = parts.config
        self.models = dict(parts.learning.models)
        self.optimizers = dict(parts.learning.optimizers)
        self.device = parts.learning.device
        self.train_loader = parts.data.train_loader
        self.train_step = parts.steps.train_step
        self.make_evaluator = parts.steps.make_evaluator
        self.predictor = parts.steps.predictor
        self.history = outputs.history
        self.evaluators = dict(outputs.evaluators)
        self.val_loader = outputs.val_loader
        self.checkpointables = dict(outputs.checkpointables)
        self.checkpoints = outputs.checkpoints
        self._handlers = outputs.handlers
        self._resumed = False

    @property
    def handlers(self) -> AttachedHandlers:
        """Every handler ignitrain attached, by name (read-only).

        Each entry lists its ``(engine, event, handler)`` registrations, removable with
        Ignite's ``engine.remove_event_handler(handler, event)``; ``entry.detach()``
        removes them all.
        """
        return self._handlers

    # -- the single-model view ---------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model (the first one for flavors with several)."""
        return self.models.get("model", next(iter(self.models.values())))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (the first one for flavors with several)."""
        return self.optimizers.get("optimizer", next(iter(self.optimizers.values())))

    # -- verbs -----------------------------------------------------------------------
    def train(self) -> History:
        """Run the training engine to ``config.num_epochs`` and return the History.

        With ``config.resume`` set, the run first continues from that checkpoint. A
        run that is already complete is not restarted. The run holds ``output_dir``
        while it trains (see :mod:`ignitrain.run_lock`).
        """
        with hold_output_dir(self):
            return self._train_holding_output_dir()

    def _train_holding_output_dir(self) -> History:
        if self.config.resume is not None and not self._resumed:
            self.resume(self.config.resume)
        state = self.engine.state
        if (
            state.max_epochs is not None
            and state.epoch >= self.config.num_epochs
            and state.iteration
        ):
            logger.warning(
                "Training already reached epoch %d of %d: nothing to do. "
                "Raise num_epochs to train on.",
                state.epoch,
                self.config.num_epochs,
            )
            finish_interrupted_run(self)
            return self.history
        try:
            self.engine.run(self.train_loader, max_epochs=self.config.num_epochs)
        finally:
            # A run that raised fired neither COMPLETED nor TERMINATE: give the
            # process its own signal handlers back.
            preemption = self._handlers.get("preemption")
            if preemption is not None and preemption.handler is not None:
                preemption.handler.restore()
        return self.history

    def evaluate(self, data: Any) -> dict[str, float]:
        """Evaluate on ``data`` (a ``Dataset`` or a loader) with the validation metrics.

        Runs a fresh evaluation engine, so validation history is untouched. Under
        several processes each rank evaluates its shard and the metrics are reduced:
        every rank returns the same numbers.
        """
        loader = make_eval_loader(data, self.config)
        evaluator = self.make_evaluator()
        state = evaluator.run(loader)
        return {k: _to_float(v) for k, v in state.metrics.items() if _to_float(v) is not None}

    def predict(
        self, data: Any, *, return_targets: bool = False, argmax: bool = False, ema: bool = False
    ) -> Any:
        """The model's outputs for ``data``, in dataset order, concatenated.

        Classification: logits (``argmax=True``: class indices); regression: values;
        autoencoders: reconstructions; seq2seq: greedy decodes; GAN: generator samples
        (``data`` is a tensor of latents or a sample count). Under several processes
        each rank predicts its shard and **every rank returns the whole**, each sample
        once (see :mod:`ignitrain.predict`). Call it on every rank.

        Args:
            data: A ``Dataset``, a loader, a tensor of inputs (GAN: latents or a count).
            return_targets: Return ``(predictions, targets)``.
            argmax: Class indices instead of logits.
            ema: Predict with the EMA weights (``TrainConfig.ema_decay``).

        Raises:
            ValueError: ``ema=True`` without EMA weights.
        """
        predictor = self.predictor or SupervisedPredictor(self.model, self.device)
        weights: Any = contextlib.nullcontext()
        if ema:
            if "ema" not in self.checkpointables:
                raise ValueError("predict(ema=True) needs TrainConfig.ema_decay (no EMA weights)")
            weights = self.checkpointables["ema"].swapped()
        with weights:
            return predict(
                predictor, data, self.config, return_targets=return_targets, argmax=argmax
            )

    def resume(self, path: str | os.PathLike = "latest") -> Trainer:
        """Restore models, optimizers, schedules, engine and history from a checkpoint.

        Args:
            path: ``"latest"`` (the newest valid checkpoint in ``output_dir``) or a file.

        ``"latest"`` with no checkpoint saved yet starts fresh (with a warning); an
        explicit path never does.

        Raises:
            FileNotFoundError: an explicit ``path`` does not exist.
            CheckpointError: the file is corrupt or does not match the models.
        """
        resume_from(self, path)
        self._resumed = True
        return self

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint of the current state to ``path`` (atomically).

        Under a process group call it on every rank at the same point: every rank's RNG
        state is gathered into the checkpoint (a collective); rank 0 writes the file.
        Under FSDP ``path`` becomes a sharded checkpoint folder, every rank writing its
        shard (``ignitrain.handlers.sharded_run``).
        """
        path = Path(path)
        if uses_fsdp(self.models):  # issue 14: a folder of every rank's shard
            return save_trainer_sharded(self.checkpointables, self.checkpoint_extra(), path)
        payload = build_payload(self.checkpointables, self.checkpoint_extra())
        if idist.get_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(payload, path)
        return path

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain metadata stored beside the state: config, model description, progress."""
        return checkpoint_extra(self._parts)

    def find_lr(self, **kwargs: Any) -> Any:
        """Run :func:`ignitrain.find_lr` on this trainer's model, optimizer and data."""
        return find_lr(self.model, self.optimizer, self.train_step, self.train_loader, **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(self.models)
        epoch = self.engine.state.epoch
        return f"Trainer(models=[{names}], evaluators={list(self.evaluators)}, epoch={epoch})"


def _to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
