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

:data:`SCHEDULE_NAMES` (re-exported by :mod:`ignitrain.registry`) is ``tuple(SHAPES)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from ignite.handlers.param_scheduler import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamGroupScheduler,
    PiecewiseLinear,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain.errors import ConfigError, is_count, suggest
from ignitrain.handlers.schedules.drivers import IgniteDriver, PlateauDriver, shadow_optimizer
from ignitrain.handlers.schedules.options import BuildOptions, check_factor, check_int, check_unit
from ignitrain.handlers.schedules.placeholders import resolve_placeholders
from ignitrain.handlers.schedules.schedule import Plan, Schedule
from ignitrain.handlers.schedules.values import param_values
from ignitrain.registry import lookup_name, normalize

__all__ = [
    "SCHEDULE_ALIASES",
    "SCHEDULE_NAMES",
    "SHAPES",
    "build_named",
    "canonical_schedule_name",
    "check_schedule_name",
]

_SPEC_KEYS = ("name", "unit", "warmup_steps", "warmup_start_factor")


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
    limit: str | None = None  # parameter holding the number of valid steps
    required: tuple[str, ...] = ()
    hints: tuple[tuple[str, str], ...] = ()
    # (shadow at the current values, params, base, remaining steps) -> Ignite scheduler
    replan: Callable[..., Any] | None = None


def _lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in opt.param_groups]


def _per_group(opt: torch.optim.Optimizer, make: Callable[[int, float], Any]) -> Any:
    # One Ignite scheduler per parameter group: a ParamScheduler writes one value into
    # every group it drives, and each group follows its own base value.
    schedulers = [make(i, value) for i, value in enumerate(_lrs(opt))]
    return ParamGroupScheduler(schedulers, names=[f"group{i}" for i in range(len(schedulers))])


def _cosine(opt, start: list[float], p: dict[str, Any], cycle: int, mult: float = 1.0) -> Any:
    # torch's CosineAnnealingLR(T_max) = Ignite's cosine from base to eta_min over T_max
    # events (Ignite needs a cycle of at least 2 events).
    def one(i: int, _: float) -> Any:
        return CosineAnnealingScheduler(
            opt, "lr", start[i], p["eta_min"], max(2, cycle), cycle_mult=mult, param_group_index=i
        )

    return _per_group(opt, one)


def _make_cosine(opt, p):
    return _cosine(opt, _lrs(opt), p, int(p["T_max"]))


def _replan_cosine(opt, p, base, remaining):
    return _cosine(opt, _lrs(opt), p, remaining)


def _make_restarts(opt, p):
    if not is_count(p["T_mult"]) or p["T_mult"] < 1 or not is_count(p["T_0"]) or p["T_0"] < 2:
        raise ValueError(f"expected integers T_0 >= 2 and T_mult >= 1, got {p}")
    return _cosine(opt, _lrs(opt), p, p["T_0"], float(p["T_mult"]))


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
    ends = [(b * p["start_factor"], b * p["end_factor"]) for b in _lrs(opt)]
    return _linear(opt, ends, p["total_iters"])


def _replan_linear(opt, p, base, remaining):
    ends = [(now, b * p["end_factor"]) for now, b in zip(_lrs(opt), base)]
    return _linear(opt, ends, remaining)


def _torch(cls: type, **fixed: Any) -> Callable[[torch.optim.Optimizer, dict[str, Any]], Any]:
    def make(opt, p):
        return LRScheduler(cls(opt, **{**p, **fixed}))

    return make


def _make_piecewise(opt, p):
    pairs = [tuple(pair) if isinstance(pair, list) else pair for pair in p["milestones_values"]]
    return PiecewiseLinear(opt, "lr", milestones_values=pairs)


def _make_plateau(opt, p):
    return torch_sched.ReduceLROnPlateau(opt, **{**p, "mode": p["mode"] or "min"})


def _milestones(ctx: _Context) -> list[int]:
    return sorted({max(1, ctx.length // 2), max(1, 3 * ctx.length // 4)})


_NO_MOMENTUM_HINT = "onecycle schedules the LR only; use momentum_scheduler='cyclic_momentum'"

#: name -> shape. The one list of named schedules (registry.SCHEDULE_NAMES reads it).
SHAPES: dict[str, _Shape] = {
    "constant": _Shape(
        "iteration", lambda c: {}, _torch(torch_sched.ConstantLR, factor=1.0, total_iters=0)
    ),
    "step": _Shape(
        "epoch",
        lambda c: {"step_size": max(1, c.length // 3), "gamma": 0.1},
        _torch(torch_sched.StepLR),
    ),
    "multistep": _Shape(
        "epoch",
        lambda c: {"milestones": _milestones(c), "gamma": 0.1},
        _torch(torch_sched.MultiStepLR),
    ),
    "exponential": _Shape(
        "epoch",
        lambda c: {"gamma": 0.01 ** (1.0 / max(1, c.length))},
        _torch(torch_sched.ExponentialLR),
    ),
    "cosine": _Shape(
        "iteration",
        lambda c: {"T_max": c.length, "eta_min": 0.0},
        _make_cosine,
        replan=_replan_cosine,
    ),
    "cosine_restarts": _Shape(
        "iteration",
        lambda c: {"T_0": max(2, c.length // 3), "T_mult": 1, "eta_min": 0.0},
        _make_restarts,
    ),
    "linear": _Shape(
        "iteration",
        lambda c: {"start_factor": 1.0, "end_factor": 0.0, "total_iters": c.length},
        _make_linear,
        replan=_replan_linear,
    ),
    "polynomial": _Shape(
        "iteration",
        lambda c: {"total_iters": c.length, "power": 1.0},
        _torch(torch_sched.PolynomialLR),
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
        _torch(torch_sched.OneCycleLR, cycle_momentum=False),
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


def _check_params(name: str, params: Mapping[str, Any], shape: _Shape, accepted: list, field):
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


def build_named(
    spec: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    options: BuildOptions,
    context: Mapping[str, int],
) -> Schedule:
    """Build the named schedule of a spec dict ``{"name": ..., **params}``.

    Raises:
        ConfigError: Unknown name, parameter or unit, or parameters the scheduler rejects.
    """
    spec, field = dict(spec), options.field
    name = canonical_schedule_name(spec.pop("name"), field=field)
    shape = SHAPES[name]
    if name == "cyclic_momentum" and options.param_name != "momentum":
        raise ConfigError(
            f"{field}='cyclic_momentum' is not allowed: it schedules momentum (use it as "
            "momentum_scheduler); for the learning rate use 'onecycle'"
        )
    unit = check_unit(spec.pop("unit", options.unit) or shape.unit, shape.units, field, name)
    warmup = check_int(spec.pop("warmup_steps", options.warmup_steps), "warmup_steps", 0)
    start_factor = check_factor(spec.pop("warmup_start_factor", options.warmup_start_factor))
    params = resolve_placeholders(spec, context, where=field)

    base = param_values(optimizer, options.param_name)
    total = context["total_steps"]
    length = context["num_epochs"] if unit != "iteration" else max(1, total - warmup)
    defaults = shape.defaults(_Context(length=length, base=base))
    _check_params(name, params, shape, list(defaults), field)
    params = {**defaults, **params}

    shadow = shadow_optimizer(base, params["max_momentum"] if shape.key == "momentum" else 0.0)
    try:
        scheduler = shape.make(shadow, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{field}: schedule {name!r} rejected parameters {params}: {exc}"
        ) from exc
    plan = Plan(length, None)
    if isinstance(scheduler, torch_sched.ReduceLROnPlateau):
        driver: Any = PlateauDriver(
            scheduler, owns_optimizer=True, mode_fixed=params["mode"] is not None
        )
    else:
        limit = None if shape.limit is None else int(params[shape.limit])
        driver = IgniteDriver(scheduler, target=shadow, key=shape.key, limit=limit)
        if shape.replan is not None:
            replan = partial(_replanned, shape, shadow, params, base)
            plan = Plan(length, replan)
    return Schedule(
        optimizer,
        driver,
        unit=unit,
        param_name=options.param_name,
        warmup_steps=warmup,
        warmup_start_factor=start_factor,
        name=name,
        plan=plan,
    )


def _replanned(shape: _Shape, shadow, params: dict, base: list[float], remaining: int) -> Any:
    return IgniteDriver(shape.replan(shadow, params, base, remaining), target=shadow, key=shape.key)
