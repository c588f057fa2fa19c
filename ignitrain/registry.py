"""Names -> optimizers, losses and schedules, matched case-insensitively.

``"sgd"``, ``"SGD"``, ``"AdamW"``, ``"adam_w"`` all resolve; so do ``"CrossEntropyLoss"``,
``"cross_entropy"`` and ``"ce"``. An unknown name raises a ``ValueError`` that lists
what exists and suggests the closest match.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ignitrain.errors import ConfigError, suggest

__all__ = [
    "normalize",
    "lookup_name",
    "optimizer_class",
    "build_optimizer",
    "loss_class",
    "build_loss",
    "check_loss_spec",
    "describe_loss",
    "has_momentum",
]  # and SCHEDULE_NAMES, canonical_schedule_name, check_schedule_name (see __getattr__)


def normalize(name: str) -> str:
    """Lower-case and drop ``_``, ``-`` and spaces: ``"Cross_Entropy"`` -> ``"crossentropy"``."""
    return "".join(ch for ch in str(name).lower() if ch not in "_- ")


_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    normalize(cls.__name__): cls
    for cls in (
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.RMSprop,
        torch.optim.Adagrad,
        torch.optim.Adadelta,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.LBFGS,
    )
}

_LOSSES: dict[str, type[nn.Module]] = {
    "crossentropy": nn.CrossEntropyLoss,
    "crossentropyloss": nn.CrossEntropyLoss,
    "ce": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "nllloss": nn.NLLLoss,
    "mse": nn.MSELoss,
    "mseloss": nn.MSELoss,
    "l2": nn.MSELoss,
    "l1": nn.L1Loss,
    "l1loss": nn.L1Loss,
    "mae": nn.L1Loss,
    "smoothl1": nn.SmoothL1Loss,
    "smoothl1loss": nn.SmoothL1Loss,
    "huber": nn.HuberLoss,
    "huberloss": nn.HuberLoss,
    "bce": nn.BCELoss,
    "bceloss": nn.BCELoss,
    "bcewithlogits": nn.BCEWithLogitsLoss,
    "bcewithlogitsloss": nn.BCEWithLogitsLoss,
    "kldiv": nn.KLDivLoss,
    "kldivloss": nn.KLDivLoss,
}


def lookup_name(name: Any, table: dict[str, Any], field: str, kind: str) -> Any:
    """``table[normalize(name)]``, or a ``ConfigError`` naming the closest known name.

    Raises:
        TypeError: ``name`` is not a string.
        ConfigError: ``name`` is not in ``table``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{field}={name!r} is not allowed: expected a {kind} name")
    key = normalize(name)
    if key in table:
        return table[key]
    names = sorted(set(table))
    raise ConfigError(
        f"TrainConfig.{field}={name!r} is not a known {kind}.{suggest(key, names)} "
        f"Known {kind} names: {', '.join(names)}"
    )


def optimizer_class(name: str, *, field: str = "optimizer") -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class for ``name`` (``"sgd"``, ``"AdamW"``...)."""
    return lookup_name(name, _OPTIMIZERS, field, "optimizer")


def has_momentum(name: str) -> bool:
    """Whether the optimizer named ``name`` has ``momentum`` or ``betas``."""
    cls = optimizer_class(name)
    return (
        cls in (torch.optim.SGD, torch.optim.RMSprop)
        or "betas" in cls.__init__.__code__.co_varnames
    )


def build_optimizer(
    spec: Any,
    params: Iterable[Any],
    *,
    lr: float,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    extra: dict[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Build an optimizer from a name or factory, or pass an instance through.

    ``momentum`` maps to SGD/RMSprop ``momentum`` and to ``betas[0]`` of Adam-family
    optimizers, so one config option drives both.
    """
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    params = list(params)
    if not isinstance(spec, str):
        return spec(params)
    cls = optimizer_class(spec)
    kwargs: dict[str, Any] = {"lr": lr}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if momentum is not None:
        if cls in (torch.optim.SGD, torch.optim.RMSprop):
            kwargs["momentum"] = momentum
        elif "betas" in cls.__init__.__code__.co_varnames:
            kwargs["betas"] = (momentum, 0.999)
        else:
            raise ConfigError(
                f"TrainConfig.momentum={momentum!r} is not allowed for optimizer={spec!r}: "
                f"{cls.__name__} has no momentum or betas"
            )
    kwargs.update(extra or {})
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError) as exc:  # torch's own words, with the field that caused it
        unknown = _unknown_arguments(cls, extra or {})
        hint = f" {cls.__name__} takes no {unknown}." if unknown else ""
        raise ConfigError(
            f"TrainConfig.optimizer_kwargs={dict(extra or {})!r} (with lr={lr!r}, "
            f"weight_decay={weight_decay!r}, momentum={momentum!r}) is not allowed for "
            f"optimizer={spec!r}:{hint} {cls.__name__} said: {exc}"
        ) from exc


def _unknown_arguments(cls: type, extra: Mapping[str, Any]) -> list[str]:
    try:
        accepted = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return []
    return sorted(set(extra) - set(accepted))


def loss_class(name: str, *, field: str = "loss") -> type[nn.Module]:
    """The ``torch.nn`` loss class for ``name``."""
    return lookup_name(name, _LOSSES, field, "loss")


def build_loss(spec: Any, default: Callable[[], Callable] | None = None) -> Callable:
    """A loss callable from a name, a module/callable, or the flavor's ``default``."""
    if spec is None:
        if default is None:
            raise ConfigError("TrainConfig.loss=None is not allowed here: this flavor needs a loss")
        return default()
    if isinstance(spec, str):
        return loss_class(spec)()
    if isinstance(spec, Mapping):
        spec = check_loss_spec(spec)
        args = {k: _tensor_arg(k, v) for k, v in spec.items() if k != "name"}
        return loss_class(spec["name"])(**args)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec()
    return spec


_SCHEDULE_EXPORTS = ("SCHEDULE_NAMES", "canonical_schedule_name", "check_schedule_name")


def __getattr__(name: str) -> Any:
    # The schedule names live with their table (handlers.schedules.named, the one
    # source). Imported lazily because of a real cycle: that package imports
    # handlers.stopping, which imports ignitrain.config, which imports this module.
    if name in _SCHEDULE_EXPORTS:
        from ignitrain.handlers.schedules import named

        return getattr(named, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- loss specs with arguments (issue 13) ---------------------------------------------

_TENSOR_ARGS = ("weight", "pos_weight")  # given as lists in a spec, tensors in the module
_PLAIN = (bool, int, float, str)


def _tensor_arg(name: str, value: Any) -> Any:
    if name in _TENSOR_ARGS and isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=torch.float32)
    return value


def check_loss_spec(spec: Mapping[str, Any], *, field: str = "loss") -> dict[str, Any]:
    """Check ``{"name": "CrossEntropyLoss", "label_smoothing": 0.1}``; return it as a dict.

    The name is looked up like a plain loss name; every other key must be an argument
    of that loss class.

    Raises:
        ConfigError: no ``name``, an unknown loss, or an argument the class does not take.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"TrainConfig.{field}={spec!r} is not allowed: a loss spec needs a 'name', e.g. "
            "{'name': 'CrossEntropyLoss', 'label_smoothing': 0.1}"
        )
    cls = loss_class(spec["name"], field=field)
    args = {str(k): v for k, v in spec.items() if k != "name"}
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self"]
    for key in args:
        if key not in allowed:
            raise ConfigError(
                f"TrainConfig.{field}: {cls.__name__} has no argument {key!r}."
                f"{suggest(key, allowed)} Its arguments: {', '.join(allowed)}"
            )
    return {"name": spec["name"], **args}


def describe_loss(loss: Any) -> Any:
    """Plain data for a config's ``loss``: a name or spec as given; a ``torch.nn`` loss
    module with non-default arguments as ``{"name": class, **those arguments}``; any
    other object as its import path (as ``TrainConfig.to_dict`` writes objects)."""
    if loss is None or isinstance(loss, str):
        return loss
    if isinstance(loss, Mapping):
        return {str(k): v for k, v in loss.items()}
    cls = type(loss)
    if isinstance(loss, nn.Module) and cls in set(_LOSSES.values()):
        spec: dict[str, Any] = {"name": cls.__name__}
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in ("self", "size_average", "reduce") or not hasattr(loss, name):
                continue
            value = getattr(loss, name)
            if isinstance(value, torch.Tensor) and name in _TENSOR_ARGS:
                spec[name] = value.detach().cpu().tolist()
            elif isinstance(value, _PLAIN) and value != param.default:
                spec[name] = value
        if len(spec) > 1:  # with its defaults the import path says everything
            return spec
    target = loss if isinstance(loss, type) or hasattr(loss, "__qualname__") else cls
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
