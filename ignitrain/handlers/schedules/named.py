"""The named schedules: one table, :data:`SHAPES`, the one source of their names.

Each entry says the schedule's default unit, its default parameters for a training of
length ``L`` and the Ignite scheduler that computes it on a shadow optimizer (one
parameter group per real group, :func:`~.drivers.shadow_optimizer`):

* Ignite's own schedulers: ``cosine`` and ``cosine_restarts`` are
  ``CosineAnnealingScheduler`` (one per group, in a ``ParamGroupScheduler``; restarts via
  its ``cycle_mult``), ``linear`` and ``piecewise_linear`` are ``PiecewiseLinear``.
* torch schedulers Ignite has no own version of, wrapped in Ignite's ``LRScheduler``:
  ``constant`` (``ConstantLR``), ``step``, ``multistep``, ``exponential``,
  ``polynomial``, ``onecycle`` and ``cyclic_momentum`` (``OneCycleLR``'s momentum cycle).
* ``plateau`` is torch's ``ReduceLROnPlateau`` stepped directly (see :mod:`.drivers`).

Past its ``T_max`` a ``cosine`` restarts from its start value (Ignite's cycle), where
torch's ``CosineAnnealingLR`` would climb back along the cosine; with the default
``T_max`` (the training length) neither happens. Values equal torch's to the last bit or
two (Ignite evaluates the closed form, torch a recursion).

:data:`SCHEDULE_NAMES` (re-exported by :mod:`ignitrain.registry`) is ``tuple(SHAPES)``;
:func:`~.build.build_schedule` builds a named schedule from its entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from ignite.handlers.param_scheduler import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamGroupScheduler,
    PiecewiseLinear,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain.errors import is_count
from ignitrain.registry import lookup_name, normalize

__all__ = [
    "SCHEDULE_ALIASES",
    "SCHEDULE_NAMES",
    "SHAPES",
    "canonical_schedule_name",
    "check_schedule_name",
]


@dataclass(frozen=True)
class _Shape:
    unit: str
    # (training length L in the schedule's unit after warm-up, base values) -> defaults
    defaults: Callable[[int, list[float]], dict[str, Any]]
    make: Callable[[torch.optim.Optimizer, dict[str, Any]], Any]
    units: tuple[str, ...] = ("iteration", "epoch")
    key: str = "lr"  # what the shadow optimizer's scheduler moves
    limit: str | None = None  # parameter holding the number of valid steps
    required: tuple[str, ...] = ()
    hints: Mapping[str, str] = field(default_factory=dict)  # parameter -> why refused
    # (shadow at the current values, params, base, remaining steps) -> Ignite scheduler
    replan: Callable[..., Any] | None = None


def _per_group(opt: torch.optim.Optimizer, make: Callable[[int, float], Any]) -> Any:
    # One Ignite scheduler per parameter group: a ParamScheduler writes one value into
    # every group it drives, and each group follows its own base value.
    schedulers = [make(i, group["lr"]) for i, group in enumerate(opt.param_groups)]
    return ParamGroupScheduler(schedulers, names=[f"group{i}" for i in range(len(schedulers))])


def _cosine(opt, p: dict[str, Any], cycle: int, mult: float = 1.0) -> Any:
    # torch's CosineAnnealingLR(T_max) = Ignite's cosine from the group's value to
    # eta_min over T_max events (Ignite needs a cycle of at least 2 events).
    def one(i: int, lr: float) -> Any:
        cycle_size = max(2, cycle)
        return CosineAnnealingScheduler(
            opt, "lr", lr, p["eta_min"], cycle_size, cycle_mult=mult, param_group_index=i
        )

    return _per_group(opt, one)


def _make_restarts(opt, p):
    if not is_count(p["T_mult"]) or p["T_mult"] < 1 or not is_count(p["T_0"]) or p["T_0"] < 2:
        raise ValueError(f"expected integers T_0 >= 2 and T_mult >= 1, got {p}")
    return _cosine(opt, p, p["T_0"], float(p["T_mult"]))


def _linear(opt, ends: list[tuple[float, float]], steps: int) -> Any:
    def one(i: int, _: float) -> Any:
        pairs = [(0, ends[i][0]), (steps, ends[i][1])]
        return PiecewiseLinear(opt, "lr", milestones_values=pairs, param_group_index=i)

    return _per_group(opt, one)


def _make_linear(opt, p):
    # torch's LinearLR = Ignite's PiecewiseLinear from base*start_factor to
    # base*end_factor over total_iters, then held.
    if not is_count(p["total_iters"]) or p["total_iters"] < 1:
        raise ValueError(f"expected an integer total_iters >= 1, got {p['total_iters']!r}")
    lrs = [group["lr"] for group in opt.param_groups]
    return _linear(
        opt, [(b * p["start_factor"], b * p["end_factor"]) for b in lrs], p["total_iters"]
    )


def _replan_linear(opt, p, base, remaining):
    ends = [(group["lr"], b * p["end_factor"]) for group, b in zip(opt.param_groups, base)]
    return _linear(opt, ends, remaining)


def _torch(cls: type, **fixed: Any) -> Callable[[torch.optim.Optimizer, dict[str, Any]], Any]:
    return lambda opt, p: LRScheduler(cls(opt, **{**p, **fixed}))


def _make_piecewise(opt, p):
    pairs = [tuple(pair) if isinstance(pair, list) else pair for pair in p["milestones_values"]]
    return PiecewiseLinear(opt, "lr", milestones_values=pairs)


def _make_plateau(opt, p):
    return torch_sched.ReduceLROnPlateau(opt, **{**p, "mode": p["mode"] or "min"})


def _milestones(n: int) -> list[int]:
    return sorted({max(1, n // 2), max(1, 3 * n // 4)})


_NO_MOMENTUM_HINT = "onecycle schedules the LR only; use momentum_scheduler='cyclic_momentum'"
_ONECYCLE_LR = {"pct_start": 0.3, "anneal_strategy": "cos", "div_factor": 25.0}
_ONECYCLE_LR.update(final_div_factor=1e4, three_phase=False)
_ONECYCLE_MOMENTUM = {"pct_start": 0.3, "anneal_strategy": "cos", "three_phase": False}
_PLATEAU = {"mode": None, "factor": 0.1, "patience": 10, "threshold": 1e-4}
_PLATEAU.update(threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8)

#: name -> shape. The one list of named schedules (registry.SCHEDULE_NAMES reads it).
SHAPES: dict[str, _Shape] = {
    "constant": _Shape(
        "iteration", lambda n, b: {}, _torch(torch_sched.ConstantLR, factor=1.0, total_iters=0)
    ),
    "step": _Shape(
        "epoch",
        lambda n, b: {"step_size": max(1, n // 3), "gamma": 0.1},
        _torch(torch_sched.StepLR),
    ),
    "multistep": _Shape(
        "epoch",
        lambda n, b: {"milestones": _milestones(n), "gamma": 0.1},
        _torch(torch_sched.MultiStepLR),
    ),
    "exponential": _Shape(
        "epoch",
        lambda n, b: {"gamma": 0.01 ** (1.0 / max(1, n))},
        _torch(torch_sched.ExponentialLR),
    ),
    "cosine": _Shape(
        "iteration",
        lambda n, b: {"T_max": n, "eta_min": 0.0},
        lambda opt, p: _cosine(opt, p, int(p["T_max"])),
        replan=lambda opt, p, base, remaining: _cosine(opt, p, remaining),
    ),
    "cosine_restarts": _Shape(
        "iteration",
        lambda n, b: {"T_0": max(2, n // 3), "T_mult": 1, "eta_min": 0.0},
        _make_restarts,
    ),
    "linear": _Shape(
        "iteration",
        lambda n, b: {"start_factor": 1.0, "end_factor": 0.0, "total_iters": n},
        _make_linear,
        replan=_replan_linear,
    ),
    "polynomial": _Shape(
        "iteration", lambda n, b: {"total_iters": n, "power": 1.0}, _torch(torch_sched.PolynomialLR)
    ),
    "onecycle": _Shape(
        "iteration",
        lambda n, b: {"max_lr": list(b), "total_steps": n, **_ONECYCLE_LR},
        _torch(torch_sched.OneCycleLR, cycle_momentum=False),
        limit="total_steps",
        hints=dict.fromkeys(("cycle_momentum", "base_momentum", "max_momentum"), _NO_MOMENTUM_HINT),
    ),
    "piecewise_linear": _Shape(
        "iteration",
        lambda n, b: {"milestones_values": None},
        _make_piecewise,
        required=("milestones_values",),
    ),
    "plateau": _Shape("metric", lambda n, b: dict(_PLATEAU), _make_plateau, units=("metric",)),
    "cyclic_momentum": _Shape(
        "iteration",
        lambda n, b: {
            "base_momentum": 0.85,
            "max_momentum": 0.95,
            "total_steps": n,
            **_ONECYCLE_MOMENTUM,
        },
        # OneCycleLR's own momentum cycle is exactly "inverse to a one-cycle LR".
        _torch(torch_sched.OneCycleLR, max_lr=1.0, cycle_momentum=True),
        key="momentum",
        limit="total_steps",
    ),
}

#: Canonical schedule names, in table order.
SCHEDULE_NAMES: tuple[str, ...] = tuple(SHAPES)

#: Other spellings (torch class names, common abbreviations) -> canonical name.
SCHEDULE_ALIASES: dict[str, str] = {
    "steplr": "step",
    "multisteplr": "multistep",
    "exp": "exponential",
    "exponentiallr": "exponential",
    "cosineannealing": "cosine",
    "cosineannealinglr": "cosine",
    "cosinewarmrestarts": "cosine_restarts",
    "cosineannealingwarmrestarts": "cosine_restarts",
    "sgdr": "cosine_restarts",
    "linearlr": "linear",
    "poly": "polynomial",
    "polynomiallr": "polynomial",
    "onecyclelr": "onecycle",
    "piecewise": "piecewise_linear",
    "reduceonplateau": "plateau",
    "reducelronplateau": "plateau",
    "none": "constant",
}


def canonical_schedule_name(name: str, *, field: str = "lr_scheduler") -> str:
    """``"CosineAnnealingLR"`` -> ``"cosine"``; raises with suggestions when unknown.

    Raises:
        TypeError: ``name`` is not a string.
        ConfigError: Unknown name (with the closest known one).
    """
    table = {normalize(n): n for n in SCHEDULE_NAMES}
    table.update(SCHEDULE_ALIASES)
    return lookup_name(name, table, field, "schedule")


def check_schedule_name(name: str, *, field: str = "lr_scheduler") -> None:
    """Raise when ``name`` is not a known schedule."""
    canonical_schedule_name(name, field=field)
