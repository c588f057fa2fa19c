"""Rank helpers and collectives over ``ignite.distributed``, no-ops on a single process.

Decisions that must be the same on every rank (stop on NaN, early stop) go through
:func:`agree_any` / :func:`agree_all`, or the ranks that decided otherwise wait forever
in the next collective; objects travel with :func:`broadcast_object` and
:func:`all_gather_object`; checkpointable state that differs by rank goes through
:func:`with_rank_states` / :func:`own_rank_state`.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import ignite.distributed as idist
import numpy as np
import torch

from ignitrain.errors import is_count

__all__ = [
    "agree_all",
    "agree_any",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "is_rank_zero",
    "own_rank_state",
    "rank_zero_only",
    "with_rank_states",
    "world_size",
]

_T = TypeVar("_T")


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return idist.get_world_size()


def is_rank_zero() -> bool:
    """``True`` on the process of global rank 0 (and on a single process)."""
    return idist.get_rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (no-op on a single process)."""
    idist.barrier()  # Ignite's serial model does nothing


def rank_zero_only(fn: Callable[..., _T]) -> Callable[..., _T | None]:
    """Decorate ``fn`` so that it runs on global rank 0 only; other ranks get ``None``.

    The rank is read at each call, not at decoration, so functions decorated at import
    time (before the process group exists) still behave.

    Example:
        >>> @rank_zero_only
        ... def log(msg):
        ...     print(msg)
        >>> log("written once")
        written once
    """
    if not callable(fn):
        raise TypeError(f"rank_zero_only needs a callable, got {fn!r}.")
    return idist.one_rank_only(rank=0)(fn)  # reads the rank at each call


def _as_bool(flag: Any) -> bool:
    if isinstance(flag, torch.Tensor):
        if flag.numel() != 1:
            raise ValueError(
                f"Argument flag must be one value, got a tensor of shape {flag.shape}."
            )
        return bool(flag.item())
    if isinstance(flag, (bool, np.bool_)) or (is_count(flag) and flag in (0, 1)):
        return bool(flag)
    raise TypeError(f"Argument flag must be a bool (or 0/1), got {flag!r}.")


def _all_reduce_flag(flag: Any, op: str) -> bool:
    value = _as_bool(flag)
    if idist.get_world_size() == 1:
        return value
    return bool(idist.all_reduce(float(value), op=op) > 0.5)


def agree_any(flag: bool) -> bool:
    """``True`` on every rank if ``flag`` is ``True`` on any rank (a MAX all-reduce).

    Every rank must call it at the same point. Use it for decisions that must be the
    same everywhere (a NaN seen on one rank stops all), or the others wait forever in
    the next collective.
    """
    return _all_reduce_flag(flag, "MAX")


def agree_all(flag: bool) -> bool:
    """``True`` on every rank only if ``flag`` is ``True`` on all ranks (a MIN all-reduce)."""
    return _all_reduce_flag(flag, "MIN")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (any picklable object).

    Other ranks may pass ``None``. The object is pickled to a byte tensor and sent with
    ``idist.broadcast(..., safe_mode=True)``, which first shares the size
    (``idist.broadcast`` itself takes only tensors, numbers, strings and paths). Only
    the processes of this job unpickle what ``src`` sent.

    Args:
        obj: The object on rank ``src``; ignored elsewhere.
        src: Global rank that holds the object.
    """
    size = idist.get_world_size()
    if not is_count(src) or not 0 <= src < size:
        raise ValueError(f"Argument src must be a rank in 0..{size - 1}, got {src!r}.")
    if size == 1:
        return obj
    payload = None
    if idist.get_rank() == src:
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
    received = idist.broadcast(payload, src=int(src), safe_mode=True)
    return pickle.loads(received.cpu().numpy().tobytes())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (any picklable object).

    Every rank must call it at the same point. ``idist.all_gather`` (torch's
    ``all_gather_object`` for objects that are not tensors, numbers or strings: the
    object is wrapped in a tuple so that numbers and strings take that path too); only
    the processes of this job unpickle what the others sent.

    Args:
        obj: This rank's object.

    Returns:
        ``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` on a single process.
    """
    if idist.get_world_size() == 1:
        return [obj]
    return [item[0] for item in idist.all_gather((obj,))]


def with_rank_states(state: dict) -> dict:
    """``state`` plus ``"ranks"``: every rank's ``state``, under a process group.

    For checkpointable objects whose state differs by rank (RNG streams, per-rank
    sums) while only rank 0 writes the checkpoint. A collective: every rank must call it
    at the same point. On a single process ``state`` is returned unchanged.
    """
    if idist.get_world_size() > 1:
        state = {**state, "ranks": all_gather_object(state)}
    return state


def own_rank_state(state: Any) -> Any:
    """This rank's entry of :func:`with_rank_states`'s ``"ranks"`` when the world size is
    the one saved; otherwise ``state`` itself (rank 0's, without ``"ranks"``)."""
    ranks = state.get("ranks") if isinstance(state, dict) else None
    size = idist.get_world_size()
    if isinstance(ranks, (list, tuple)) and len(ranks) == size and size > 1:
        return ranks[idist.get_rank()]
    if isinstance(state, dict) and "ranks" in state:
        state = {k: v for k, v in state.items() if k != "ranks"}
    return state
