""":func:`build_schedule`: a spec (name, dict, factory, scheduler object) -> :class:`Schedule`.

What a spec may hold and how it is checked live here too: :class:`BuildOptions` (what
every schedule is built with), the placeholders (``"{total_steps} // 3"``, resolved by a
tiny AST walker, never by ``eval``) and the checks of units and counts.

Named specs are built from their entry in :data:`~.named.SHAPES`, on a shadow optimizer.
Scheduler objects are driven as they are: a torch ``LRScheduler`` through Ignite's
``LRScheduler`` wrapper, an Ignite ``ParamScheduler``/``ParamGroupScheduler`` directly,
torch's ``ReduceLROnPlateau`` by :class:`~.drivers.PlateauDriver`.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.handlers.param_scheduler import (
    LRScheduler,
    ParamGroupScheduler,
    ParamScheduler,
    ReduceLROnPlateauScheduler,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain.errors import ConfigError, is_count, is_number, not_allowed, suggest
from ignitrain.handlers.schedules.drivers import (
    PARAM_NAMES,
    IgniteDriver,
    PlateauDriver,
    param_values,
    scheduler_param_names,
    shadow_optimizer,
)
from ignitrain.handlers.schedules.named import SHAPES, canonical_schedule_name
from ignitrain.handlers.schedules.schedule import Plan, Schedule

__all__ = [
    "PLACEHOLDERS",
    "UNITS",
    "BuildOptions",
    "Placeholder",
    "build_schedule",
    "check_factor",
    "check_int",
    "check_unit",
    "resolve_placeholders",
]

#: The events a schedule can advance on.
UNITS: tuple[str, ...] = ("iteration", "epoch", "metric")
#: torch scheduler classes that step per iteration by default (the rest per epoch).
_PER_ITERATION_TORCH = (torch_sched.OneCycleLR, torch_sched.CyclicLR)
_SCHEDULER_TYPES = (torch_sched.LRScheduler, ParamScheduler, ParamGroupScheduler)
_SPEC_KEYS = ("unit", "warmup_steps", "warmup_start_factor")  # besides "name"


@dataclass(frozen=True)
class BuildOptions:
    """What a schedule drives and how it starts.

    Attributes:
        param_name: ``"lr"`` or ``"momentum"``.
        field: Config field named in error messages.
        unit: Unit override (``None``: the schedule's default).
        warmup_steps: Warm-up optimizer steps in front of the schedule.
        warmup_start_factor: Warm-up starts at this fraction of the first value.
    """

    param_name: str = "lr"
    field: str = "lr_scheduler"
    unit: str | None = None
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``, else ``ValueError`` naming ``name``."""
    if not is_count(value) or value < minimum:
        raise not_allowed(f"Argument {name}", value, f"expected an integer >= {minimum}")
    return int(value)


def check_factor(value: Any) -> float:
    """A warm-up start factor in [0, 1]."""
    if not is_number(value) or not 0 <= value <= 1:
        raise not_allowed("Argument warmup_start_factor", value, "expected a number in [0, 1]")
    return float(value)


def check_unit(unit: Any, allowed: tuple[str, ...], field: str, name: str) -> str:
    """``unit`` when schedule ``name`` allows it, else ``ConfigError`` with a suggestion."""
    if unit not in allowed:
        raise ConfigError(
            f"{field}: unit={unit!r} is not allowed for schedule {name!r}: expected "
            f"{' or '.join(repr(u) for u in allowed)}.{suggest(unit, allowed)}"
        )
    return unit


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


#: Names usable as ``"{name}"`` in schedule parameters (the upper-case ones are
#: pytorch-accelerated's, see :class:`Placeholder`).
PLACEHOLDERS: tuple[str, ...] = (
    "num_epochs",
    "steps_per_epoch",
    "total_steps",
    *(p.name for p in Placeholder),
)
# A tiny evaluator: numbers and + - * / // % ** only, never Python's eval.
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _arithmetic(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.operand))
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
        why = "expected a torch.optim.Optimizer"
        raise not_allowed("Argument optimizer", optimizer, why, TypeError)
    num_epochs = check_int(num_epochs, "num_epochs", 1)
    steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", 1)
    options = BuildOptions(
        param_name=param_name,
        field=field,
        unit=unit,
        warmup_steps=check_int(warmup_steps, "warmup_steps", 0),
        warmup_start_factor=check_factor(warmup_start_factor),
    )
    total = num_epochs * steps_per_epoch if total_steps is None else total_steps
    total = check_int(total, "total_steps", 1)
    if param_name not in PARAM_NAMES:
        why = f"expected 'lr' or 'momentum'.{suggest(param_name, PARAM_NAMES)}"
        raise not_allowed("Argument param_name", param_name, why)
    if unit is not None and unit not in UNITS:
        raise not_allowed("Argument unit", unit, f"expected one of {UNITS}.{suggest(unit, UNITS)}")
    if spec is None or isinstance(spec, Schedule):
        return spec
    param_values(optimizer, param_name)  # fails early for an optimizer without momentum
    batches = steps_per_epoch if train_loader_len is None else train_loader_len
    batches = check_int(batches, "train_loader_len", 1)
    evals = 0 if eval_loader_len is None else check_int(eval_loader_len, "eval_loader_len", 0)
    context = {"num_epochs": num_epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total}
    # pytorch-accelerated's names (Placeholder's order) for the same counts and the loaders
    counts = (num_epochs, steps_per_epoch, batches, evals)
    context.update(zip((p.name for p in Placeholder), counts))
    return _build(spec, optimizer, options, context)


def _build(spec: Any, optimizer: Any, options: BuildOptions, context: dict) -> Schedule:
    field = options.field
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            why = "a spec dict needs a 'name', e.g. {'name': 'step', 'step_size': 10}"
            raise not_allowed(field, dict(spec), why, ConfigError)
        return _build_named(dict(spec), optimizer, options, context)
    if isinstance(spec, type):
        why = "pass a scheduler name, an instance or a factory "
        why += "(e.g. lambda opt, epochs, steps: StepLR(opt, 10)), not a class"
        raise not_allowed(field, spec, why, TypeError)
    if callable(spec) and not isinstance(spec, _SCHEDULER_TYPES):
        spec = _call_factory(spec, optimizer, context, field)
        if isinstance(spec, Schedule):
            return spec
    return _wrap_object(spec, optimizer, options)


def _build_named(spec: dict, optimizer: Any, options: BuildOptions, context: dict) -> Schedule:
    field = options.field
    name = canonical_schedule_name(spec.pop("name"), field=field)
    shape = SHAPES[name]
    if name == "cyclic_momentum" and options.param_name != "momentum":
        why = "it schedules momentum (use it as momentum_scheduler); "
        why += "for the learning rate use 'onecycle'"
        raise not_allowed(field, name, why, ConfigError)
    unit = check_unit(spec.pop("unit", options.unit) or shape.unit, shape.units, field, name)
    warmup = check_int(spec.pop("warmup_steps", options.warmup_steps), "warmup_steps", 0)
    start_factor = check_factor(spec.pop("warmup_start_factor", options.warmup_start_factor))
    params = resolve_placeholders(spec, context, where=field)

    base = param_values(optimizer, options.param_name)
    length = context["num_epochs"]
    if unit == "iteration":  # iterations after warm-up
        length = max(1, context["total_steps"] - warmup)
    defaults = shape.defaults(length, base)
    _check_params(name, params, shape, list(defaults), field)
    params = {**defaults, **params}

    shadow = shadow_optimizer(base, params["max_momentum"] if shape.key == "momentum" else 0.0)
    try:
        scheduler = shape.make(shadow, params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{field}: schedule {name!r} rejected parameters {params}: {exc}"
        ) from exc
    if isinstance(scheduler, torch_sched.ReduceLROnPlateau):
        mode_fixed = params["mode"] is not None
        driver: Any = PlateauDriver(scheduler, owns_optimizer=True, mode_fixed=mode_fixed)
    else:
        limit = None if shape.limit is None else int(params[shape.limit])
        driver = IgniteDriver(scheduler, target=shadow, key=shape.key, limit=limit)
    replan = (
        None if shape.replan is None else functools.partial(_replanned, shape, shadow, params, base)
    )
    return Schedule(
        optimizer,
        driver,
        unit=unit,
        param_name=options.param_name,
        warmup_steps=warmup,
        warmup_start_factor=start_factor,
        name=name,
        plan=Plan(length, replan),
    )


def _replanned(shape: Any, shadow: Any, params: dict, base: list[float], remaining: int) -> Any:
    return IgniteDriver(shape.replan(shadow, params, base, remaining), target=shadow, key=shape.key)


def _check_params(name: str, params: Mapping[str, Any], shape: Any, accepted: list, field):
    for key in params:
        if key not in accepted:
            hint = shape.hints.get(key)
            extra = f" ({hint})" if hint else suggest(key, accepted)
            raise ConfigError(
                f"{field}: schedule {name!r} has no parameter {key!r}.{extra} "
                f"Accepted: {', '.join(accepted + list(_SPEC_KEYS))}"
            )
    for key in shape.required:
        if params.get(key) is None:
            raise ConfigError(
                f"{field}: schedule {name!r} needs parameter {key!r}, e.g. "
                "{'name': 'piecewise_linear', 'milestones_values': [(0, 0.0), (100, 0.1)]}"
            )


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
    why = "a scheduler factory takes the optimizer as its one positional argument, optimizer -> "
    why += "scheduler (e.g. functools.partial(StepLR, step_size=7, gamma=0.1)); got signature "
    why += str(signature)
    raise not_allowed(field, factory, why, TypeError)


def _wrap_object(obj: Any, optimizer: Any, options: BuildOptions) -> Schedule:
    field, param_name = options.field, options.param_name
    plateau = isinstance(obj, (torch_sched.ReduceLROnPlateau, ReduceLROnPlateauScheduler))
    if isinstance(obj, torch_sched.LRScheduler):  # ReduceLROnPlateau included
        _check_bound(obj.optimizer, optimizer, field)
        if param_name != "lr":
            why = f"a torch LR scheduler schedules lr, not {param_name}; "
            why += "use a schedule name or an Ignite ParamScheduler"
            raise not_allowed(field, obj, why, ConfigError)
        per_iteration = isinstance(obj, _PER_ITERATION_TORCH)
        driver: Any = (
            PlateauDriver(obj, owns_optimizer=False)
            if plateau
            else IgniteDriver(LRScheduler(obj), target=optimizer, owns_optimizer=False)
        )
    elif isinstance(obj, (ParamScheduler, ParamGroupScheduler)):
        names = scheduler_param_names(obj)
        if set(names) != {param_name}:
            why = f"it schedules {names}, expected {param_name!r}"
            raise not_allowed(field, obj, why, ConfigError)
        if param_name == "momentum" and any("betas" in g for g in optimizer.param_groups):
            why = f"Ignite schedulers set plain keys, but {type(optimizer).__name__} keeps "
            why += "momentum in betas[0]; use a schedule name"
            raise not_allowed(field, obj, why, ConfigError)
        if isinstance(getattr(obj, "optimizer", None), torch.optim.Optimizer):
            _check_bound(obj.optimizer, optimizer, field)
        per_iteration = True
        driver = IgniteDriver(obj, target=optimizer, key=param_name, owns_optimizer=False)
    else:
        why = "expected None, a schedule name, a spec dict, a factory (optimizer, num_epochs, "
        why += "steps_per_epoch) -> scheduler, a torch LRScheduler, ReduceLROnPlateau or an "
        why += "Ignite ParamScheduler"
        raise not_allowed(field, obj, why, TypeError)
    default = "metric" if plateau else "iteration" if per_iteration else "epoch"
    allowed = ("metric",) if plateau else ("iteration", "epoch")
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
