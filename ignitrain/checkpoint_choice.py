"""Which checkpoint of a run to use: ``"best"``, ``"last"`` or a file.

``ignitrain evaluate`` and :func:`ignitrain.rebuild_model` take a run directory and
need one file from it. The best checkpoints are named
``checkpoint_best_{metric}={value}_iter{N}.pt``: the metric and its value are read
back from the name (the file is a copy of the periodic checkpoint it was, so its
own record says ``periodic``), and "better" follows the metric's mode, the one rule
in :mod:`ignitrain.handlers.modes`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ignitrain.handlers.checkpoint import CheckpointDir, CheckpointError, latest_in
from ignitrain.handlers.modes import infer_mode

__all__ = ["CHOICES", "ChosenCheckpoint", "choose_checkpoint"]

CHOICES = ("best", "last")
"""The names a run's checkpoint can be chosen by (else a file path)."""

_BEST = re.compile(r"^(?P<prefix>.+?)_best_(?P<metric>.+)=(?P<value>[^_=]+)_iter(?P<iter>\d+)\.pt$")


@dataclass(frozen=True)
class ChosenCheckpoint:
    """A checkpoint file and why it was chosen.

    Attributes:
        path: The file.
        which: ``"best"``, ``"last"`` (the newest valid file) or ``"path"`` (given).
        metric: For ``"best"``: the metric that ranked it; else ``None``.
        value: For ``"best"``: its value.
        note: Said to the user when the choice fell back (e.g. no best file).
    """

    path: Path
    which: str
    metric: str | None = None
    value: float | None = None
    note: str = ""

    def describe(self) -> str:
        """``"best (val accuracy=0.99)"``, ``"last"`` or ``"given file"``."""
        if self.which == "best":
            return f"best ({self.metric}={self.value:.6g})"
        return {"last": "last (the newest valid checkpoint)", "path": "the given file"}[self.which]


def _checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints" if (run / "checkpoints").is_dir() else run


def _best(directory: Path, mode: str | None) -> ChosenCheckpoint | None:
    ranked = []
    for path in CheckpointDir(directory).checkpoints("best"):  # readable files only
        match = _BEST.match(path.name)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        ranked.append((match["metric"], value, int(match["iter"]), path))
    if not ranked:
        return None
    metric = ranked[0][0]
    sign = -1.0 if (mode or infer_mode(metric)) == "min" else 1.0
    # the best value; among equals the later iteration (trained longer for the same score)
    metric, value, _, path = max(ranked, key=lambda r: (sign * r[1], r[2]))
    return ChosenCheckpoint(path, "best", metric, value)


def choose_checkpoint(
    run: str | os.PathLike, which: str = "best", *, mode: str | None = None
) -> ChosenCheckpoint:
    """Pick a checkpoint of a run.

    Args:
        run: A run directory (its ``checkpoints/``), a checkpoints directory, or a file.
        which: ``"best"`` (the best kept by ``best_metric``; the newest file when the run
            kept none, with a note), ``"last"`` (the newest valid file) or a file path.
        mode: ``"min"``/``"max"`` for the best metric (default: inferred from its name).

    Returns:
        A :class:`ChosenCheckpoint`.

    Raises:
        FileNotFoundError: no such file, or no valid checkpoint in the directory.
        ValueError: ``which`` is not ``"best"``, ``"last"`` or a path.
    """
    if not isinstance(which, (str, os.PathLike)) or not str(which):
        raise ValueError(
            f"Argument which={which!r} is not allowed: expected 'best', 'last' or a path"
        )
    run = Path(run)
    if run.is_file():
        return ChosenCheckpoint(run, "path")
    if str(which) not in CHOICES:
        path = Path(which)
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} does not exist (expected 'best', 'last' or a file)"
            )
        return ChosenCheckpoint(path, "path")
    if not run.is_dir():
        raise FileNotFoundError(f"checkpoint or run directory {str(run)!r} does not exist")
    directory = _checkpoint_dir(run)
    note = ""
    if which == "best":
        best = _best(directory, mode)
        if best is not None:
            return best
        note = "the run kept no best checkpoint (no validation data?): using the newest one"
    try:
        path = latest_in(directory)
    except CheckpointError as exc:
        raise FileNotFoundError(str(exc)) from None
    return ChosenCheckpoint(path, "last", note=note)
