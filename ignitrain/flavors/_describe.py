"""A small, plain-data description of a model so an inference user can rebuild it."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = ["describe_model", "unwrap"]

_PLAIN = (bool, int, float, str, type(None))


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def describe_model(model: nn.Module) -> dict[str, Any]:
    """``{"class": "pkg.mod.Class", "args": {...}, "num_parameters": N}``.

    Constructor arguments are known when the model keeps them as attributes of the same
    name (``self.hidden = hidden``), a common habit; others are left out.
    """
    model = unwrap(model)
    cls = type(model)
    args: dict[str, Any] = {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    for name in params:
        if name == "self":
            continue
        value = getattr(model, name, None)
        if isinstance(value, _PLAIN) and value is not None:
            args[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
            args[name] = list(value)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "args": args,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
