"""Learning-rate and momentum schedules that step at the unit they were written for.

:func:`build_schedule` turns a spec (a name, a spec dict, a factory, a torch scheduler
or an Ignite ``ParamScheduler``) into a :class:`Schedule`; :func:`attach_schedule`
attaches it to any Ignite ``Engine``::

    schedule = build_schedule("cosine", optimizer, num_epochs=20, steps_per_epoch=len(loader),
                              warmup_steps=100)
    attach_schedule(trainer, schedule)
    to_save["lr_scheduler"] = schedule         # state_dict / load_state_dict for resume

Named schedules (``unit`` is the default; a spec dict may set ``"unit"``). ``L`` is the
length of training in that unit: ``num_epochs`` for epoch schedules, the training
iterations after warm-up (``total_steps - warmup_steps``) for iteration schedules.

==================  =========  =================================================
name                unit       defaults
==================  =========  =================================================
constant            iteration  --
step                epoch      step_size=max(1, L // 3), gamma=0.1
multistep           epoch      milestones=[L // 2, 3 * L // 4], gamma=0.1
exponential         epoch      gamma=0.01 ** (1 / L): 1 % of the base at the end
cosine              iteration  T_max=L, eta_min=0
cosine_restarts     iteration  T_0=max(1, L // 3), T_mult=1, eta_min=0
linear              iteration  start_factor=1, end_factor=0, total_iters=L
polynomial          iteration  total_iters=L, power=1
onecycle            iteration  max_lr=the optimizer's value, total_steps=L,
                               pct_start=0.3, div_factor=25 (LR only)
piecewise_linear    iteration  milestones_values=[(step, value), ...] (required,
                               absolute values)
plateau             metric     mode inferred from the metric name, factor=0.1,
                               patience=10
cyclic_momentum     iteration  base_momentum=0.85, max_momentum=0.95,
                               pct_start=0.3, total_steps=L: 0.95 -> 0.85 at the
                               one-cycle LR peak -> 0.95 (momentum only)
==================  =========  =================================================

Each is the torch scheduler of the same name (``StepLR``, ``CosineAnnealingLR``,
``CosineAnnealingWarmRestarts``, ``LinearLR``, ``PolynomialLR``, ``OneCycleLR``,
``ReduceLROnPlateau``...), except ``constant`` (``ConstantLR``), ``piecewise_linear``
(Ignite's ``PiecewiseLinear``) and ``cyclic_momentum`` (``OneCycleLR``'s momentum cycle).

Parameters keep the torch/Ignite names (``step_size``, ``T_max``, ``milestones_values``).
A parameter may be a placeholder string resolved when the loaders exist:
``"{num_epochs}"``, ``"{steps_per_epoch}"``, ``"{total_steps}"``, also in arithmetic
(``"{total_steps} // 3"``; ``+ - * / // % **`` and parentheses). ``onecycle`` and
``cyclic_momentum`` hold their final value if training runs past ``total_steps``.

How a schedule steps:

* The named schedules compute their values on a private *shadow* optimizer (one
  parameter group per real group) and copy them into the real optimizer. This is how
  one torch scheduler shape drives ``lr``, SGD/RMSprop ``momentum`` and Adam-family
  ``betas[0]`` alike, and why a warm-up overwriting the real ``lr`` cannot corrupt a
  chainable torch scheduler.
* ``ITERATION_STARTED`` writes the current value into every parameter group, so the
  first iteration trains with step 0's value and a resumed run writes the restored
  value before its first update. Iteration schedules advance here, once per iteration.
* Epoch schedules advance once per epoch, never per iteration (Ignite's
  ``setup_common_training_handlers`` steps torch schedulers every iteration): at the
  first ``ITERATION_STARTED`` of each new epoch, which is equivalent to stepping at
  ``EPOCH_COMPLETED`` but also right after resuming from a checkpoint written at the
  last iteration of an epoch (Ignite does not fire that ``EPOCH_COMPLETED`` again).
* Metric schedules (``plateau``) advance after each run of the evaluator, with its
  metric, at most once per training iteration count.
* Warm-up always counts iterations: iteration ``t < warmup_steps`` (0-based) uses
  ``v0 * (f + (1 - f) * (t + 1) / warmup_steps)``, where ``v0`` is the main schedule's
  first value and ``f`` is ``warmup_start_factor`` (default 0). The main schedule
  starts after warm-up: its step 0 is used at iteration ``warmup_steps``; an epoch or
  metric schedule advances only at epoch ends / evaluations after warm-up is over.

``Schedule.state_dict()`` holds the iteration count, the current values and the
scheduler's own state, so a resumed run continues the exact value sequence.

Counting units: ``warmup_steps``, ``steps_per_epoch`` / ``{NUM_UPDATE_STEPS_PER_EPOCH}``
and ``total_steps`` count optimizer steps. Under ``grad_accumulation_steps=k`` an
iteration schedule advances once per group of ``k`` micro-batches (at its first one;
an epoch's last group may be shorter), ``{TRAIN_DATALOADER_LEN}`` stays the number of
batches. A factory is called with the optimizer only (pytorch-accelerated's
``create_scheduler_fn``: ``functools.partial(StepLR, step_size=7, gamma=0.1)``); the
older ``(optimizer, num_epochs, steps_per_epoch)`` form still works.

Ignite underneath, and what is kept custom:

* Any Ignite ``ParamScheduler`` (``LRScheduler``, ``CosineAnnealingScheduler``,
  ``PiecewiseLinear``, ``ConcatScheduler``, the result of
  ``create_lr_scheduler_with_warmup``, ``ParamGroupScheduler``,
  ``ReduceLROnPlateauScheduler``) is accepted as ``lr_scheduler=``/``momentum_scheduler=``
  and driven at the unit chosen, checkpointed with the run; ``piecewise_linear`` is
  Ignite's ``PiecewiseLinear``. A ``ParamScheduler`` attached to the engine beside an
  ignitrain schedule of the same value, and Ignite's ``FastaiLRFinder`` on the run's
  engine, are refused at ``STARTED`` (:class:`LRWriterGuard`) instead of silently
  fighting it.
* Kept custom, the driver around the torch schedulers of the named schedules, because
  Ignite cannot (a) put an *iteration* warm-up in front of an *epoch* or *metric*
  schedule -- ``create_lr_scheduler_with_warmup`` returns one scheduler for one event,
  its own docstring wires such a mix with a hand-made event filter that needs the
  epoch length and does not survive a resume at an epoch end; (b) schedule Adam-family
  ``betas[0]`` -- a ``ParamScheduler`` writes a plain ``param_group[name]`` key;
  (c) count optimizer steps under gradient accumulation -- it steps per event.
  Ignite's ``LRScheduler`` wrapper of a torch scheduler would add an off-by-one (its
  first value is set at construction and it writes, at each call, the value for the
  *next* event) without adding a capability, so the shadow optimizer's torch
  scheduler is stepped directly.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import math
import numbers
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import (
    ParamGroupScheduler,
    ParamScheduler,
    PiecewiseLinear,
    ReduceLROnPlateauScheduler,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain.config import ConfigError, suggest
from ignitrain.handlers.modes import resolve_mode
from ignitrain.handlers.stopping import optimizer_steps
from ignitrain.registry import canonical_schedule_name

__all__ = [
    "UNITS",
    "PLACEHOLDERS",
    "Placeholder",
    "attach_lr_writer_guard",
    "Schedule",
    "ScheduleHandler",
    "build_schedule",
    "attach_schedule",
    "param_values",
    "set_param_values",
    "resolve_placeholders",
]

#: The events a schedule can advance on.
UNITS: tuple[str, ...] = ("iteration", "epoch", "metric")
#: Names usable as ``"{name}"`` in schedule parameters (the upper-case ones are
#: pytorch-accelerated's ``TrainerPlaceholderValues`` names; see :class:`Placeholder`).
PLACEHOLDERS: tuple[str, ...] = (
    "num_epochs",
    "steps_per_epoch",
    "total_steps",
    "NUM_EPOCHS",
    "NUM_UPDATE_STEPS_PER_EPOCH",
    "TRAIN_DATALOADER_LEN",
    "EVAL_DATALOADER_LEN",
)


class Placeholder(str, enum.Enum):
    """pytorch-accelerated's placeholder names, resolved when the loaders exist.

    Usable as parameter values of a spec dict or of a ``functools.partial`` factory::

        partial(OneCycleLR, max_lr=0.1, epochs=Placeholder.NUM_EPOCHS,
                steps_per_epoch=Placeholder.NUM_UPDATE_STEPS_PER_EPOCH)

    ``NUM_UPDATE_STEPS_PER_EPOCH`` counts optimizer steps (``ceil(batches /
    grad_accumulation_steps)``); ``TRAIN_DATALOADER_LEN`` counts batches.
    """

    NUM_EPOCHS = "{NUM_EPOCHS}"
    NUM_UPDATE_STEPS_PER_EPOCH = "{NUM_UPDATE_STEPS_PER_EPOCH}"
    TRAIN_DATALOADER_LEN = "{TRAIN_DATALOADER_LEN}"
    EVAL_DATALOADER_LEN = "{EVAL_DATALOADER_LEN}"

    def __str__(self) -> str:
        return self.value


_PARAM_NAMES = ("lr", "momentum")
_SPEC_KEYS = ("name", "unit", "warmup_steps", "warmup_start_factor")


# -- reading and writing an optimizer's lr / momentum ------------------------------


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
        if param_name == "momentum" and "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            _group_get(group, param_name, optimizer)  # raises when absent
            group[param_name] = value


def _group_get(group: Mapping[str, Any], param_name: str, optimizer: Any) -> Any:
    if param_name == "momentum" and "betas" in group:
        return group["betas"][0]
    if param_name not in group:
        raise ValueError(
            f"{type(optimizer).__name__} has no {param_name!r} to schedule"
            + (
                " (momentum schedules need SGD/RMSprop momentum or Adam-style betas)"
                if param_name == "momentum"
                else ""
            )
        )
    return group[param_name]


# -- placeholders ------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(node: ast.AST) -> float:
    # A tiny evaluator: numbers and + - * / // % ** only, never Python's eval.
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_arithmetic(node.operand))
    raise ValueError(f"unsupported expression {ast.dump(node)}")


def resolve_placeholders(value: Any, context: Mapping[str, int], *, where: str = "value") -> Any:
    """Replace ``"{num_epochs}"``-style placeholders (and arithmetic on them) by numbers.

    Lists, tuples and dicts are resolved element by element; strings without ``{``
    and other values are returned unchanged.

    Args:
        value: A parameter value, e.g. ``"{total_steps} // 3"``.
        context: Placeholder name -> number.
        where: What is resolved, for error messages.

    Raises:
        ConfigError: Unknown placeholder or an expression that is not plain arithmetic.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_placeholders(v, context, where=where) for v in value)
    if isinstance(value, Mapping):
        return {k: resolve_placeholders(v, context, where=where) for k, v in value.items()}
    if not isinstance(value, str) or "{" not in value:
        return value
    value = value.value if isinstance(value, Placeholder) else value
    try:
        text = value.format(**context)
    except KeyError as exc:
        name = exc.args[0]
        raise ConfigError(
            f"{where}={value!r} uses unknown placeholder {{{name}}}.{suggest(name, context)} "
            f"Known placeholders: {', '.join('{' + k + '}' for k in context)}"
        ) from None
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"{where}={value!r} is not a valid placeholder string: {exc}") from None
    try:
        return _arithmetic(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise ConfigError(
            f"{where}={value!r} (= {text!r}) is not allowed: expected a number or arithmetic "
            f"(+ - * / // % **) on placeholders ({exc})"
        ) from None


# -- drivers: the schedulers that compute values -----------------------------------


class _TorchDriver:
    """A torch scheduler; values are read from its optimizer's groups under ``key``.

    ``owns_optimizer``: the optimizer is our shadow, whose groups (which chainable torch
    schedulers read) are saved too. ``limit``: never step past this ``last_epoch``.
    """

    def __init__(
        self,
        scheduler: Any,
        *,
        key: str = "lr",
        owns_optimizer: bool,
        limit: int | None = None,
        mode_fixed: bool = True,
    ):
        self.scheduler = scheduler
        self.key = key
        self.owns_optimizer = owns_optimizer
        self.limit = limit
        # A plateau mode given in the spec (or by the user's object) is never inferred.
        self.mode_fixed = mode_fixed

    def start(self) -> list[float]:
        return param_values(self.scheduler.optimizer, self.key)

    def advance(self, engine: Engine | None = None, metric: float | None = None) -> list[float]:
        if isinstance(self.scheduler, torch_sched.ReduceLROnPlateau):
            self.scheduler.step(metric)
        elif self.limit is None or self.scheduler.last_epoch < self.limit:
            self.scheduler.step()
        return self.start()

    @property
    def mode(self) -> str | None:
        if isinstance(self.scheduler, torch_sched.ReduceLROnPlateau):
            return self.scheduler.mode
        return None

    def configure_mode(self, mode: str) -> None:
        # ReduceLROnPlateau fixes its direction at construction; re-initialise it through
        # its public state_dict before it has seen a metric.
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

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scheduler": self.scheduler.state_dict()}
        if self.owns_optimizer:
            state["param_groups"] = self.scheduler.optimizer.state_dict()["param_groups"]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        if self.owns_optimizer:
            self.scheduler.optimizer.load_state_dict(
                {"state": {}, "param_groups": state["param_groups"]}
            )


class _IgniteDriver:
    """An Ignite ``ParamScheduler``: calling it writes (and advances) its value."""

    mode = None  # Ignite's plateau scheduler keeps its own direction

    def __init__(self, scheduler: Any, *, target: Any, key: str, owns_optimizer: bool):
        self.scheduler = scheduler
        self.target = target
        self.key = key
        self.owns_optimizer = owns_optimizer
        # Ignite's plateau scheduler needs the evaluator and must not be called at start.
        self.needs_metric = isinstance(scheduler, ReduceLROnPlateauScheduler)

    def start(self) -> list[float]:
        if not self.needs_metric:
            self.scheduler(None)
        return param_values(self.target, self.key)

    def advance(self, engine: Engine | None = None, metric: float | None = None) -> list[float]:
        self.scheduler(engine if self.needs_metric else None)
        return param_values(self.target, self.key)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scheduler": self.scheduler.state_dict()}
        if self.owns_optimizer:
            state["param_groups"] = self.target.state_dict()["param_groups"]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        if self.owns_optimizer:
            self.target.load_state_dict({"state": {}, "param_groups": state["param_groups"]})


# -- the schedule --------------------------------------------------------------------


class Schedule:
    """One schedule of one optimizer parameter (``lr`` or ``momentum``), with warm-up.

    It is driven by two calls, which :func:`attach_schedule` wires to engine events:
    :meth:`iteration_started` (every iteration, with the engine's epoch) and
    :meth:`metric_completed` (after each validation).

    Attributes:
        name: Schedule name (``"cosine"``) or the wrapped scheduler's class name.
        unit: ``"iteration"``, ``"epoch"`` or ``"metric"``.
        param_name: ``"lr"`` or ``"momentum"``.
        warmup_steps: Warm-up iterations in front of the schedule.
        warmup_start_factor: Warm-up starts from this fraction of the first value.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        driver: Any,
        *,
        unit: str,
        param_name: str = "lr",
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        name: str = "custom",
    ):
        self.optimizer = optimizer
        self.name = name
        self.unit = unit
        self.param_name = param_name
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self._driver = driver
        self._iterations = 0
        self._values: list[float] | None = None
        self._written: list[float] | None = None
        self._last_metric_step: int | None = None
        self._epoch: int | None = None

    def __repr__(self) -> str:
        return (
            f"Schedule(name={self.name!r}, unit={self.unit!r}, param_name={self.param_name!r}, "
            f"warmup_steps={self.warmup_steps})"
        )

    @property
    def iterations(self) -> int:
        """Iterations seen (calls of :meth:`iteration_started`)."""
        return self._iterations

    @property
    def mode(self) -> str | None:
        """Direction of a torch plateau schedule (``"min"``/``"max"``), else ``None``."""
        return getattr(self._driver, "mode", None)

    @property
    def mode_fixed(self) -> bool:
        """Whether :attr:`mode` was given explicitly (never inferred from the metric)."""
        return getattr(self._driver, "mode_fixed", True)

    def configure_mode(self, mode: str) -> None:
        """Set the direction of a ``plateau`` schedule before it sees a metric.

        Raises:
            ValueError: The mode was fixed explicitly to the other direction.
        """
        self._driver.configure_mode(mode)

    def current(self) -> list[float] | None:
        """Values last written into the optimizer (one per group), ``None`` before."""
        return None if self._written is None else list(self._written)

    def iteration_started(self, epoch: int | None = None) -> list[float]:
        """Write this iteration's values (warm-up or schedule); returns them.

        Args:
            epoch: The engine's current epoch (``engine.state.epoch``); an epoch
                schedule advances once for every epoch that ended since the last call.
        """
        t = self._iterations
        if self._values is None:
            self._values = self._driver.start()
        elif self.unit == "iteration" and t > self.warmup_steps:
            self._values = self._driver.advance()
        elif self.unit == "epoch" and epoch is not None and self._epoch is not None:
            # Advancing on the first iteration of the next epoch (rather than at
            # EPOCH_COMPLETED) also works after resuming from a checkpoint written at
            # an epoch's last iteration: Ignite does not fire that EPOCH_COMPLETED again.
            for _ in range(epoch - self._epoch if self._warmup_over() else 0):
                self._values = self._driver.advance()
        if epoch is not None:
            self._epoch = epoch
        values = self._warmup_values(t) if t < self.warmup_steps else self._values
        self._iterations = t + 1
        self._write(values)
        return values

    def metric_completed(
        self, value: float, *, engine: Engine | None = None, step: int | None = None
    ) -> None:
        """Advance a metric schedule with a validation ``value``.

        Args:
            value: The metric value.
            engine: The evaluator (Ignite's plateau scheduler reads it).
            step: Training iteration of this evaluation; a second evaluation at the same
                step (a test run after training) is ignored.
        """
        if self.unit != "metric" or (step is not None and step == self._last_metric_step):
            return
        self._last_metric_step = step
        if self._warmup_over():
            self._values = self._driver.advance(engine, float(value))
            self._write(self._values)

    def _warmup_over(self) -> bool:
        # The main schedule has trained at least one iteration with its own values.
        return self._values is not None and self._iterations > self.warmup_steps

    def _warmup_values(self, t: int) -> list[float]:
        f = self.warmup_start_factor
        fraction = f + (1.0 - f) * (t + 1) / self.warmup_steps
        return [v * fraction for v in self._values]

    def _write(self, values: list[float]) -> None:
        set_param_values(self.optimizer, self.param_name, values)
        self._written = list(values)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact value sequence (``weights_only``-safe)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "iterations": self._iterations,
            "values": self._values,
            "written": self._written,
            "last_metric_step": self._last_metric_step,
            "epoch": self._epoch,
            "driver": self._driver.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of the same schedule.

        Raises:
            ValueError: ``state`` belongs to a schedule of another name or unit.
        """
        if state.get("name") != self.name or state.get("unit") != self.unit:
            raise ValueError(
                f"Cannot load the state of schedule {state.get('name')!r} "
                f"(unit {state.get('unit')!r}) into schedule {self.name!r} (unit {self.unit!r})"
            )
        self._driver.load_state_dict(state["driver"])
        self._iterations = int(state["iterations"])
        self._values = None if state["values"] is None else [float(v) for v in state["values"]]
        self._written = None if state["written"] is None else [float(v) for v in state["written"]]
        self._last_metric_step = state["last_metric_step"]
        self._epoch = state["epoch"]
        if self._written is not None:
            # Restore the optimizer value too, for readers before the next iteration.
            set_param_values(self.optimizer, self.param_name, self._written)


# -- named schedules ---------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    length: int  # training length in the schedule's unit (after warm-up)
    base: list[float]  # the optimizer's current values, one per group


@dataclass(frozen=True)
class _Shape:
    unit: str
    defaults: Callable[[_Context], dict[str, Any]]
    make: Callable[[torch.optim.Optimizer, dict[str, Any]], Any]
    units: tuple[str, ...] = ("iteration", "epoch")
    key: str = "lr"  # what the shadow optimizer's scheduler moves
    limit: str | None = None  # parameter holding the last valid step count
    required: tuple[str, ...] = ()
    hints: tuple[tuple[str, str], ...] = ()


def _milestones(ctx: _Context) -> list[int]:
    return sorted({max(1, ctx.length // 2), max(1, 3 * ctx.length // 4)})


def _make_plateau(opt: torch.optim.Optimizer, p: dict[str, Any]) -> Any:
    return torch_sched.ReduceLROnPlateau(opt, **{**p, "mode": p["mode"] or "min"})


def _make_onecycle(opt: torch.optim.Optimizer, p: dict[str, Any]) -> Any:
    return torch_sched.OneCycleLR(opt, cycle_momentum=False, **p)


def _make_cyclic_momentum(opt: torch.optim.Optimizer, p: dict[str, Any]) -> Any:
    # OneCycleLR's own momentum cycle is exactly "inverse to a one-cycle LR".
    return torch_sched.OneCycleLR(opt, max_lr=1.0, cycle_momentum=True, **p)


def _make_piecewise(opt: torch.optim.Optimizer, p: dict[str, Any]) -> Any:
    pairs = [tuple(pair) if isinstance(pair, list) else pair for pair in p["milestones_values"]]
    return PiecewiseLinear(opt, "lr", milestones_values=pairs)


_NO_MOMENTUM_HINT = "onecycle schedules the LR only; use momentum_scheduler='cyclic_momentum'"

_SHAPES: dict[str, _Shape] = {
    "constant": _Shape(
        "iteration", lambda c: {}, lambda o, p: torch_sched.ConstantLR(o, 1.0, total_iters=0)
    ),
    "step": _Shape(
        "epoch",
        lambda c: {"step_size": max(1, c.length // 3), "gamma": 0.1},
        lambda o, p: torch_sched.StepLR(o, **p),
    ),
    "multistep": _Shape(
        "epoch",
        lambda c: {"milestones": _milestones(c), "gamma": 0.1},
        lambda o, p: torch_sched.MultiStepLR(o, **p),
    ),
    "exponential": _Shape(
        "epoch",
        lambda c: {"gamma": 0.01 ** (1.0 / max(1, c.length))},
        lambda o, p: torch_sched.ExponentialLR(o, **p),
    ),
    "cosine": _Shape(
        "iteration",
        lambda c: {"T_max": c.length, "eta_min": 0.0},
        lambda o, p: torch_sched.CosineAnnealingLR(o, **p),
    ),
    "cosine_restarts": _Shape(
        "iteration",
        lambda c: {"T_0": max(1, c.length // 3), "T_mult": 1, "eta_min": 0.0},
        lambda o, p: torch_sched.CosineAnnealingWarmRestarts(o, **p),
    ),
    "linear": _Shape(
        "iteration",
        lambda c: {"start_factor": 1.0, "end_factor": 0.0, "total_iters": c.length},
        lambda o, p: torch_sched.LinearLR(o, **p),
    ),
    "polynomial": _Shape(
        "iteration",
        lambda c: {"total_iters": c.length, "power": 1.0},
        lambda o, p: torch_sched.PolynomialLR(o, **p),
    ),
    "onecycle": _Shape(
        "iteration",
        lambda c: {
            "max_lr": list(c.base),
            "total_steps": c.length,
            "pct_start": 0.3,
            "anneal_strategy": "cos",
            "div_factor": 25.0,
            "final_div_factor": 1e4,
            "three_phase": False,
        },
        _make_onecycle,
        limit="total_steps",
        hints=(
            ("cycle_momentum", _NO_MOMENTUM_HINT),
            ("base_momentum", _NO_MOMENTUM_HINT),
            ("max_momentum", _NO_MOMENTUM_HINT),
        ),
    ),
    "piecewise_linear": _Shape(
        "iteration",
        lambda c: {"milestones_values": None},
        _make_piecewise,
        required=("milestones_values",),
    ),
    "plateau": _Shape(
        "metric",
        lambda c: {
            "mode": None,
            "factor": 0.1,
            "patience": 10,
            "threshold": 1e-4,
            "threshold_mode": "rel",
            "cooldown": 0,
            "min_lr": 0.0,
            "eps": 1e-8,
        },
        _make_plateau,
        units=("metric",),
    ),
    "cyclic_momentum": _Shape(
        "iteration",
        lambda c: {
            "base_momentum": 0.85,
            "max_momentum": 0.95,
            "total_steps": c.length,
            "pct_start": 0.3,
            "anneal_strategy": "cos",
            "three_phase": False,
        },
        _make_cyclic_momentum,
        key="momentum",
        limit="total_steps",
    ),
}


def _shadow_optimizer(values: list[float], momentum: float = 0.0) -> torch.optim.Optimizer:
    # One dummy parameter per real group: the scheduler moves these groups' values,
    # never the real optimizer's, and they never receive gradients.
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": v} for v in values]
    return torch.optim.SGD(groups, lr=values[0], momentum=momentum)


def _check_params(name: str, params: dict[str, Any], shape: _Shape, accepted: list[str], field):
    for key in params:
        if key not in accepted:
            hint = dict(shape.hints).get(key)
            extra = f" ({hint})" if hint else suggest(key, accepted)
            raise ConfigError(
                f"{field}: schedule {name!r} has no parameter {key!r}.{extra} "
                f"Accepted: {', '.join(accepted + list(_SPEC_KEYS[1:]))}"
            )
    for key in shape.required:
        if params.get(key) is None:
            raise ConfigError(
                f"{field}: schedule {name!r} needs parameter {key!r}, e.g. "
                "{'name': 'piecewise_linear', 'milestones_values': [(0, 0.0), (100, 0.1)]}"
            )


def _build_named(
    spec: Mapping[str, Any],
    optimizer,
    *,
    param_name,
    field,
    context,
    unit,
    warmup_steps,
    warmup_start_factor,
) -> Schedule:
    spec = dict(spec)
    name = canonical_schedule_name(spec.pop("name"), field=field)
    shape = _SHAPES[name]
    if name == "cyclic_momentum" and param_name != "momentum":
        raise ConfigError(
            f"{field}='cyclic_momentum' is not allowed: it schedules momentum (use it as "
            "momentum_scheduler); for the learning rate use 'onecycle'"
        )
    unit = _check_unit(spec.pop("unit", unit) or shape.unit, shape.units, field, name)
    warmup_steps = _check_int(spec.pop("warmup_steps", warmup_steps), "warmup_steps", 0)
    warmup_start_factor = _check_factor(spec.pop("warmup_start_factor", warmup_start_factor))
    params = resolve_placeholders(spec, context, where=field)

    base = param_values(optimizer, param_name)
    total = context["total_steps"]
    length = context["num_epochs"] if unit != "iteration" else max(1, total - warmup_steps)
    defaults = shape.defaults(_Context(length=length, base=base))
    accepted = list(defaults)
    _check_params(name, params, shape, accepted, field)
    params = {**defaults, **params}

    momentum = params["max_momentum"] if shape.key == "momentum" else 0.0
    shadow = _shadow_optimizer(base, momentum)
    try:
        scheduler = shape.make(shadow, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{field}: schedule {name!r} rejected parameters {params}: {exc}"
        ) from exc
    shadow.step()  # no gradients, no update: tells torch the optimizer "stepped" first
    if isinstance(scheduler, ParamScheduler):
        driver: Any = _IgniteDriver(scheduler, target=shadow, key="lr", owns_optimizer=True)
    else:
        limit = None if shape.limit is None else int(params[shape.limit]) - 1
        fixed = name != "plateau" or params["mode"] is not None
        driver = _TorchDriver(
            scheduler, key=shape.key, owns_optimizer=True, limit=limit, mode_fixed=fixed
        )
    return Schedule(
        optimizer,
        driver,
        unit=unit,
        param_name=param_name,
        warmup_steps=warmup_steps,
        warmup_start_factor=warmup_start_factor,
        name=name,
    )


# -- scheduler objects -------------------------------------------------------------

_PER_ITERATION_TORCH = (torch_sched.OneCycleLR, torch_sched.CyclicLR)


def _wrap_object(
    obj: Any, optimizer, *, param_name, field, unit, warmup_steps, warmup_start_factor
) -> Schedule:
    if isinstance(obj, torch_sched.LRScheduler):  # ReduceLROnPlateau included
        plateau = isinstance(obj, torch_sched.ReduceLROnPlateau)
        _check_bound(obj.optimizer, optimizer, field)
        if param_name != "lr":
            raise ConfigError(
                f"{field}={obj!r} is not allowed: a torch LR scheduler schedules lr, not "
                f"{param_name}; use a schedule name or an Ignite ParamScheduler"
            )
        default = (
            "metric"
            if plateau
            else "iteration"
            if isinstance(obj, _PER_ITERATION_TORCH)
            else "epoch"
        )
        allowed = ("metric",) if plateau else ("iteration", "epoch")
        driver: Any = _TorchDriver(obj, owns_optimizer=False)
    elif isinstance(obj, (ParamScheduler, ParamGroupScheduler)):
        names = obj.param_name if isinstance(obj.param_name, list) else [obj.param_name]
        if set(names) != {param_name}:
            raise ConfigError(
                f"{field}={obj!r} is not allowed: it schedules {names}, expected {param_name!r}"
            )
        if param_name == "momentum" and any("betas" in g for g in optimizer.param_groups):
            raise ConfigError(
                f"{field}={obj!r} is not allowed: Ignite schedulers set plain keys, but "
                f"{type(optimizer).__name__} keeps momentum in betas[0]; use a schedule name"
            )
        if isinstance(getattr(obj, "optimizer", None), torch.optim.Optimizer):
            _check_bound(obj.optimizer, optimizer, field)
        plateau = isinstance(obj, ReduceLROnPlateauScheduler)
        default = "metric" if plateau else "iteration"
        allowed = ("metric",) if plateau else ("iteration", "epoch")
        driver = _IgniteDriver(obj, target=optimizer, key=param_name, owns_optimizer=False)
    else:
        raise TypeError(
            f"{field}={obj!r} is not allowed: expected None, a schedule name, a spec dict, a "
            "factory (optimizer, num_epochs, steps_per_epoch) -> scheduler, a torch LRScheduler, "
            "ReduceLROnPlateau or an Ignite ParamScheduler"
        )
    name = type(obj).__name__
    return Schedule(
        optimizer,
        driver,
        unit=_check_unit(unit or default, allowed, field, name),
        param_name=param_name,
        warmup_steps=warmup_steps,
        warmup_start_factor=warmup_start_factor,
        name=name,
    )


def _check_bound(bound: Any, optimizer: Any, field: str) -> None:
    if bound is not optimizer:
        raise ConfigError(
            f"{field}: the scheduler was built for another optimizer than the one it should "
            "drive; build it on the training optimizer (or pass a factory)"
        )


# -- validation --------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"Argument {name}={value!r} is not allowed: expected an integer >= {minimum}"
        )
    return int(value)


def _check_factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(
            f"Argument warmup_start_factor={value!r} is not allowed: expected a number in [0, 1]"
        )
    return float(value)


def _check_unit(unit: Any, allowed: tuple[str, ...], field: str, name: str) -> str:
    if unit not in allowed:
        raise ConfigError(
            f"{field}: unit={unit!r} is not allowed for schedule {name!r}: expected "
            f"{' or '.join(repr(u) for u in allowed)}.{suggest(unit, allowed)}"
        )
    return unit


# -- public entry points -----------------------------------------------------------


def build_schedule(
    spec: Any,
    optimizer: torch.optim.Optimizer,
    *,
    num_epochs: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    param_name: str = "lr",
    field: str = "lr_scheduler",
    total_steps: int | None = None,
    unit: str | None = None,
    warmup_start_factor: float = 0.0,
    train_loader_len: int | None = None,
    eval_loader_len: int | None = None,
) -> Schedule | None:
    """Build the schedule described by ``spec`` for ``optimizer``.

    Args:
        spec: ``None`` (no schedule); a name (``"cosine"``, aliases like
            ``"CosineAnnealingLR"`` work); a dict ``{"name": ..., **params}`` with
            optional ``"unit"``, ``"warmup_steps"``, ``"warmup_start_factor"``; a factory
            ``optimizer -> scheduler`` (``functools.partial(StepLR, step_size=7)``, its
            arguments may hold placeholders; the older
            ``(optimizer, num_epochs, steps_per_epoch)`` form still works); a torch
            ``LRScheduler`` or ``ReduceLROnPlateau`` or an Ignite ``ParamScheduler``
            built on ``optimizer``; or a :class:`Schedule` (returned as is).
        optimizer: The optimizer whose ``param_name`` is scheduled.
        num_epochs: Epochs of training.
        steps_per_epoch: Optimizer steps per epoch (engine iterations without
            gradient accumulation).
        warmup_steps: Linear warm-up optimizer steps in front of the schedule.
        param_name: ``"lr"`` or ``"momentum"`` (SGD/RMSprop momentum or ``betas[0]``).
        field: Config field named in error messages.
        total_steps: Training iterations (default ``num_epochs * steps_per_epoch``;
            pass a smaller value when ``max_steps`` ends training earlier).
        unit: Override the unit of a scheduler object (torch schedulers default to
            ``"epoch"``, ``OneCycleLR``/``CyclicLR`` and Ignite schedulers to
            ``"iteration"``); a dict spec sets it with its ``"unit"`` key.
        warmup_start_factor: Warm-up starts at this fraction of the first value.
        train_loader_len: Batches per epoch (``{TRAIN_DATALOADER_LEN}``; default
            ``steps_per_epoch``).
        eval_loader_len: Validation batches (``{EVAL_DATALOADER_LEN}``; default 0).

    Returns:
        The :class:`Schedule`, or ``None`` for ``spec=None``.

    Raises:
        ConfigError: Unknown name, parameter, placeholder or unit (with suggestions).
        TypeError: ``spec`` or ``optimizer`` of the wrong kind.
        ValueError: Bad numbers (``num_epochs``, ``warmup_steps``...).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> build_schedule({"name": "step", "step_size": 2}, opt, num_epochs=6, steps_per_epoch=10)
        Schedule(name='step', unit='epoch', param_name='lr', warmup_steps=0)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"Argument optimizer={optimizer!r} is not allowed: expected a torch.optim.Optimizer"
        )
    num_epochs = _check_int(num_epochs, "num_epochs", 1)
    steps_per_epoch = _check_int(steps_per_epoch, "steps_per_epoch", 1)
    warmup_steps = _check_int(warmup_steps, "warmup_steps", 0)
    total = (
        num_epochs * steps_per_epoch
        if total_steps is None
        else _check_int(total_steps, "total_steps", 1)
    )
    warmup_start_factor = _check_factor(warmup_start_factor)
    if param_name not in _PARAM_NAMES:
        raise ValueError(
            f"Argument param_name={param_name!r} is not allowed: expected 'lr' or 'momentum'."
            f"{suggest(param_name, _PARAM_NAMES)}"
        )
    if unit is not None and unit not in UNITS:
        raise ValueError(
            f"Argument unit={unit!r} is not allowed: expected one of {UNITS}.{suggest(unit, UNITS)}"
        )
    if spec is None:
        return None
    if isinstance(spec, Schedule):
        return spec
    param_values(optimizer, param_name)  # fails early for an optimizer without momentum
    common = {
        "param_name": param_name,
        "field": field,
        "unit": unit,
        "warmup_steps": warmup_steps,
        "warmup_start_factor": warmup_start_factor,
    }
    context = {
        "num_epochs": num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "NUM_EPOCHS": num_epochs,
        "NUM_UPDATE_STEPS_PER_EPOCH": steps_per_epoch,
        "TRAIN_DATALOADER_LEN": steps_per_epoch
        if train_loader_len is None
        else _check_int(train_loader_len, "train_loader_len", 1),
        "EVAL_DATALOADER_LEN": 0
        if eval_loader_len is None
        else _check_int(eval_loader_len, "eval_loader_len", 0),
    }
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(
                f"{field}={dict(spec)!r} is not allowed: a spec dict needs a 'name', "
                "e.g. {'name': 'step', 'step_size': 10}"
            )
        return _build_named(spec, optimizer, context=context, **common)
    if isinstance(spec, type):
        raise TypeError(
            f"{field}={spec!r} is not allowed: pass a scheduler name, an instance or a factory "
            "(e.g. lambda opt, epochs, steps: StepLR(opt, 10)), not a class"
        )
    scheduler_types = (torch_sched.LRScheduler, ParamScheduler, ParamGroupScheduler)
    if callable(spec) and not isinstance(spec, scheduler_types):
        made = _call_factory(spec, optimizer, context, field)
        if isinstance(made, Schedule):
            return made
        return _wrap_object(made, optimizer, **common)
    return _wrap_object(spec, optimizer, **common)


def _call_factory(factory: Callable, optimizer: Any, context: Mapping[str, int], field: str):
    """``factory(optimizer)`` (pytorch-accelerated's ``create_scheduler_fn``), or the older
    ``factory(optimizer, num_epochs, steps_per_epoch)``; placeholders in a partial's
    arguments are resolved first."""
    if isinstance(factory, functools.partial):
        factory = functools.partial(
            factory.func,
            *resolve_placeholders(list(factory.args), context, where=field),
            **resolve_placeholders(dict(factory.keywords), context, where=field),
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: try one argument
        return factory(optimizer)
    for args in ((optimizer,), (optimizer, context["num_epochs"], context["steps_per_epoch"])):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return factory(*args)
    raise TypeError(
        f"{field}={factory!r} is not allowed: a scheduler factory takes the optimizer as its "
        f"one positional argument, optimizer -> scheduler (e.g. functools.partial(StepLR, "
        f"step_size=7, gamma=0.1)); got signature {signature}"
    )


class ScheduleHandler:
    """The Ignite adapter of a :class:`Schedule` (see :func:`attach_schedule`).

    ``state_dict``/``load_state_dict`` delegate to the schedule, so either object can
    go into a checkpoint; ``remove()`` detaches every event handler.
    """

    def __init__(
        self,
        engine: Engine,
        schedule: Schedule,
        evaluator: Engine | None,
        metric,
        accumulation_steps: int = 1,
    ):
        self.engine = engine
        self.schedule = schedule
        self.metric = metric
        self.accumulation_steps = accumulation_steps
        self._warned = False
        self._handles = [engine.add_event_handler(Events.ITERATION_STARTED, self._iteration)]
        if schedule.unit == "metric":
            self._handles.append(evaluator.add_event_handler(Events.COMPLETED, self._evaluated))

    def _iteration(self, engine: Engine) -> None:
        state, k = engine.state, self.accumulation_steps
        position = state.iteration - 1  # micro-batches before this one in the epoch
        if state.epoch_length:
            position %= state.epoch_length
        if position % k:
            # Not the first micro-batch of an accumulation group: the group's value was
            # written at its first micro-batch; a schedule counts optimizer steps.
            return
        done = optimizer_steps(state.iteration - 1, state.epoch_length, k)
        # Catch a resume that restored the engine but not the schedule.
        if not self._warned and done != self.schedule.iterations:
            self._warned = True
            warnings.warn(
                f"Schedule {self.schedule.name!r} has seen {self.schedule.iterations} optimizer "
                f"steps but the engine is at step {done}: restore the "
                "schedule's state_dict together with the engine's on resume",
                stacklevel=2,
            )
        self.schedule.iteration_started(state.epoch)

    def _evaluated(self, evaluator: Engine) -> None:
        metrics = evaluator.state.metrics
        if self.metric not in metrics:
            raise KeyError(
                f"Schedule {self.schedule.name!r} watches metric {self.metric!r}, which the "
                f"evaluator did not compute.{suggest(self.metric, list(metrics))} "
                f"Computed metrics: {', '.join(sorted(metrics)) or 'none'}"
            )
        self.schedule.metric_completed(
            metrics[self.metric], engine=evaluator, step=self.engine.state.iteration
        )

    def remove(self) -> None:
        """Detach the schedule from its engines."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state."""
        return self.schedule.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the schedule's state."""
        self.schedule.load_state_dict(state)


def attach_schedule(
    engine: Engine,
    schedule: Schedule,
    *,
    evaluator: Engine | None = None,
    metric: str | None = None,
    mode: str | None = None,
    accumulation_steps: int = 1,
) -> ScheduleHandler:
    """Attach ``schedule`` to ``engine`` at the events of its unit.

    * every ``ITERATION_STARTED``: write the current value (warm-up included); an
      iteration schedule advances here, so iteration 1 trains with step 0's value; an
      epoch schedule advances at the first iteration of each new epoch;
    * ``evaluator``'s ``COMPLETED`` (metric unit): advance with
      ``evaluator.state.metrics[metric]``.

    Args:
        engine: The training engine.
        schedule: From :func:`build_schedule`.
        evaluator: Validation engine; required for a metric schedule (``plateau``),
            ignored otherwise.
        metric: Name of the metric driving a metric schedule.
        mode: ``"min"``/``"max"`` for a metric schedule; ``None`` keeps the mode of the
            spec or infers it from the metric name (``"loss"`` -> min).
        accumulation_steps: Micro-batches (engine iterations) per optimizer step: an
            iteration schedule and the warm-up advance once per optimizer step.

    Returns:
        The :class:`ScheduleHandler` (holds the schedule; ``remove()`` detaches it).
    """
    accumulation_steps = _check_int(accumulation_steps, "accumulation_steps", 1)
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an ignite Engine")
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"Argument schedule={schedule!r} is not allowed: expected a Schedule "
            "from build_schedule"
        )
    if schedule.unit == "metric":
        if not isinstance(evaluator, Engine) or not isinstance(metric, str):
            raise ValueError(
                f"Schedule {schedule.name!r} steps on a validation metric: pass evaluator=<Engine> "
                f"and metric=<name> (got evaluator={evaluator!r}, metric={metric!r})"
            )
        _configure_metric_mode(schedule, metric, mode)
    return ScheduleHandler(engine, schedule, evaluator, metric, accumulation_steps)


def _configure_metric_mode(schedule: Schedule, metric: str, mode: str | None) -> None:
    if schedule.mode is None:  # Ignite's plateau scheduler keeps its own configuration
        return
    if mode is None and schedule.mode_fixed:
        return  # the spec or the user's torch scheduler chose it
    schedule.configure_mode(resolve_mode(metric, mode))


# -- other LR writers ----------------------------------------------------------------


class LRWriterGuard:
    """Refuses, when the run starts, a second writer of a value ignitrain schedules.

    Checked at ``STARTED`` (after the user attached their own handlers):

    * Ignite's ``FastaiLRFinder`` attached to the training engine: it would sweep the
      LR on the real run -- ignitrain's schedule rewrites the LR every iteration (the
      finder logs a ramp the optimizer never sees), the run's checkpoints, History and
      "latest" pointer record the sweep, and the schedule ends up ahead. Refused: use
      ``trainer.find_lr()`` / ``ignitrain lr-find``, which run it on a private engine.
    * An Ignite ``ParamScheduler`` (``LRScheduler``, ``CosineAnnealingScheduler``,
      ``ConcatScheduler``, ``ParamGroupScheduler``...) writing the same parameter of the
      same optimizer as an ignitrain schedule: the two would overwrite each other
      every iteration. Refused: pass it as ``TrainConfig(lr_scheduler=<it>)`` (or
      ``momentum_scheduler=``), which drives and checkpoints it, or drop the config's
      schedule. Without an ignitrain schedule a user's ``ParamScheduler`` just works.

    Ignite offers no public listing of an engine's handlers; the check reads
    ``engine._event_handlers`` once per run.
    """

    def __init__(self, engine: Engine, guarded: list[tuple[Any, str]]) -> None:
        self.engine = engine
        self.guarded = list(guarded)
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for event, handler in _registered(engine):
            owner = getattr(handler, "__self__", handler)
            if type(owner).__name__ == "FastaiLRFinder":
                raise RuntimeError(
                    "Ignite's FastaiLRFinder is attached to the training engine of an "
                    "ignitrain run: its LR sweep would be overwritten by the run's schedule "
                    "and written into the run's checkpoints and history. Use "
                    "trainer.find_lr() (or `ignitrain lr-find`), which runs FastaiLRFinder on "
                    "a private engine and restores everything"
                )
            for optimizer, param in self.guarded:
                if _writes(owner, optimizer, param):
                    option = "lr_scheduler" if param == "lr" else "momentum_scheduler"
                    raise RuntimeError(
                        f"{type(owner).__name__} attached to the training engine ({event}) "
                        f"writes {param!r} of the optimizer that ignitrain's {option} already "
                        f"schedules: they would overwrite each other every iteration. Pass "
                        f"it as TrainConfig({option}=<the scheduler>) instead, or set "
                        f"{option}=None"
                    )


def _registered(engine: Engine):
    for event, entries in engine._event_handlers.items():
        for handler, _, _ in entries:
            parent = getattr(handler, "_parent", None)  # Ignite's filtered-event wrapper
            yield event, (parent() if parent is not None else handler)


def _writes(scheduler: Any, optimizer: Any, param: str) -> bool:
    if isinstance(scheduler, ParamGroupScheduler):
        return any(_writes(s, optimizer, param) for s in scheduler.schedulers)
    if not isinstance(scheduler, ParamScheduler):
        return False
    names = (
        scheduler.param_name if isinstance(scheduler.param_name, list) else [scheduler.param_name]
    )
    return getattr(scheduler, "optimizer", None) is optimizer and param in names


def attach_lr_writer_guard(
    engine: Engine, guarded: list[tuple[Any, str]], *, checkpoints: bool = True
) -> LRWriterGuard | None:
    """Attach :class:`LRWriterGuard` for ``(optimizer, "lr"|"momentum")`` pairs.

    Returns ``None`` (nothing to guard) without schedules and without checkpoints.
    """
    if not guarded and not checkpoints:
        return None
    return LRWriterGuard(engine, guarded)
