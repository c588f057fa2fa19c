"""EMA weights: Ignite's ``EMAHandler`` made checkpointable, and evaluation with them.

``attach_ema(engine, model, decay=0.999, warmup=...)`` attaches Ignite's
:class:`~ignite.handlers.EMAHandler` (momentum ``1 - decay``; with ``warmup`` its own
linear warm-up of the momentum from 1, i.e. of the decay from 0). What Ignite leaves
to the user, done here:

* **Updated after optimizer steps only.** With gradient accumulation the EMA moves
  once per optimizer step (the last micro-batch of each group, as
  :meth:`ignitrain.steps.OptimizerStep.group` counts them), not once per micro-batch.
* **Exact resume.** The returned :class:`EMAState` holds the EMA weights and the
  warm-up's event counter. Ignite's warm-up scheduler (``LambdaStateScheduler``) puts
  its lambda object into ``state_dict()``, which ``torch.load(weights_only=True)``
  rejects, and restarts its counter at 0 when not restored: the warm-up would begin
  again after every resume.
* **Evaluation with the EMA weights** (:meth:`EMAState.swapped`): the trained model's
  parameters and buffers are swapped for the EMA ones around an evaluator run and
  restored afterwards (also when the run raises), so every flavor's evaluator works
  unchanged and DDP's module keeps its parameters' identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch import nn

from ignitrain.errors import is_count, is_number

__all__ = ["EMAState", "attach_ema"]


class EMAState:
    """The EMA model and its warm-up counter, as one checkpointable object.

    Attributes:
        handler: Ignite's ``EMAHandler``.
        ema_model: The averaged copy of the model (eval mode).
    """

    def __init__(self, handler: EMAHandler, model: nn.Module) -> None:
        self.handler = handler
        self.ema_model = handler.ema_model
        self.model = model

    @property
    def checkpoint_modules(self) -> tuple[nn.Module, ...]:
        """The weights this object puts in a checkpoint, for the checkpoint handler's
        "unchanged since the evaluation" check."""
        return (self.ema_model,)

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights and the warm-up's event counter (tensors and ints only)."""
        scheduler = getattr(self.handler, "momentum_scheduler", None)
        return {
            "ema_model": self.ema_model.state_dict(),
            "event_index": int(scheduler.event_index) if scheduler is not None else 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the EMA weights and the warm-up position from :meth:`state_dict`."""
        self.ema_model.load_state_dict(state["ema_model"])
        scheduler = getattr(self.handler, "momentum_scheduler", None)
        if scheduler is not None:
            scheduler.event_index = int(state.get("event_index", 0))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Run the block with the EMA weights in ``model``; restore them after.

        The tensors' storages are exchanged (``.data``), not copied: nothing is
        allocated, and the model's tensors keep their version counters, so the
        checkpoint handler's "weights unchanged since the evaluation" check still holds
        after an ``ema/*`` evaluation (copying in and back bumped them: no best file).
        """
        pairs = list(_tensors(self.model, self.ema_model))
        _exchange(pairs)
        try:
            yield
        finally:
            _exchange(pairs)


def _exchange(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for t, e in pairs:
        t.data, e.data = e.data, t.data


def _tensors(model: nn.Module, ema: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield from zip(model.parameters(), ema.parameters())
    yield from zip(model.buffers(), ema.buffers())


def attach_ema(
    engine: Engine,
    model: nn.Module,
    *,
    decay: float = 0.999,
    warmup: int = 0,
    stepped: Callable[[Engine], bool] | None = None,
) -> EMAState:
    """Keep an EMA of ``model``'s weights, updated at ``ITERATION_COMPLETED``.

    Args:
        engine: The training engine.
        model: The trained module (a DDP wrapper is unwrapped by Ignite).
        decay: Weight of the old average per update, in ``(0, 1)``.
        warmup: Updates over which the decay ramps linearly up from 0 (``0``: none).
        stepped: ``engine -> bool``, true on iterations where the optimizer stepped
            (default: every iteration).

    Returns:
        The :class:`EMAState` to checkpoint (``ema_model`` and the warm-up position).
    """
    if not is_number(decay) or not 0 < decay < 1:
        raise ValueError(f"decay={decay!r} is not allowed: expected a number in (0, 1)")
    if not is_count(warmup) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} is not allowed: expected an integer >= 0")
    momentum = 1.0 - float(decay)
    kwargs: dict[str, Any] = {}
    if warmup > 0:
        kwargs = {"momentum_warmup": 1.0, "warmup_iters": warmup}
    handler = EMAHandler(model, momentum=momentum, handle_buffers="copy", **kwargs)
    event = Events.ITERATION_COMPLETED
    if stepped is not None:
        event = Events.ITERATION_COMPLETED(event_filter=lambda e, _: stepped(e))
    handler.attach(engine, name="ema_momentum", warn_if_exists=False, event=event)
    return EMAState(handler, handler.model)
