"""Loading a payload into objects, all or nothing: everything checked first."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ignitrain.describe import unwrap
from ignitrain.handlers.checkpoint.format import CheckpointError, as_payload, saved_states
from ignitrain.handlers.checkpoint.payload import check_objects
from ignitrain.handlers.checkpoint.rng import RNGState, engine_state_from_safe, rng_problems

__all__ = ["load_objects"]


_PREFIXES = ("module.", "_orig_mod.")
# Optimizer state entries shaped like their parameter (SGD, Adam(W), RMSprop, Adagrad).
_PARAM_SHAPED = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> OrderedDict:
    # torch's helper strips in place, the module-path keys of _metadata too ("module" ->
    # "", "module.fc" -> "fc"): on a copy, so the checkpoint's state stays as it was
    out = OrderedDict(state)
    if hasattr(state, "_metadata"):
        out._metadata = OrderedDict(state._metadata)  # type: ignore[attr-defined]
    consume_prefix_in_state_dict_if_present(out, prefix)
    return out


def _match_prefixes(stored: Mapping[str, Any], expected: set[str]) -> Mapping[str, Any]:
    """``stored`` with wrapper prefixes removed when that makes it fit ``expected`` better."""
    best, best_overlap = stored, len(expected & set(stored))
    current = stored
    while current:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = _strip_prefix(current, prefix)
        overlap = len(expected & set(current))
        if overlap > best_overlap:
            best, best_overlap = current, overlap
    return best


def _module_problems(name: str, module: nn.Module, stored: Any, strict: bool):
    target = unwrap(module)
    if not isinstance(stored, Mapping):
        return None, [f"{name!r}: expected a model state_dict, found {type(stored).__name__}"]
    own = target.state_dict()
    found = _match_prefixes(stored, set(own))
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    misshaped = []
    for key in own:
        mine, theirs = own[key], found.get(key)
        if isinstance(mine, nn.parameter.UninitializedParameter):
            continue
        if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
            if mine.shape != theirs.shape:
                expected, found_shape = tuple(mine.shape), tuple(theirs.shape)
                misshaped.append(f"{key} (model expects {expected}, checkpoint has {found_shape})")
    problems = []
    if strict and missing:
        problems.append(
            f"{name!r}: missing keys (in the model, not in the checkpoint): {_listing(missing)}"
        )
    if strict and unexpected:
        problems.append(
            f"{name!r}: unexpected keys (in the checkpoint, not in the model): "
            f"{_listing(unexpected)}"
        )
    if misshaped:
        problems.append(f"{name!r}: mis-shaped keys: {_listing(misshaped)}")
    return found, problems


def _optimizer_problems(name: str, optimizer: torch.optim.Optimizer, stored: Any) -> list[str]:
    if not (
        isinstance(stored, Mapping)
        and isinstance(stored.get("param_groups"), list)
        and isinstance(stored.get("state"), Mapping)
    ):
        return [f"{name!r}: expected an optimizer state_dict with 'state' and 'param_groups'"]
    groups, saved_groups = optimizer.param_groups, stored["param_groups"]
    if len(groups) != len(saved_groups):
        return [
            f"{name!r}: the checkpoint has {len(saved_groups)} parameter group(s), the "
            f"optimizer has {len(groups)}"
        ]
    problems = _optimizer_class_problems(name, optimizer, saved_groups)
    if problems:
        return problems
    params_by_id = {}
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        ids = saved.get("params", []) if isinstance(saved, Mapping) else []
        if len(ids) != len(group["params"]):
            problems.append(
                f"{name!r}: parameter group {i} has {len(ids)} parameters in the checkpoint, "
                f"{len(group['params'])} in the optimizer"
            )
            continue
        params_by_id.update(zip(ids, group["params"]))
    for pid, entry in stored["state"].items():
        param = params_by_id.get(pid)
        if param is None or not isinstance(entry, Mapping):
            continue
        for key in _PARAM_SHAPED:
            value = entry.get(key)
            if isinstance(value, torch.Tensor) and value.shape != param.shape:
                problems.append(
                    f"{name!r}: state {key!r} of parameter {pid} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(param.shape)}"
                )
    return problems


_GROUP_BOOKKEEPING = {"params", "param_names", "initial_lr"}


def _optimizer_class_problems(name: str, optimizer: Any, saved_groups: list) -> list[str]:
    """Refuse a state written by another optimizer class (e.g. Adam's into SGD).

    torch's ``load_state_dict`` replaces each param group's hyper-parameters by the
    saved ones without checking them, so Adam's state loads into SGD and the first
    ``step()`` fails (``KeyError: 'momentum'``), after the other objects were loaded.
    A key only one side has is tolerated (a newer torch adds options with defaults);
    keys missing on both sides mean another class.
    """
    if not saved_groups or not isinstance(saved_groups[0], Mapping):
        return [f"{name!r}: the checkpoint's parameter groups are not dicts"]
    own = set(optimizer.param_groups[0]) - _GROUP_BOOKKEEPING
    saved = set(saved_groups[0]) - _GROUP_BOOKKEEPING
    if own - saved and saved - own:
        return [
            f"{name!r}: the checkpoint holds the state of another optimizer class "
            f"(its hyper-parameters {sorted(saved - own)} are unknown to "
            f"{type(optimizer).__name__}, which needs {sorted(own - saved)})"
        ]
    return []


def _trial_load_problems(name: str, optimizer: torch.optim.Optimizer, stored: Any) -> list[str]:
    """Load ``stored`` into a throwaway copy of ``optimizer`` first, to see it fail safely.

    ``Optimizer.load_state_dict`` can raise half-way (e.g. ``KeyError: 'step'``);
    trying on empty tensors shaped like the parameters keeps the real one untouched.
    """
    try:
        groups = [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [torch.empty_like(p, device="meta") for p in g["params"]],
            }
            for g in optimizer.param_groups
        ]
        trial = type(optimizer)(groups)
    except Exception:  # an optimizer we cannot rebuild: its own load must do
        return []
    try:
        trial.load_state_dict(copy.copy(stored))
    except Exception as e:
        return [f"{name!r}: the optimizer refuses the state ({type(e).__name__}: {e})"]
    return []


def _engine_problems(name: str, engine: Engine, stored: Any) -> list[str]:
    if not isinstance(stored, Mapping):
        return [f"{name!r}: expected an engine state_dict, found {type(stored).__name__}"]
    need = [("epoch_length",), ("iteration", "epoch"), ("max_epochs", "max_iters")]
    need += [(k,) for k in engine.state_dict_user_keys]
    lacking = ["/".join(keys) for keys in need if not any(k in stored for k in keys)]
    return [f"{name!r}: engine state lacks {', '.join(lacking)}"] if lacking else []


def _snapshot(obj: Any) -> Any:
    try:
        return copy.deepcopy(obj.state_dict())
    except Exception:  # rollback is best effort for objects we do not know
        return None


def load_objects(
    objects: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    strict: bool = True,
    source: str = "<payload>",
    allow_missing: bool = False,
) -> list[str]:
    """Load ``payload[name]`` into each object, after checking all of them.

    Everything is validated before anything is loaded: names present, model keys and
    shapes (``module.``/``_orig_mod.`` prefixes of DDP, DataParallel and
    ``torch.compile`` are matched both ways), optimizer groups, parameter counts and
    state shapes, engine keys, RNG state. When a check fails nothing is loaded.

    Args:
        objects: Name -> object with ``load_state_dict``.
        payload: A checkpoint dict (from :func:`safe_load` or :func:`build_payload`).
        strict: ``False`` skips names the checkpoint lacks (with a warning) and lets
            models load with missing/unexpected keys; shapes must still match.
        source: How to name the checkpoint in errors (its path).
        allow_missing: Names the checkpoint lacks are left as they are (and returned)
            instead of being an error, while models stay strict about their keys.

    Returns:
        The names of ``objects`` the checkpoint did not hold (left unchanged).

    Raises:
        TypeError: ``objects`` is not a dict of loadable objects.
        CheckpointError: Listing every problem found, naming ``source``.
    """
    check_objects(objects, need="load_state_dict")
    payload = as_payload(payload, source)
    saved = saved_states(payload)
    problems: list[str] = []
    plan: list[tuple[str, Any, Any]] = []
    absent: list[str] = []
    for name, obj in objects.items():
        if name not in saved:
            held = ", ".join(sorted(saved)) or "nothing"
            msg = f"no state named {name!r} (the checkpoint holds: {held})"
            if strict and not allow_missing:
                problems.append(msg)
            elif not allow_missing:
                warnings.warn(f"Checkpoint {source}: {msg}; {name!r} left as it is", stacklevel=2)
            absent.append(name)
            continue
        stored = saved[name]
        if isinstance(obj, nn.Module):
            stored, module_problems = _module_problems(name, obj, stored, strict)
            problems += module_problems
        elif isinstance(obj, torch.optim.Optimizer):
            found = _optimizer_problems(name, obj, stored)
            problems += found or _trial_load_problems(name, obj, stored)
        elif isinstance(obj, Engine):
            problems += _engine_problems(name, obj, stored)
            stored = engine_state_from_safe(stored) if isinstance(stored, Mapping) else stored
        elif isinstance(obj, RNGState):
            problems += [f"{name!r}: {p}" for p in rng_problems(stored)]
        plan.append((name, obj, stored))
    if problems:
        raise CheckpointError(
            f"Checkpoint {source} does not fit the objects to load (nothing was loaded):\n  - "
            + "\n  - ".join(problems)
        )
    _apply(plan, strict, source)
    return absent


def _apply(plan: list[tuple[str, Any, Any]], strict: bool, source: str) -> None:
    # Objects we cannot validate go first, each with a snapshot to roll back to; models
    # and optimizers were fully checked, so they go last and do not fail.
    def rank(item: tuple[str, Any, Any]) -> int:
        obj = item[1]
        return (
            2 if isinstance(obj, nn.Module) else 1 if isinstance(obj, torch.optim.Optimizer) else 0
        )

    done: list[tuple[Any, Any]] = []
    for name, obj, stored in sorted(plan, key=rank):
        snapshot = _snapshot(obj) if rank((name, obj, stored)) == 0 else None
        try:
            if isinstance(obj, nn.Module):
                unwrap(obj).load_state_dict(stored, strict=strict)
            else:
                obj.load_state_dict(stored)
        except Exception as e:
            for prev, snap in reversed(done):
                if snap is not None:
                    with contextlib.suppress(Exception):
                        prev.load_state_dict(snap)
            raise CheckpointError(
                f"Checkpoint {source}: loading {name!r} failed ({type(e).__name__}: {e}); "
                "objects loaded before it were restored"
            ) from e
        done.append((obj, snapshot))
