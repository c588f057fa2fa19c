"""``evaluation.json``: the test metrics of a run, next to its history.

``ignitrain train`` evaluates the chosen checkpoint on the job's test split at the
end and ``ignitrain evaluate RUN`` (on a ``test`` split) records its result here, so
the report shows test figures beside the validation curves. One file, rewritten
atomically: the newest evaluation of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignitrain._files import write_atomic

__all__ = ["FILENAME", "write_evaluation", "read_evaluation"]

FILENAME = "evaluation.json"


def write_evaluation(run_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write ``result`` (``checkpoint``, ``which``, ``data``, ``metrics``...) atomically.

    Raises:
        TypeError: ``result`` is not a mapping with a ``metrics`` mapping.
    """
    if not isinstance(result, Mapping) or not isinstance(result.get("metrics"), Mapping):
        raise TypeError(
            f"Argument result={result!r} is not allowed: expected a mapping with 'metrics'"
        )
    return write_atomic(Path(run_dir) / FILENAME, json.dumps(dict(result), indent=2, default=float))


def read_evaluation(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded evaluation of a run, or ``None`` (no file, or not readable JSON)."""
    path = Path(run_dir) / FILENAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("metrics"), dict) else None
