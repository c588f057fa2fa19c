"""Importing an object from a ``"pkg.module.Name"`` string, with errors that say which part failed.

Used by job files (``model.class``, ``data.factory``, ``flavor``), ``TrainConfig.callbacks``
given as import paths, and model descriptions in checkpoints. A module of its own, below
:mod:`ignitrain.config` and :mod:`ignitrain.jobs`, so that checking a config never
imports the job machinery.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ignitrain.errors import JobError, suggest

__all__ = ["resolve_import"]


def _ensure_cwd_on_path() -> None:
    # `ignitrain` (the console script) does not put the working directory on sys.path
    # as `python -m` does; job files name modules relative to it (examples.models).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve_import(path: str, *, what: str = "object") -> Any:
    """Import ``"pkg.module.Name"`` (or ``"pkg.module:Name"``) and return the object.

    The working directory is put on ``sys.path`` first, so modules beside the job
    (``examples.models`` from the repository root) are found.

    Raises:
        JobError: no module or attribute of that name; the message says which part.
    """
    if not isinstance(path, str) or not path.strip():
        raise JobError(f"{what}: expected an import path like 'pkg.module.Name', got {path!r}")
    _ensure_cwd_on_path()
    path = path.strip()
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path.split("."))]
    else:
        parts = path.split(".")
        if len(parts) < 2:
            raise JobError(f"{what}: {path!r} is not an import path (expected 'pkg.module.Name')")
        # the longest importable prefix is the module; the rest are attributes
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    last_error = None
    for module_name, attrs in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and not (module_name == missing or module_name.startswith(missing + ".")):
                # the module exists but imports something missing: report that
                raise JobError(f"{what}: importing {module_name!r} failed: {exc}") from None
            last_error = exc
            continue
        except ImportError as exc:
            raise JobError(f"{what}: importing {module_name!r} failed: {exc}") from None
        return _get_attrs(module, module_name, attrs, path, what)
    hint = ""
    if path.split(".")[0] == "examples":
        hint = " (run ignitrain from the repository root so that 'examples' is importable)"
    raise JobError(f"{what}: cannot import {path!r}: {last_error}{hint}")


def _get_attrs(module: Any, module_name: str, attrs: list[str], path: str, what: str) -> Any:
    obj = module
    for i, attr in enumerate(attrs):
        if not hasattr(obj, attr):
            owner = ".".join([module_name, *attrs[:i]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise JobError(
                f"{what}: cannot import {path!r}: {owner!r} has no attribute {attr!r}."
                f"{suggest(attr, names)}"
            )
        obj = getattr(obj, attr)
    return obj
