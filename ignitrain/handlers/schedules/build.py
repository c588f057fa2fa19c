""":func:`build_schedule`: a spec (name, dict, factory, scheduler object) -> :class:`Schedule`.

Named specs go to :func:`~.named.build_named`. Scheduler objects are driven as they are:
a torch ``LRScheduler`` through Ignite's ``LRScheduler`` wrapper, an Ignite
``ParamScheduler``/``ParamGroupScheduler`` directly, torch's ``ReduceLROnPlateau`` by
:class:`~.drivers.PlateauDriver`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.handlers.param_scheduler import (
    LRScheduler,
    ParamGroupScheduler,
    ParamScheduler,
    ReduceLROnPlateauScheduler,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain.errors import ConfigError, suggest
from ignitrain.handlers.schedules.drivers import IgniteDriver, PlateauDriver
from ignitrain.handlers.schedules.named import build_named
from ignitrain.handlers.schedules.options import (
    UNITS,
    BuildOptions,
    check_factor,
    check_int,
    check_unit,
)
from ignitrain.handlers.schedules.placeholders import resolve_placeholders
from ignitrain.handlers.schedules.schedule import Schedule
from ignitrain.handlers.schedules.values import PARAM_NAMES, param_values

__all__ = ["build_schedule"]

#: torch scheduler classes that step per iteration by default (the rest per epoch).
_PER_ITERATION_TORCH = (torch_sched.OneCycleLR, torch_sched.CyclicLR)
_SCHEDULER_TYPES = (torch_sched.LRScheduler, ParamScheduler, ParamGroupScheduler)


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
    num_epochs = check_int(num_epochs, "num_epochs", 1)
    steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", 1)
    options = BuildOptions(
        param_name=param_name,
        field=field,
        unit=unit,
        warmup_steps=check_int(warmup_steps, "warmup_steps", 0),
        warmup_start_factor=check_factor(warmup_start_factor),
    )
    total = (
        num_epochs * steps_per_epoch
        if total_steps is None
        else check_int(total_steps, "total_steps", 1)
    )
    if param_name not in PARAM_NAMES:
        raise ValueError(
            f"Argument param_name={param_name!r} is not allowed: expected 'lr' or 'momentum'."
            f"{suggest(param_name, PARAM_NAMES)}"
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
    context = {
        "num_epochs": num_epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "NUM_EPOCHS": num_epochs,
        "NUM_UPDATE_STEPS_PER_EPOCH": steps_per_epoch,
        "TRAIN_DATALOADER_LEN": steps_per_epoch
        if train_loader_len is None
        else check_int(train_loader_len, "train_loader_len", 1),
        "EVAL_DATALOADER_LEN": 0
        if eval_loader_len is None
        else check_int(eval_loader_len, "eval_loader_len", 0),
    }
    return _build(spec, optimizer, options, context)


def _build(spec: Any, optimizer: Any, options: BuildOptions, context: dict) -> Schedule:
    field = options.field
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(
                f"{field}={dict(spec)!r} is not allowed: a spec dict needs a 'name', "
                "e.g. {'name': 'step', 'step_size': 10}"
            )
        return build_named(spec, optimizer, options, context)
    if isinstance(spec, type):
        raise TypeError(
            f"{field}={spec!r} is not allowed: pass a scheduler name, an instance or a factory "
            "(e.g. lambda opt, epochs, steps: StepLR(opt, 10)), not a class"
        )
    if callable(spec) and not isinstance(spec, _SCHEDULER_TYPES):
        made = _call_factory(spec, optimizer, context, field)
        if isinstance(made, Schedule):
            return made
        return _wrap_object(made, optimizer, options)
    return _wrap_object(spec, optimizer, options)


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


def _wrap_object(obj: Any, optimizer: Any, options: BuildOptions) -> Schedule:
    field, param_name = options.field, options.param_name
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
        driver: Any = (
            PlateauDriver(obj, owns_optimizer=False)
            if plateau
            else IgniteDriver(LRScheduler(obj), target=optimizer, owns_optimizer=False)
        )
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
        driver = IgniteDriver(obj, target=optimizer, key=param_name, owns_optimizer=False)
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
        unit=check_unit(options.unit or default, allowed, field, name),
        param_name=param_name,
        warmup_steps=options.warmup_steps,
        warmup_start_factor=options.warmup_start_factor,
        name=name,
    )


def _check_bound(bound: Any, optimizer: Any, field: str) -> None:
    if bound is not optimizer:
        raise ConfigError(
            f"{field}: the scheduler was built for another optimizer than the one it should "
            "drive; build it on the training optimizer (or pass a factory)"
        )
