"""The optimisation step shared by every flavor: AMP, accumulation, clipping, NaN guard.

A flavor's update function computes its loss under
:meth:`OptimizerStep.forward_context` (autocast, DDP ``no_sync``) and hands it to
:meth:`OptimizerStep.backward`; everything about *how* the gradient becomes an update
lives here, once::

    train_mode(model)
    opt_step.zero_grad(engine)           # first micro-batch: before the forward
    with opt_step.forward_context(engine):
        loss = loss_fn(model(x), y)
    value = loss.item()                  # the float the step returns anyway
    opt_step.backward(engine, loss, value=value)  # guard, scale, backward, clip + step

Accumulation groups restart at every epoch: with ``k`` micro-batches per step and an
epoch of ``L`` iterations, the last group of the epoch has ``L mod k`` micro-batches and
each of its losses is divided by that true size, so every optimizer step sees the mean
gradient of the samples in its group. Under DDP the gradient all-reduce is skipped
(``no_sync``) for all but the group's last micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from ignitrain.amp import resolve_amp
from ignitrain.distributed import own_rank_state, with_rank_states
from ignitrain.fsdp import is_fsdp, set_gradient_sync  # issue 14

__all__ = [
    "StepOptions",
    "OptimizerStep",
    "ends_accumulation_group",
    "resolve_amp",
    "supervised_update",
    "supervised_evaluate",
    "to_device",
    "train_mode",
    "NON_FINITE_LOSS",
]

#: ``engine.state.stop_reason`` when a non-finite loss stopped training.
NON_FINITE_LOSS = "non_finite_loss"


def train_mode(*models: nn.Module) -> None:
    """Put each model in training mode unless it already is.

    Validation in between leaves a model in eval mode, so every update calls this. A
    model already training is left alone: ``.train()`` walks every submodule, a cost
    per step that a hand-written loop pays once per epoch.
    """
    for model in models:
        if not model.training:
            model.train()


@dataclass(frozen=True)
class StepOptions:
    """How gradients become updates (built from ``TrainConfig`` by the flavors)."""

    accumulation_steps: int = 1
    max_grad_norm: float | None = None
    grad_clip_value: float | None = None
    amp: str | None = None  # None, "bf16" or "fp16"
    stop_on_nan: bool = True

    @classmethod
    def from_config(cls, config: Any, device: torch.device) -> StepOptions:
        return cls(
            accumulation_steps=config.grad_accumulation_steps,
            max_grad_norm=config.max_grad_norm,
            grad_clip_value=config.grad_clip_value,
            amp=resolve_amp(config.amp, device),
            stop_on_nan=config.stop_on_nan,
        )


class OptimizerStep:
    """Backward and (every ``k`` micro-batches) step of one optimizer.

    Args:
        optimizer: The optimizer to step.
        models: The modules whose gradients it steps (for ``no_sync`` and clipping).
        options: Accumulation, clipping, AMP and NaN options.
        device: Where the model lives (selects the autocast device type).

    The object is checkpointable: ``state_dict`` holds the GradScaler state and, when
    saved in the middle of an accumulation group, the gradients accumulated so far.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        models: nn.Module | Sequence[nn.Module],
        options: StepOptions,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.models = [models] if isinstance(models, nn.Module) else list(models)
        self.options = options
        self.device = torch.device(device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[options.amp]
        use_scaler = options.amp == "fp16"
        self.scaler = (
            torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        )
        self._pending = False  # gradients accumulated but not yet stepped
        self._zeroed_at: int | None = None  # iteration whose group zero_grad() opened
        # idist.get_world_size() outside a process group builds a new _SerialModel on
        # every call (ignite.distributed.utils.sync(temporary=True)): ~13 us per step
        # measured in the training loop (issue 16). Read once, at the first backward,
        # when the run's process group exists.
        self._world_size: int | None = None
        # The common step (issue 16): one micro-batch per update, no GradScaler, no
        # clipping. backward() then goes straight to torch: measured inside the
        # training loop at MLP width 512 (100 interleaved rounds), ignitrain's step cost
        # 0.85% more than a hand-written one (~21 us), Python work that runs cache-cold
        # between the torch kernels, so every call it saves counts.
        self._plain = (
            options.accumulation_steps == 1
            and self.scaler is None
            and options.max_grad_norm is None
            and options.grad_clip_value is None
        )
        #: Whether the forward needs no context at all (no autocast, no ``no_sync``).
        self.bare_forward = self.dtype is None and options.accumulation_steps == 1

    # -- autocast -------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the forward pass (a no-op without AMP)."""
        if self.dtype is None:
            return _NO_CONTEXT
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward_context(self, engine: Engine) -> contextlib.AbstractContextManager:
        """Context for a micro-batch's forward pass: autocast, and under DDP ``no_sync``
        on all but the last micro-batch of an accumulation group.

        DDP decides in the forward whether the following backward all-reduces, so the
        forward (not only the backward) must run inside ``no_sync``.
        """
        if self.options.accumulation_steps == 1:
            return self.autocast()
        stack = contextlib.ExitStack()
        stack.enter_context(self._no_sync(self.group(engine)[2]))
        stack.enter_context(self.autocast())
        return stack

    # -- accumulation bookkeeping -----------------------------------------------------
    def group(self, engine: Engine) -> tuple[int, bool, bool]:
        """``(group size, first micro-batch?, last micro-batch?)`` for this iteration."""
        return _group(engine, self.options.accumulation_steps)

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        # issue 14: FSDP2 decides in the backward, so this is a setting, not a context
        set_gradient_sync(self.models, last)
        if last:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for model in self.models:
            if isinstance(model, nn.parallel.DistributedDataParallel):
                stack.enter_context(model.no_sync())
        return stack

    # -- the step ---------------------------------------------------------------------
    def zero_grad(self, engine: Engine) -> None:
        """At a group's first micro-batch, drop the gradients before the forward pass.

        Zeroing in :meth:`backward` (after the forward) keeps the previous step's
        gradients alive through the forward: measured at MLP width 2048, +73 MiB over
        the pre-run level against +38 MiB for a hand-written loop that zeroes first.
        Call it only when nothing between it and :meth:`backward` accumulates into
        these parameters' gradients (a GAN's discriminator backward reaches the
        generator: that flavor leaves the zeroing to :meth:`backward`).
        """
        if self._plain or self.group(engine)[1]:
            self.optimizer.zero_grad(set_to_none=True)
            self._zeroed_at = engine.state.iteration

    def backward(self, engine: Engine, loss: torch.Tensor, *, value: float | None = None) -> bool:
        """Scale, backward and, at the end of a group, clip and step.

        Args:
            engine: The training engine (its iteration places the micro-batch).
            loss: The micro-batch's loss.
            value: ``loss.item()`` when the caller has it already: the NaN guard then
                reads it instead of a second device sync (``isfinite`` + ``bool``:
                ~19 us per step on CPU).

        Returns:
            ``True`` when the optimizer stepped. ``False`` while accumulating, or when
            the loss is not finite: then no update is applied, the gradients are
            dropped and the engine is terminated with ``stop_reason`` set.
        """
        if self._plain and self._world_size == 1 and value is not None and loss.numel() == 1:
            return self._plain_backward(engine, loss, value)
        size, first, last = self.group(engine)
        if first and self._zeroed_at != engine.state.iteration:
            self.optimizer.zero_grad(set_to_none=True)
        self._zeroed_at = None
        if self._world_size is None:
            self._world_size = idist.get_world_size()
        if self.options.stop_on_nan and not _all_finite(loss, value, self._world_size):
            self.optimizer.zero_grad(set_to_none=True)
            self._pending = False
            _stop_non_finite(engine, loss)
            return False
        scaled = loss / size if size > 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()  # DDP's sync was decided in the forward (forward_context)
        self._pending = not last
        if not last:
            return False
        self._apply()
        return True

    def _plain_backward(self, engine: Engine, loss: torch.Tensor, value: float) -> bool:
        # backward() for the common step in one process, what its general path does
        # there with fewer calls: every micro-batch is a whole group
        if self._zeroed_at != engine.state.iteration:
            self.optimizer.zero_grad(set_to_none=True)
        self._zeroed_at = None
        self._pending = False
        if self.options.stop_on_nan and not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            _stop_non_finite(engine, loss)
            return False
        loss.backward()
        self.optimizer.step()
        return True

    def _apply(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self._clip()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _clip(self) -> None:
        if self.options.max_grad_norm is None and self.options.grad_clip_value is None:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.options.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.options.max_grad_norm)
        else:
            nn.utils.clip_grad_value_(params, self.options.grad_clip_value)

    # -- checkpointing ----------------------------------------------------------------
    def _params(self) -> Iterator[torch.Tensor]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def state_dict(self) -> dict[str, Any]:
        """GradScaler state and any gradients accumulated mid-group.

        Under DDP the gradients of a group's first micro-batches are not synced yet
        (``no_sync``), so every rank's are kept (a collective, see
        :func:`~ignitrain.distributed.with_rank_states`).
        """
        state: dict[str, Any] = {"pending": self._pending}
        if self._pending and any(is_fsdp(m) for m in self.models):  # issue 14
            # FSDP2 keeps them unsharded inside the module until the group's last
            # backward (p.grad is None): the trainer's periodic and preemption saves
            # fall at group ends for this reason; a save by hand (or a "last" one
            # after a stop) in mid-group cannot be exact
            warnings.warn(
                "checkpoint in the middle of an accumulation group under FSDP: the group's "
                "gradients so far live unsharded inside FSDP and are not saved; a resume "
                "continues the group without them (save where iteration ends a group of "
                "grad_accumulation_steps, as periodic and preemption checkpoints do)",
                UserWarning,
                stacklevel=2,
            )
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self._pending:
            state["grads"] = [
                p.grad.detach().to("cpu", copy=True) if p.grad is not None else torch.empty(0)
                for p in self._params()
            ]
        return with_rank_states(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = own_rank_state(state)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self._pending = bool(state.get("pending", False))
        if self._pending:
            for p, g in zip(self._params(), state["grads"], strict=True):
                p.grad = g.to(p.device) if g.numel() or p.numel() == 0 else None


def _group(engine: Engine, k: int) -> tuple[int, bool, bool]:
    length = engine.state.epoch_length
    if k == 1:
        return 1, True, True
    if length:
        pos = (engine.state.iteration - 1) % length
        start = pos - pos % k
        size = min(k, length - start)
    else:  # unknown epoch length: group by global iteration
        pos = engine.state.iteration - 1
        start, size = pos - pos % k, k
    return size, pos == start, pos == start + size - 1


def ends_accumulation_group(engine: Engine, accumulation_steps: int) -> bool:
    """Whether the engine's current iteration is the last micro-batch of its group.

    The groups of :class:`OptimizerStep` (restarting at every epoch). Under FSDP a
    trainer checkpoint is taken only where this is true (issue 14): see
    :meth:`OptimizerStep.state_dict`.
    """
    return _group(engine, accumulation_steps)[2]


def _all_finite(loss: torch.Tensor, value: float | None, world_size: int) -> bool:
    if value is not None and loss.numel() == 1:
        finite: Any = math.isfinite(value)
    else:
        finite = torch.isfinite(loss.detach()).all()
    if world_size > 1:
        # every rank must skip the backward together, or DDP's all-reduce hangs
        flag = idist.all_reduce(float(finite), op="MIN")
        return bool(flag > 0)
    return bool(finite)


def _stop_non_finite(engine: Engine, loss: torch.Tensor) -> None:
    engine.state.stop_reason = NON_FINITE_LOSS
    engine.logger.warning(
        "Stopping at iteration %d: the loss is %s; the update was not applied.",
        engine.state.iteration,
        loss.detach().float().mean().item(),
    )
    engine.terminate()


# -- supervised (x, y) steps, used by classification and regression -------------------


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors in nested tuples/lists/dicts to ``device`` (non-blocking)."""
    if isinstance(batch, torch.Tensor):
        if batch.device != device:  # .to() on the same device still costs ~2 us
            batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, channels_last) for v in batch]
        # nothing moved (CPU training): the batch itself, not a rebuilt one (issue 16)
        if all(new is old for new, old in zip(moved, batch)):
            return batch
        return type(batch)(moved)
    return batch


_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object, not one per step


def _split(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        length = f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else ""
        raise ValueError(
            "supervised flavors expect batches of (input, target); got "
            f"{type(batch).__name__}{length}"
        )
    return batch[0], batch[1]


def supervised_update(
    model: nn.Module,
    opt_step: OptimizerStep,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    channels_last: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function of ``model(x) -> y_pred`` flavors.

    Returns ``{"loss": float}``: the true (unscaled) loss of the micro-batch.
    """

    bare_forward = opt_step.bare_forward

    def update(engine: Engine, batch: Any) -> dict[str, float]:
        if not model.training:  # train_mode(model), inline: one call less per step
            model.train()
        x, y = _split(to_device(batch, device, channels_last))
        opt_step.zero_grad(engine)
        if bare_forward:
            loss = loss_fn(model(x), y)
        else:
            with opt_step.forward_context(engine):
                loss = loss_fn(model(x), y)
        value = loss.item()
        opt_step.backward(engine, loss, value=value)
        return {"loss": value}

    return update


def supervised_evaluate(
    model: nn.Module,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    *,
    channels_last: bool = False,
) -> Callable[[Engine, Any], tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation process function: ``(y_pred as float32, y)`` for Ignite metrics."""

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if model.training:  # .eval() walks every submodule: once, not every batch
            model.eval()
        x, y = _split(to_device(batch, device, channels_last))
        with autocast():
            y_pred = model(x)
        return y_pred.float(), y

    return evaluate
