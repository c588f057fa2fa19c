"""A small, plain-data description of a model so an inference user can rebuild it.

Two kinds of models rebuild from their description (:func:`ignitrain.rebuild_model`):
a class that keeps its constructor arguments as attributes (``"args"``), and a
Hugging Face model (``"hf_config"``: its ``model.config`` as a plain dict, rebuilt
with ``cls(cls.config_class.from_dict(hf_config))``). Everything stays plain data, so
the checkpoint loads with ``torch.load(weights_only=True)``.
"""

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


def _user_class(model: nn.Module) -> type:
    """The model's own class: FSDP2's ``fully_shard`` swaps a module's class for a
    generated ``FSDP<Class>`` subclass, which names no importable class."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if issubclass(cls, FSDPModule):
        return next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def describe_model(model: nn.Module) -> dict[str, Any]:
    """``{"class": "pkg.mod.Class", "args": {...}, "num_parameters": N}``.

    Constructor arguments are known when the model keeps them as attributes of the same
    name (``self.hidden = hidden``), a common habit; others are left out.
    """
    model = unwrap(model)
    cls = _user_class(model)
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
    description = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "args": args,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    hf_config = _hf_config(model)
    if hf_config is not None:
        description["hf_config"] = hf_config
    return description


def _hf_config(model: nn.Module) -> dict[str, Any] | None:
    """A Hugging Face model's ``config`` as JSON-plain data, or ``None`` for other models.

    ``to_json_string`` is the library's own serialisation (dtypes become strings), so the
    dict holds only what ``torch.load(weights_only=True)`` accepts.
    """
    config = getattr(model, "config", None)
    to_json = getattr(config, "to_json_string", None)
    if config is None or not callable(to_json) or not hasattr(type(model), "config_class"):
        return None
    import json

    try:
        return json.loads(to_json(use_diff=False))
    except (TypeError, ValueError):
        return None
