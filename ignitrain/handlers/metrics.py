"""Metrics Ignite lacks: a training-side epoch mean that survives a mid-epoch resume,
and accuracy and loss of a classifier in one pass.

Ignite metrics reset at every ``EPOCH_STARTED``, including the one fired when a run
resumes mid-epoch, so the epoch mean of a resumed epoch would cover only the
iterations after the resume. :class:`EpochMean` resets only at a true epoch start
and is checkpointable.

:class:`AccuracyLoss` gives what Ignite's ``Accuracy`` and ``Loss`` give together
(same values) from one update per batch: their shape and type checks, the two
output transforms and the two updates cost ~300 us per validation batch against
~90-180 us (measured at batch 64, 10 classes, 1 thread, on a loaded machine).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from ignitrain.distributed import own_rank_state, with_rank_states

__all__ = ["AccuracyLoss", "EpochMean", "attach_epoch_mean"]


class EpochMean:
    """Mean of a per-iteration value over an epoch, reduced over processes.

    Args:
        name: Written to ``engine.state.metrics[name]`` at ``EPOCH_COMPLETED``.
        value_fn: ``output -> float`` (default: ``output["loss"]`` or the output).
    """

    def __init__(self, name: str = "loss", value_fn: Callable[[Any], float] | None = None):
        self.name = name
        self.value_fn = value_fn or _loss_of
        self.total = 0.0
        self.count = 0

    def attach(self, engine: Engine) -> EpochMean:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)
        return self

    def _started(self, engine: Engine) -> None:
        length = engine.state.epoch_length
        # a resumed engine starts mid-epoch: keep what the checkpoint restored
        if not length or engine.state.iteration == (engine.state.epoch - 1) * length:
            self.total, self.count = 0.0, 0

    def _update(self, engine: Engine) -> None:
        value = self.value_fn(engine.state.output)
        if value is not None:
            self.total += float(value)
            self.count += 1

    def _completed(self, engine: Engine) -> None:
        total, count = self.total, self.count
        if idist.get_world_size() > 1:
            both = idist.all_reduce(torch.tensor([total, float(count)], dtype=torch.float64))
            total, count = both[0].item(), int(both[1].item())
        engine.state.metrics[self.name] = total / count if count else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """This rank's sums, plus every rank's under a process group (a collective)."""
        return with_rank_states({"total": self.total, "count": self.count})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take this rank's sums back; on another world size rank 0 takes all of them."""
        ranks = state.get("ranks")
        if not ranks or len(ranks) == idist.get_world_size():
            mine = own_rank_state(dict(state))
            self.total, self.count = float(mine["total"]), int(mine["count"])
            return
        # the saved ranks' sums go to rank 0 so the epoch mean still covers them all
        first = idist.get_rank() == 0
        self.total = sum(float(r["total"]) for r in ranks) if first else 0.0
        self.count = sum(int(r["count"]) for r in ranks) if first else 0


def _loss_of(output: Any) -> float | None:
    if isinstance(output, Mapping):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return output.item()
    return output


def attach_epoch_mean(
    engine: Engine, name: str = "loss", value_fn: Callable | None = None
) -> EpochMean:
    """Attach an :class:`EpochMean` of ``output["loss"]`` (or ``value_fn``) to ``engine``."""
    return EpochMean(name, value_fn).attach(engine)


class AccuracyLoss(Metric):
    """Multiclass accuracy and mean loss in one metric: ``{"accuracy", "loss"}``.

    Equal to Ignite's ``Accuracy()`` (the argmax over dim 1 against integer targets,
    counted per element) and ``Loss(loss_fn)`` (``loss_fn``'s batch mean weighted by
    the batch size) on ``(y_pred, y)`` outputs with ``y_pred`` of shape ``(N, C, ...)``
    and ``y`` of shape ``(N, ...)``. Attached under any name, it writes ``accuracy``
    and ``loss`` into ``engine.state.metrics`` (Ignite's ``"flatten"`` result mode).
    Sums stay on the device until :meth:`compute` (no sync per batch); reduced over
    processes like every Ignite metric.

    Args:
        loss_fn: ``(y_pred, y) -> mean loss`` (a 0-d tensor).
        output_transform: As for any Ignite metric.
        device: Where the sums live.
        names: The two keys written, ``(accuracy, loss)``.
    """

    def __init__(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
        names: tuple[str, str] = ("accuracy", "loss"),
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not (
            isinstance(names, tuple) and len(names) == 2 and all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"names={names!r} is not allowed: expected (accuracy name, loss name)")
        self._loss_fn = loss_fn
        self._names = names
        super().__init__(output_transform, device=device, metrics_result_mode="flatten")

    @reinit__is_reduced
    def reset(self) -> None:
        self._correct = torch.tensor(0, device=self._device)
        self._loss_sum = torch.tensor(0.0, device=self._device)
        self._elements = 0
        self._samples = 0

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        y_pred, y = output[0].detach(), output[1].detach()
        if y_pred.ndim < 2 or y.shape != y_pred.shape[:1] + y_pred.shape[2:]:
            raise ValueError(
                f"AccuracyLoss expects y_pred (N, C, ...) and y (N, ...) of class indices, got "
                f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)}: use Ignite's Accuracy "
                "and Loss for binary or multilabel outputs"
            )
        loss = self._loss_fn(y_pred, y).detach()
        if loss.ndim != 0:
            raise ValueError("loss_fn did not return the average loss (a 0-d tensor)")
        n = len(y)
        self._loss_sum += loss.to(self._device) * n
        self._samples += n
        self._correct += (y_pred.argmax(1) == y).sum().to(self._device)
        self._elements += y.numel()

    @sync_all_reduce("_correct", "_loss_sum", "_elements", "_samples")
    def compute(self) -> dict[str, float]:
        if self._samples == 0:
            raise NotComputableError("AccuracyLoss needs at least one example before compute()")
        accuracy, loss = self._names
        return {
            accuracy: self._correct.item() / self._elements,
            loss: self._loss_sum.item() / self._samples,
        }
