"""Global RNG states as tensors and lists, so ``weights_only`` loading reads them."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ignitrain.distributed import own_rank_state, with_rank_states
from ignitrain.handlers.checkpoint.format import CheckpointError

__all__ = [
    "RNGState",
    "capture_rng_state",
    "engine_state_from_safe",
    "engine_state_to_safe",
    "restore_rng_state",
    "rng_problems",
]


def _python_to_safe(state: tuple) -> list:
    """``random.getstate()`` as ``[version, int64 tensor of the 625 words, gauss]``."""
    # A tensor, not a list of 625 ints (issue 16): torch.save's pickler calls its
    # Python-level persistent_id once per object, and the list was 44% of the calls
    # for a small model's checkpoint. The words are < 2**32: exact in int64.
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def _python_from_safe(state: list) -> tuple:
    """What ``random.setstate`` takes, from :func:`_python_to_safe`'s output (or the
    list of ints that earlier files hold)."""
    version, internal, gauss = state
    words = internal.tolist() if isinstance(internal, torch.Tensor) else internal
    return (int(version), tuple(int(x) for x in words), gauss)


def _numpy_to_safe(state: tuple) -> dict:
    """numpy's legacy RNG state with its key as a tensor (no ndarray)."""
    name, keys, pos, has_gauss, cached = state[:5]
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_from_safe(state: Mapping[str, Any]) -> tuple:
    """What ``np.random.set_state`` takes, from :func:`_numpy_to_safe`'s output."""
    keys = np.asarray(state["key"].numpy(), dtype=np.uint32)
    return (
        state["bit_generator"],
        keys,
        int(state["pos"]),
        int(state["has_gauss"]),
        float(state["cached_gaussian"]),
    )


def engine_state_to_safe(state: Mapping[str, Any]) -> dict:
    """An Ignite engine's ``state_dict`` with ``DeterministicEngine``'s
    ``[python, torch, numpy]`` RNG states as ``{"python": ..., "torch": ..., "numpy": ...}``
    of tensors and lists (numpy's is an ndarray, which weights_only loading refuses)."""
    state, rng = dict(state), state.get("rng_states")
    if isinstance(rng, (list, tuple)) and len(rng) == 3:
        state["rng_states"] = {
            "python": _python_to_safe(rng[0]),
            "torch": rng[1].cpu(),
            "numpy": _numpy_to_safe(rng[2]),
        }
    return state


def engine_state_from_safe(state: Mapping[str, Any]) -> dict:
    """What ``Engine.load_state_dict`` takes, from :func:`engine_state_to_safe`'s output."""
    state, rng = dict(state), state.get("rng_states")
    if isinstance(rng, Mapping) and {"python", "torch", "numpy"} <= set(rng):
        state["rng_states"] = [
            _python_from_safe(rng["python"]),
            rng["torch"],
            _numpy_from_safe(rng["numpy"]),
        ]
    return state


def capture_rng_state() -> dict:
    """The global RNG states of Python ``random``, numpy, torch CPU and CUDA.

    Returns:
        ``{"python": [...], "numpy": {...}, "torch": tensor, "cuda": [tensor, ...]}``,
        only tensors and plain lists/ints/floats/strings (``"cuda"`` only when CUDA is
        initialised), so ``torch.load(weights_only=True)`` reads it.
    """
    state = {
        "python": _python_to_safe(random.getstate()),
        "numpy": _numpy_to_safe(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    # Only when CUDA is already in use: asking earlier would initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def rng_problems(state: Any) -> list[str]:
    """What is wrong with an RNG state read back (empty: it restores)."""
    if not isinstance(state, Mapping):
        return [f"RNG state must be a dict, found {type(state).__name__}"]
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        return [f"RNG state lacks {', '.join(missing)}"]
    problems = []
    py = state["python"]
    words = py[1] if isinstance(py, (list, tuple)) and len(py) == 3 else None
    if not isinstance(words, (list, tuple, torch.Tensor)):
        problems.append("RNG state 'python' is not [version, int64 tensor or [ints], gauss]")
    npst = state["numpy"]
    if not (isinstance(npst, Mapping) and isinstance(npst.get("key"), torch.Tensor)):
        problems.append("RNG state 'numpy' is not {'key': tensor, ...}")
    if not (isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8):
        problems.append("RNG state 'torch' is not a uint8 tensor")
    return problems


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng_state`'s output.

    CUDA states are restored when CUDA is available (as many devices as both have); a
    checkpoint written on a GPU machine restores its CPU RNGs on a CPU-only one.

    Raises:
        CheckpointError: ``state`` is not such a dict.
    """
    problems = rng_problems(state)
    if problems:
        raise CheckpointError("; ".join(problems))
    random.setstate(_python_from_safe(state["python"]))
    np.random.set_state(_numpy_from_safe(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for device in range(n):
            torch.cuda.set_rng_state(cuda[device].cpu(), device)


class RNGState:
    """The global RNG states as a checkpointable object.

    Put one in the objects to save (``objects["rng"] = RNGState()``): the states are
    captured when the checkpoint is written and restored when it is loaded.

    Under a process group every rank draws its own streams (``seed + rank``, its own
    dropout masks), so :meth:`state_dict` gathers all ranks' states into ``"ranks"``
    (a collective: every rank must save at the same point, as the checkpoint handlers
    do) and each rank restores its own when the world size is unchanged. With another
    world size every rank restores rank 0's, the top-level one.
    """

    def state_dict(self) -> dict:
        """:func:`capture_rng_state` now, plus every rank's under a process group."""
        return with_rank_states(capture_rng_state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """:func:`restore_rng_state` of this rank's state (rank 0's on another world size).

        Raises:
            CheckpointError: ``state`` (or this rank's entry) is not such a dict.
        """
        restore_rng_state(own_rank_state(state))
