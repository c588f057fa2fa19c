"""The scheduled value of an optimizer, and the drivers that compute a :class:`Schedule`'s values.

``"momentum"`` means SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``
(:func:`param_values`, :func:`set_param_values`): an Ignite ``ParamScheduler`` writes a
plain ``param_group[name]`` key and cannot reach ``betas[0]``, which is one reason the
named schedules compute their values on a shadow optimizer (:func:`shadow_optimizer`)
and copy them into the real one (see the package docstring).

Two drivers, one interface (``start``, ``advance``, ``state_dict``, ``load_state_dict``):

* :class:`IgniteDriver` -- any Ignite ``ParamScheduler`` / ``ParamGroupScheduler``
  (torch schedulers come wrapped in Ignite's ``LRScheduler``). Calling it writes the
  value of the current event into its optimizer and moves to the next event, which is
  exactly one torch ``step()``: its first call writes step 0's value, the k-th writes
  step k's, bit for bit what the torch scheduler stepped by hand gives.
* :class:`PlateauDriver` -- torch's ``ReduceLROnPlateau``, stepped with the metric value.
  Ignite's ``ReduceLROnPlateauScheduler`` needs the metric's name at construction and
  reads it from the engine it is called with; a named ``plateau`` schedule is built
  before :func:`attach_schedule` knows the metric and its direction (``mode`` is
  inferred there from the metric name), so the torch object is stepped directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers.param_scheduler import LRScheduler, ReduceLROnPlateauScheduler

__all__ = [
    "PARAM_NAMES",
    "IgniteDriver",
    "PlateauDriver",
    "param_values",
    "scheduler_param_names",
    "set_param_values",
    "shadow_optimizer",
]

#: The optimizer values a schedule can drive.
PARAM_NAMES: tuple[str, ...] = ("lr", "momentum")


def param_values(optimizer: torch.optim.Optimizer, param_name: str = "lr") -> list[float]:
    """The value of ``param_name`` in every parameter group.

    ``"momentum"`` reads SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``.

    Raises:
        ValueError: A group has no such parameter.
    """
    return [float(_group_get(group, param_name, optimizer)) for group in optimizer.param_groups]


def set_param_values(
    optimizer: torch.optim.Optimizer, param_name: str, values: list[float]
) -> None:
    """Set ``param_name`` in every parameter group (``values`` has one per group)."""
    groups = optimizer.param_groups
    if len(values) != len(groups):
        raise ValueError(f"Got {len(values)} values for {len(groups)} parameter groups")
    for group, value in zip(groups, values):
        _group_get(group, param_name, optimizer)  # raises when absent
        if param_name == "momentum" and "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            group[param_name] = value


def _group_get(group: Mapping[str, Any], param_name: str, optimizer: Any) -> Any:
    if param_name == "momentum" and "betas" in group:
        return group["betas"][0]
    if param_name not in group:
        hint = " (momentum schedules need SGD/RMSprop momentum or Adam-style betas)"
        raise ValueError(
            f"{type(optimizer).__name__} has no {param_name!r} to schedule"
            + (hint if param_name == "momentum" else "")
        )
    return group[param_name]


def scheduler_param_names(scheduler: Any) -> list[str]:
    """The optimizer keys an Ignite ``ParamScheduler`` (or ``ParamGroupScheduler``) writes."""
    names = scheduler.param_name
    return names if isinstance(names, list) else [names]


def shadow_optimizer(values: list[float], momentum: float = 0.0) -> torch.optim.Optimizer:
    """An SGD with one dummy parameter per real group, starting at ``values``.

    The named schedules move these groups' values, never the real optimizer's (a warm-up
    or ``betas[0]`` written into the real one cannot corrupt a chainable torch scheduler);
    they never receive gradients.
    """
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": v} for v in values]
    return torch.optim.SGD(groups, lr=values[0], momentum=momentum)


class _Driver:
    """What both drivers share: the scheduler, the optimizer it writes, its saved state.

    Args:
        scheduler: The scheduler object.
        target: The optimizer it writes into (read back under ``key``).
        key: ``"lr"`` or ``"momentum"`` (read from ``target``).
        owns_optimizer: ``target`` is our shadow, whose groups are saved too (chainable
            torch schedulers read them).
    """

    def __init__(self, scheduler: Any, *, target: Any, key: str, owns_optimizer: bool):
        self.scheduler = scheduler
        self.target = target
        self.key = key
        self.owns_optimizer = owns_optimizer

    def _values(self) -> list[float]:
        return param_values(self.target, self.key)

    def _scheduler_state(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (and the shadow's groups), ``weights_only``-safe."""
        state: dict[str, Any] = {"scheduler": self._scheduler_state()}
        if self.owns_optimizer:
            state["param_groups"] = self.target.state_dict()["param_groups"]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self._load_scheduler_state(state["scheduler"])
        if self.owns_optimizer:
            self.target.load_state_dict({"state": {}, "param_groups": state["param_groups"]})

    def _load_scheduler_state(self, saved: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(saved)


class IgniteDriver(_Driver):
    """An Ignite ``ParamScheduler``: calling it writes (and advances) its value.

    Args:
        scheduler: The Ignite scheduler; ``target``, ``key``, ``owns_optimizer`` as in
            :class:`_Driver`.
        limit: Never call past this event index (``OneCycleLR`` raises past its
            ``total_steps``; the schedule holds its final value instead).
    """

    def __init__(
        self,
        scheduler: Any,
        *,
        target: Any,
        key: str = "lr",
        owns_optimizer: bool = True,
        limit: int | None = None,
    ):
        super().__init__(scheduler, target=target, key=key, owns_optimizer=owns_optimizer)
        self.limit = limit
        # Ignite's plateau scheduler needs the evaluator and must not be called at start.
        self.needs_metric = isinstance(scheduler, ReduceLROnPlateauScheduler)

    def start(self) -> list[float]:
        """Write step 0's value; returns the values."""
        if isinstance(self.scheduler, LRScheduler):
            _initial_call(self.scheduler)
        elif not self.needs_metric:
            self.scheduler(None)
        return self._values()

    def advance(self, engine: Engine | None = None, metric: float | None = None) -> list[float]:
        """Write the next step's value (or hold at ``limit``); returns the values."""
        if self.limit is None or self.scheduler.event_index < self.limit:
            self.scheduler(engine if self.needs_metric else None)
        return self._values()

    def _scheduler_state(self) -> dict[str, Any]:
        # Ignite defect: LRScheduler(CosineAnnealingWarmRestarts) holds a private wrapper
        # without state_dict, so its state_dict() holds that object itself, which
        # torch.load(weights_only=True) refuses. Save the wrapped torch scheduler's state.
        state = dict(self.scheduler.state_dict())
        inner = getattr(self.scheduler, "lr_scheduler", None)
        if isinstance(self.scheduler, LRScheduler) and not hasattr(inner, "state_dict"):
            state["lr_scheduler"] = inner._lr_scheduler.state_dict()
        return state

    def _load_scheduler_state(self, saved: Mapping[str, Any]) -> None:
        # Also ignitrain 0.1.0's format (the torch scheduler's own state, see below).
        if "last_epoch" in saved and "event_index" not in saved:
            return self._load_torch_state(saved)
        inner = getattr(self.scheduler, "lr_scheduler", None)
        if isinstance(self.scheduler, LRScheduler) and not hasattr(inner, "load_state_dict"):
            self.scheduler.load_state_dict({**saved, "lr_scheduler": inner})  # keeps the wrapper
            inner._lr_scheduler.load_state_dict(saved["lr_scheduler"])
        else:
            self.scheduler.load_state_dict(saved)

    def _load_torch_state(self, saved: Mapping[str, Any]) -> None:
        # ignitrain 0.1.0 saved the torch scheduler itself, stepped `last_epoch` times
        # after its first value. A named schedule is replayed to that step (its values
        # are a function of the step); a user's torch scheduler gets its own state back.
        steps = int(saved["last_epoch"])
        if self.owns_optimizer:
            self.start()
            for _ in range(steps):
                self.advance()
            return
        inner = self.scheduler.lr_scheduler
        getattr(inner, "_lr_scheduler", inner).load_state_dict(saved)
        self.scheduler.event_index = steps + 1  # Ignite's count of calls made
        inner.last_epoch = steps + 1


def _initial_call(scheduler: LRScheduler) -> None:
    # Ignite defect with torch >= 2.2: LRScheduler's first call asks the torch scheduler
    # for epoch 0's value outside torch's initial step, where a chainable scheduler
    # (ExponentialLR, CosineAnnealingLR...) multiplies once more: LRScheduler(
    # ExponentialLR(opt, 0.5)) writes 0.05 at the first iteration, not the base 0.1
    # (test_ignite_lr_scheduler_is_one_step_ahead_at_its_first_call). torch marks that
    # step with `_is_initial`; set it for this one call, as torch's own initial step does.
    torch_scheduler = getattr(scheduler.lr_scheduler, "_lr_scheduler", scheduler.lr_scheduler)
    torch_scheduler._is_initial = True
    try:
        scheduler(None)
    finally:
        torch_scheduler._is_initial = False


class PlateauDriver(_Driver):
    """torch's ``ReduceLROnPlateau``, stepped with a metric (see the module docstring).

    Args:
        scheduler: The torch scheduler.
        owns_optimizer: Its optimizer is our shadow (its groups are saved too).
        mode_fixed: The mode was given (spec or the user's object): never inferred.
    """

    def __init__(self, scheduler: Any, *, owns_optimizer: bool, mode_fixed: bool = True):
        super().__init__(
            scheduler, target=scheduler.optimizer, key="lr", owns_optimizer=owns_optimizer
        )
        self.mode_fixed = mode_fixed

    def start(self) -> list[float]:
        """The current values (a plateau schedule starts at the optimizer's)."""
        return self._values()

    def advance(self, engine: Engine | None = None, metric: float | None = None) -> list[float]:
        """Step with ``metric``; returns the values."""
        self.scheduler.step(metric)
        return self._values()

    @property
    def mode(self) -> str:
        """``"min"`` or ``"max"``."""
        return self.scheduler.mode

    def configure_mode(self, mode: str) -> None:
        """Set the direction before the first metric.

        ``ReduceLROnPlateau`` fixes its direction at construction; it is re-initialised
        through its public ``state_dict``.

        Raises:
            ValueError: The mode was fixed explicitly to the other direction.
            RuntimeError: The scheduler has already seen a metric.
        """
        state = self.scheduler.state_dict()
        if state["mode"] == mode:
            return
        if self.mode_fixed:
            raise ValueError(
                f"Argument mode={mode!r} contradicts the plateau schedule's mode={state['mode']!r}"
            )
        if state["last_epoch"] != 0:
            raise RuntimeError("Cannot change the plateau mode after it has seen a metric")
        worse = math.inf if mode == "min" else -math.inf
        self.scheduler.load_state_dict({**state, "mode": mode, "best": worse, "mode_worse": worse})
