"""Training-side metrics that survive a mid-epoch resume.

Ignite metrics reset at every ``EPOCH_STARTED``, including the one fired when a run
resumes mid-epoch, so the epoch mean of a resumed epoch would cover only the
iterations after the resume. :class:`EpochMean` resets only at a true epoch start
and is checkpointable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ignitrain.distributed import own_rank_state, with_rank_states

__all__ = ["EpochMean", "attach_epoch_mean"]


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
