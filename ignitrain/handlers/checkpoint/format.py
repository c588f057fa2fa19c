"""The checkpoint file's layout: format marker, object names, old and foreign files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ignitrain.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "KINDS",
    "OBJECTS_KEY",
    "RESERVED_KEYS",
    "as_payload",
    "saved_states",
]


FORMAT_KEY = "ignitrain_format"
FORMAT_VERSION = 2
#: Names of the saved objects in a version-2 file (the other top-level keys are metadata).
OBJECTS_KEY = "ignitrain_objects"
KINDS = ("periodic", "best", "last", "preempt")
#: Top-level keys no saved object or metadata may use.
RESERVED_KEYS = (FORMAT_KEY, OBJECTS_KEY, "checkpoint")


def _upgrade_v1(obj: dict, source: str) -> dict:
    """An ignitrain 0.1.0 file (objects nested under ``"state"``) in today's flat layout."""
    state = obj["state"]
    meta = {k: v for k, v in obj.items() if k not in (FORMAT_KEY, "state")}
    clash = sorted(set(state) & set(meta))
    if clash:
        raise CheckpointError(
            f"Checkpoint {source} (format 1) cannot be converted: object name(s) {clash} "
            "clash with metadata keys"
        )
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: list(state), **state, **meta}


def _from_foreign(obj: Any, source: str) -> dict:
    """A file written by Ignite's ``Checkpoint``/``ModelCheckpoint`` as a payload.

    Ignite saves ``{name: state_dict}`` (or one object's ``state_dict`` alone); every
    top-level dict value is taken as an object's state, the rest as metadata.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {source} is not a checkpoint: it holds a {type(obj).__name__}, "
            "expected a dict"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"model": obj}  # ModelCheckpoint of one model: the bare state_dict
    names = [k for k, v in obj.items() if isinstance(k, str) and isinstance(v, Mapping)]
    if not names:
        raise CheckpointError(f"Checkpoint {source} holds no state_dict of any object")
    return {FORMAT_KEY: FORMAT_VERSION, OBJECTS_KEY: names, **obj, "foreign": True}


def as_payload(obj: Any, source: str, *, foreign: bool = False) -> dict:
    """Check a loaded checkpoint and return it in the current (flat) layout.

    Version 2 is returned as is, version 1 (ignitrain 0.1.0) converted; with ``foreign``
    a file without ignitrain's marker (Ignite's own checkpoints) is accepted too.

    Raises:
        CheckpointError: ``obj`` is none of these, naming ``source``.
    """
    if isinstance(obj, dict) and FORMAT_KEY not in obj and foreign:
        return _from_foreign(obj, source)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {source} is not an ignitrain checkpoint: it holds a "
            f"{type(obj).__name__}, expected a dict with {FORMAT_KEY!r}: {FORMAT_VERSION}"
        )
    if FORMAT_KEY not in obj:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise CheckpointError(
            f"Checkpoint {source} is not an ignitrain checkpoint: no {FORMAT_KEY!r} key "
            f"(keys: {keys}). A bare state_dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True)); a file of Ignite's "
            "ModelCheckpoint with trainer.resume(path) or load_checkpoint(path, ...)."
        )
    version = obj[FORMAT_KEY]
    if version == 1 and isinstance(obj.get("state"), dict):
        return _upgrade_v1(obj, source)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {source} has format version {version!r}; this ignitrain "
            f"reads versions 1 and {FORMAT_VERSION}"
        )
    names = obj.get(OBJECTS_KEY)
    if not (isinstance(names, list) and all(isinstance(n, str) and n in obj for n in names)):
        raise CheckpointError(
            f"Checkpoint {source} has no valid {OBJECTS_KEY!r} list of its saved objects"
        )
    return obj


def saved_states(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: state_dict}`` of the objects saved in a payload (metadata left out)."""
    return {name: payload[name] for name in payload[OBJECTS_KEY]}
