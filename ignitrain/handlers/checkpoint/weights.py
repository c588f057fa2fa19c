"""The weights a checkpoint holds: whether they changed, whether they are finite."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["non_finite", "signature", "weight_modules"]


def signature(modules: list[nn.Module]) -> tuple:
    """A value equal for two calls exactly when no weight changed in between."""
    # Every in-place update (optimizer step, load_state_dict, BatchNorm statistics)
    # bumps a tensor's version counter, and a replaced ``.data`` changes the storage:
    # equal signatures mean the same weights. The storages are compared as a set, so an
    # exchange of storages between the model and its EMA copy (``EMAState.swapped``,
    # around an ``ema/*`` evaluation) reads as unchanged, as it is once restored.
    tensors = [t for m in modules for t in itertools.chain(m.parameters(), m.buffers())]
    return tuple(sorted(t.data_ptr() for t in tensors)), tuple(t._version for t in tensors)


def non_finite(modules: list[nn.Module]) -> list[str]:
    """Names of the floating-point parameters/buffers holding NaN or Inf.

    Paid only when a best checkpoint is decided. NaN/Inf propagate through a sum, so
    one sum per tensor and a single device sync decide (measured on a loaded CPU, 26M
    parameters: 16 ms, against 147 ms for ``isfinite`` of every element and 151 ms
    to serialise them); only when a sum is not finite (or overflowed) does the exact
    per-element check run, to name the tensors.
    """
    named = [
        (f"{type(m).__name__}.{n}", t)
        for m in modules
        for n, t in itertools.chain(m.named_parameters(), m.named_buffers())
        if t.is_floating_point()
    ]
    if not named:
        return []
    # a sharded (FSDP) tensor is checked on this rank's shard: no collective here
    local = [getattr(t, "to_local", lambda t=t: t)().detach() for _, t in named]
    sums = [t.sum(dtype=torch.float32 if t.element_size() < 4 else None) for t in local]
    if bool(torch.stack([v.to(sums[0].device) for v in sums]).isfinite().all()):
        return []
    return [name for (name, _), t in zip(named, local, strict=True) if not t.isfinite().all()]


def weight_modules(objects: Mapping[str, Any]) -> list[nn.Module]:
    """The modules whose weights a checkpoint holds: each ``nn.Module`` object, and
    the ``checkpoint_modules`` an object declares (the EMA copy of a model)."""
    modules = [o for o in objects.values() if isinstance(o, nn.Module)]
    for obj in objects.values():
        modules.extend(getattr(obj, "checkpoint_modules", ()))
    return modules
