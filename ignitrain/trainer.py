"""``Trainer``: what every flavor factory returns — a thin holder of Ignite engines.

All behaviour lives in ordinary Ignite handlers attached to ``trainer.engine`` and
``trainer.evaluators``; this class only keeps references and offers the four verbs a
script needs: ``train()``, ``evaluate(data)``, ``resume(...)``, ``save_checkpoint(...)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.data import make_eval_loader
from ignitrain.handlers.attached import AttachedHandlers
from ignitrain.handlers.history import History

__all__ = ["Trainer"]

logger = logging.getLogger("ignitrain")


class Trainer:
    """The engines, models and state of one training run.

    Attributes:
        engine: The training ``Engine``; attach your own handlers to it.
        evaluators: Evaluation engines by name: ``"val"`` and each other evaluation set
            of a ``val_data`` mapping (``"test"``), and with EMA ``"ema/val"``...
        history: The run's :class:`~ignitrain.History`.
        config: The validated :class:`~ignitrain.TrainConfig`.
        models: Models by name (``"model"``; GAN: ``"generator"``, ``"discriminator"``).
        optimizers: Optimizers by name, keyed like ``models``.
        train_loader: The training data as the engine iterates it.
        val_loader: The validation data, or ``None``.
        checkpointables: Everything a checkpoint saves and a resume restores, by name.
        checkpoints: The checkpoint handler (``None`` without ``output_dir``).
        handlers: Read-only mapping, by name, of every handler ignitrain attached
            (see :class:`~ignitrain.handlers.attached.AttachedHandlers`).
        predictor: ``batch -> (prediction, target)`` of :meth:`predict` (the flavor's).
        flavor: The factory's name for the task (``"classification"``, ``"regression"``,
            ``"seq2seq"``, ``"autoencoder"``, ``"gan"``, ``"generic"``), or ``None``;
            recorded in checkpoints so that a resume into another flavor refuses.
    """

    flavor: str | None = None  # set by the flavor factory

    def __init__(
        self,
        *,
        engine: Engine,
        config: TrainConfig,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        history: History,
        make_evaluator: Callable[[], Engine],
        train_loader: Any,
        val_loader: Any = None,
        evaluators: Mapping[str, Engine] | None = None,
        train_step: Callable[[Engine, Any], Any] | None = None,
        device: torch.device | None = None,
        predictor: Callable[[Any], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.models = dict(models)
        self.optimizers = dict(optimizers)
        self.history = history
        self.evaluators = dict(evaluators or {})
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.train_step = train_step
        self.device = device
        self.make_evaluator = make_evaluator
        self.predictor = predictor
        self.checkpointables: dict[str, Any] = {}
        self.checkpoints: Any = None
        self._handlers = AttachedHandlers()  # filled by the factory's attach_handlers
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
        from ignitrain.run_lock import hold_output_dir

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
            from ignitrain.resume import finish_interrupted_run

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
        """
        import contextlib

        from ignitrain.predict import SupervisedPredictor, predict

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
        from ignitrain.resume import resume_from

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
        from ignitrain.handlers.checkpoint import build_payload, save_atomic
        from ignitrain.handlers.sharded_run import save_trainer_sharded, uses_fsdp

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
        from ignitrain.describe import describe_model

        return {
            "config": self.config.to_dict(),
            "model_description": {name: describe_model(m) for name, m in self.models.items()},
            "iteration": int(self.engine.state.iteration),
            "epoch": int(self.engine.state.epoch),
            "world_size": idist.get_world_size(),
            "flavor": self.flavor,
        }

    def find_lr(self, **kwargs: Any) -> Any:
        """Run :func:`ignitrain.find_lr` on this trainer's model, optimizer and data."""
        from ignitrain.lr_finder import find_lr

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
