"""What happened to a run, in words: why it stopped, how long it took, every resume.

The report reads these from what the run leaves behind, never from a record of its
own making: ``history.json`` (``meta``: the stop reason and where, the wall time the
console handler adds), ``config.yaml`` (the patience, the targets, the limits that
explain a stop), ``evaluation.json`` (test metrics), the run record ``run.json`` when
the run has one (its resumes: when, from which file, world size before and after),
and the world size each checkpoint was written with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ignitrain.errors import is_number
from ignitrain.handlers.modes import infer_mode

# the one reader of run.json lives with its writer; kept importable from here
from ignitrain.run_record import read_run_record

__all__ = [
    "best_of",
    "checkpoint_world_sizes",
    "read_run_record",
    "resume_rows",
    "stop_detail",
    "wall_time_text",
]


def best_of(history: Any, name: str, mode: str | None = None) -> tuple[float, int] | None:
    """``(best value, its step)`` of the series ``name``, NaNs skipped; the first step
    reaching the best wins. ``None`` when there is no history, no series or no number.

    Args:
        history: A :class:`~ignitrain.History` (or ``None``).
        name: The series, e.g. ``"val/accuracy"``.
        mode: ``"min"`` or ``"max"``; ``None`` infers it from ``name``.
    """
    if history is None or name not in history:
        return None
    pairs = [(v, s) for v, s in zip(history[name], history.steps(name)) if not math.isnan(v)]
    if not pairs:
        return None
    pick = min if (mode or infer_mode(name)) == "min" else max
    return pick(pairs, key=lambda vs: vs[0])


def _ranking_name(train: Mapping[str, Any], history: Any) -> str | None:
    metric = train.get("best_metric")
    if metric:
        return metric if str(metric).startswith("train/") else f"val/{metric}"
    names = [n for n in (history.names() if history is not None else []) if n.startswith("val/")]
    return names[0] if names else None


def stop_detail(reason: str | None, train: Mapping[str, Any], history: Any) -> str:
    """One sentence that explains ``reason`` with the run's own numbers (``""`` if none)."""
    train = train or {}
    if reason == "early_stopping":
        name = _ranking_name(train, history)
        best = best_of(history, name) if name else None
        patience = train.get("early_stopping_patience")
        if best is not None:
            return (
                f"{name} did not improve on {best[0]:.4g} (epoch {best[1]}) "
                f"for {patience} validations"
            )
        return f"no improvement for {patience} validations"
    if reason == "target_reached":
        targets = ", ".join(f"{k} {v:g}" for k, v in (train.get("stop_when") or {}).items())
        return f"reached stop_when: {targets}" if targets else "a stop_when target was reached"
    if reason == "time_limit":
        return f"time_limit of {train.get('time_limit')} s reached"
    if reason == "max_steps":
        return f"max_steps={train.get('max_steps')} optimizer steps done"
    if reason == "non_finite_loss":
        return "the loss was NaN or infinite (stop_on_nan): the update was not applied"
    return ""  # "completed" (every planned epoch ran) says it all


def wall_time_text(seconds: Any) -> str | None:
    """``"1 min 23 s"`` for a number of seconds, ``None`` when unknown."""
    if not is_number(seconds) or seconds < 0:
        return None
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


_RESUME_KEYS = ("resumes", "resumed", "sessions", "starts", "events")


def resume_rows(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The resumes a run record lists (entries of its first list of mappings among
    ``resumes``/``starts``/...), each a flat dict of plain values, in order.

    An entry of kind ``"start"`` (the run's first start, which ``run.json``'s
    ``starts`` lists too) is not a resume: a run never resumed has none.
    """
    if not record:
        return []
    for key in _RESUME_KEYS:
        entries = record.get(key)
        if isinstance(entries, list) and entries and all(isinstance(e, Mapping) for e in entries):
            return [
                {str(k): _plain(v) for k, v in e.items()}
                for e in entries
                if e.get("kind") != "start"
            ]
    return []


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, default=str)


def checkpoint_world_sizes(directory: Path) -> list[tuple[str, int, int | None]]:
    """``(file, iteration, world_size)`` of each readable checkpoint, by iteration."""
    found = []
    for path in sorted(Path(directory).glob("*.pt")) if Path(directory).is_dir() else []:
        if path.name.startswith("."):
            continue
        try:  # mmap: only the small pickle is read, not the tensors
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # a damaged file is listed by the checkpoint table anyway
            continue
        if isinstance(payload, Mapping):
            iteration = int(payload.get("iteration") or 0)
            found.append((path.name, iteration, payload.get("world_size")))
    return sorted(found, key=lambda item: (item[1], item[0]))
