"""What a sharded checkpoint saves: models and optimizers as DCP sees them.

Part of :mod:`ignitrain.handlers.sharded` (which re-exports every name here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelState",
    "OptimizerState",
    "checkpointables",
    "owner_of",
    "plain_state",
    "sharded_names",
]

# torch.distributed.checkpoint (DCP) is imported where it is used: about a second of
# imports that only FSDP runs need.


class ModelState:
    """A model as Ignite's ``Checkpoint`` sees it: ``state_dict`` keyed by parameter
    name whatever the sharding (``get_model_state_dict``: ``DTensor`` shards under FSDP),
    ``load_state_dict`` through ``set_model_state_dict``. A collective under FSDP.

    Args:
        model: The model (FSDP-sharded or not; not the ``torch.compile`` wrapper).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = getattr(model, "_orig_mod", model)

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(self.model, state, options=StateDictOptions(strict=strict))


class OptimizerState:
    """An optimizer as Ignite's ``Checkpoint`` sees it: state keyed by parameter *name*
    (``get_optimizer_state_dict``), so it reloads under another sharding or world size.

    Args:
        model: The model whose parameters ``optimizer`` steps.
        optimizer: The optimizer.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.model = ModelState(model).model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state)


def checkpointables(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every model wrapped in :class:`ModelState` and every optimizer in
    :class:`OptimizerState` (paired with the model in ``state`` holding its parameters).

    The result is what to give Ignite's ``Checkpoint(to_save=...)`` with a
    :class:`ShardedSaver`, and what :func:`load_sharded_objects` loads into.
    """
    if not isinstance(state, Mapping) or not state:
        raise TypeError(
            "state must be a non-empty mapping name -> model/optimizer/object with "
            f"state_dict, got {type(state).__name__}"
        )
    models = {k: v for k, v in state.items() if isinstance(v, nn.Module)}
    out: dict[str, Any] = {}
    for name, obj in state.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"state key {name!r} is not allowed: expected a name without '.'")
        if isinstance(obj, nn.Module):
            out[name] = ModelState(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            out[name] = OptimizerState(models[owner_of(name, obj, models)], obj)
        else:
            out[name] = obj
    return out


def owner_of(name: str, optimizer: torch.optim.Optimizer, models: Mapping[str, nn.Module]) -> str:
    """The name of the model in ``models`` whose parameters ``optimizer`` steps."""
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for model_name, model in models.items():
        if params <= {id(p) for p in model.parameters()}:
            return model_name
    raise ValueError(
        f"state[{name!r}] is an optimizer whose parameters belong to none of the models "
        f"in state ({', '.join(models) or 'none given'}): pass the model it optimizes too"
    )


def _is_sharded_entry(obj: Any) -> bool:
    return isinstance(obj, (ModelState, OptimizerState))


def sharded_names(to_save: Mapping[str, Any]) -> list[str]:
    """The names of ``to_save`` (from :func:`checkpointables`) that DCP writes: its
    :class:`ModelState` and :class:`OptimizerState` entries."""
    return [name for name, obj in to_save.items() if _is_sharded_entry(obj)]


def plain_state(obj: Any) -> Any:
    """``obj.state_dict()``, or ``obj`` itself when it is plain data."""
    return obj.state_dict() if hasattr(obj, "state_dict") else obj
