"""Objects to plain, weights_only-loadable data: what goes into a checkpoint."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from torch import nn

from ignitrain.describe import unwrap
from ignitrain.handlers.checkpoint.format import (
    FORMAT_KEY,
    FORMAT_VERSION,
    OBJECTS_KEY,
    RESERVED_KEYS,
    CheckpointError,
)
from ignitrain.handlers.checkpoint.rng import engine_state_to_safe

__all__ = [
    "PLAIN_LEAVES",
    "build_payload",
    "check_objects",
    "make_safe",
    "payload_from_states",
    "safe_state",
]


# Exact types: subclasses (IntEnum, str enums, namedtuples) pickle by class reference,
# which weights_only loading refuses.
PLAIN_LEAVES = (str, bytes, bytearray, bool, int, float, complex, type(None))
_PLAIN_TYPES = frozenset(PLAIN_LEAVES)
_TORCH_LEAVES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def make_safe(obj: Any, where: str, *, arrays_to_tensors: bool) -> Any:
    """Return ``obj`` with numpy scalars made Python scalars; refuse what weights_only can't read.

    Containers are copied only when something inside changed, so a module's
    ``state_dict`` (with its ``_metadata``) is saved as is.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in _PLAIN_TYPES or isinstance(obj, _TORCH_LEAVES):
        return obj
    if isinstance(obj, np.ndarray):
        if arrays_to_tensors:
            return torch.from_numpy(obj.copy())
        raise CheckpointError(
            f"Cannot checkpoint {where}: a numpy array, which torch.load(weights_only=True) "
            "refuses. Store it as a tensor or a list in state_dict()."
        )
    if isinstance(obj, dict):
        if type(obj) not in (dict, OrderedDict, Counter):
            obj = dict(obj)  # defaultdict and other dict subclasses load back as dict
        items = {
            k: make_safe(v, f"{where}[{k!r}]", arrays_to_tensors=arrays_to_tensors)
            for k, v in obj.items()
        }
        if all(items[k] is obj[k] for k in obj):
            return obj
        out = type(obj)(items)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple, set):
        # long series of plain numbers (History) are checked in one pass, not per call
        if all(type(v) in _PLAIN_TYPES for v in obj):
            return obj
        items = [
            make_safe(v, f"{where}[{i}]", arrays_to_tensors=arrays_to_tensors)
            for i, v in enumerate(obj)
        ]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items)
    raise CheckpointError(
        f"Cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) refuses. Keep state_dict() to tensors and plain "
        "Python data (dict, list, tuple, str, int, float, bool, None)."
    )


def _state_of(obj: Any) -> Any:
    if isinstance(obj, nn.Module):
        return unwrap(obj).state_dict()
    if isinstance(obj, Engine):
        return engine_state_to_safe(obj.state_dict())
    return obj.state_dict()


def check_objects(objects: Any, *, need: str) -> None:
    if not isinstance(objects, Mapping):
        raise TypeError(
            f"Argument objects={objects!r} is not allowed: expected a dict of name -> object "
            f"with {need}()"
        )
    for name, obj in objects.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Argument objects has key {name!r}: expected a non-empty str")
        if not callable(getattr(obj, need, None)):
            raise TypeError(
                f"Argument objects[{name!r}]={type(obj).__name__} is not allowed: it has no "
                f"{need}() method"
            )


def build_payload(objects: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint dict for ``objects`` plus plain metadata.

    Models are saved unwrapped (no ``module.`` / ``_orig_mod.`` prefixes), Ignite
    engines with their RNG states as tensors, and everything is checked to be readable
    by ``torch.load(weights_only=True)`` now rather than failing at load time.

    Args:
        objects: Name -> object with ``state_dict()`` (model, optimizer, scheduler,
            engine, :class:`RNGState`, History...).
        extra: Plain metadata merged at the top level: ``"config"``,
            ``"model_description"``, ``"iteration"``, ``"epoch"``, ``"metrics"``...
            numpy arrays in it become tensors.

    Returns:
        ``{"ignitrain_format": 2, "ignitrain_objects": [names], name: state_dict, ...,
        **extra}``: flat, so ``ignite.handlers.Checkpoint.load_objects`` reads it.

    Raises:
        TypeError: An object has no ``state_dict``, or ``extra`` is not a dict.
        ValueError: ``extra`` uses a reserved key.
        CheckpointError: A state holds something weights_only loading would refuse.
    """
    check_objects(objects, need="state_dict")
    return payload_from_states(
        {name: safe_state(obj, name) for name, obj in objects.items()}, extra
    )


def safe_state(obj: Any, name: str) -> Any:
    """``obj``'s state_dict made weights_only-loadable (unwrapped model, engine RNG as tensors).

    Raises:
        CheckpointError: The state holds something weights_only loading would refuse.
    """
    return make_safe(_state_of(obj), f"state[{name!r}]", arrays_to_tensors=False)


def payload_from_states(states: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The flat payload for ready states (see :func:`build_payload`)."""
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise TypeError(f"Argument extra={extra!r} is not allowed: expected a dict or None")
    reserved = [k for k in [*extra, *states] if k in RESERVED_KEYS]
    if reserved:
        raise ValueError(f"Argument extra uses reserved key(s) {reserved}: choose other names")
    clash = [k for k in extra if k in states]
    if clash:
        raise ValueError(
            f"Argument extra uses key(s) {clash} that name saved objects: choose other names"
        )
    meta = {k: make_safe(v, f"extra[{k!r}]", arrays_to_tensors=True) for k, v in extra.items()}
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: list(states), **states, **meta}
