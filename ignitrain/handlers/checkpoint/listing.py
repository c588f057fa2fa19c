"""Reading a directory of checkpoints: its files, their marks, the ``latest`` one.

The reading half of :class:`~ignitrain.handlers.checkpoint.CheckpointStore`, usable
alone (``CheckpointDir(path).latest_path()``) where nothing is written.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ignitrain.handlers.checkpoint.format import KINDS, CheckpointError, as_payload
from ignitrain.handlers.checkpoint.loading import safe_load

__all__ = ["CheckpointDir", "Entry", "as_int"]


@dataclass(frozen=True)
class Entry:
    """What is known of one checkpoint file (the marks its save wrote into it)."""

    path: Path
    kind: str
    score: float | None
    iteration: int
    epoch: int
    mtime_ns: int = 0
    resumable: bool = True


def as_int(value: Any) -> int:
    """``int(value)``, or ``-1`` when it is none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class CheckpointDir:
    """The checkpoint files ``{dirname}/{prefix}_{kind}_{tag}.pt`` and their pointer.

    Args:
        dirname: The directory.
        prefix: File name prefix.
    """

    def __init__(self, dirname: str | os.PathLike, *, prefix: str = "checkpoint"):
        self.dirname = Path(dirname)
        self.prefix = prefix
        self._meta: dict[tuple[str, int, int], Entry | None] = {}

    @property
    def pointer_path(self) -> Path:
        """The ``latest`` pointer file: ``{dirname}/{prefix}_latest.json``."""
        return self.dirname / f"{self.prefix}_latest.json"

    def wait(self) -> None:
        """Nothing is written here (a store waits for its commits)."""

    def files(self) -> list[tuple[Path, str]]:
        """``(path, kind)`` of the checkpoint files, symlinks out of the directory skipped."""
        if not self.dirname.is_dir():
            return []
        out = []
        for path in self.dirname.glob(f"{self.prefix}_*.pt"):
            kind = path.name[len(self.prefix) + 1 :].split("_", 1)[0]
            if kind in KINDS and self._inside(path):
                out.append((path, kind))
        return out

    def _inside(self, path: Path) -> bool:
        """``False``, with a warning, for a symlink pointing out of the directory."""
        if path.is_symlink() and self.dirname.resolve() not in path.resolve().parents:
            warnings.warn(
                f"Skipping checkpoint {path}: a symlink pointing out of {self.dirname} "
                f"(to {os.path.realpath(path)})",
                stacklevel=4,
            )
            return False
        return True

    def remember(self, entry: Entry) -> None:
        """Record the marks of a file just written (no need to read it back)."""
        st = entry.path.stat()
        self._meta[(entry.path.name, st.st_mtime_ns, st.st_size)] = replace(
            entry, mtime_ns=st.st_mtime_ns
        )

    def entry_of(self, path: Path, kind: str | None = None) -> Entry | None:
        """Marks of a file, read once per version (mmap: only the small pickle is read)."""
        try:
            st = path.stat()
        except OSError:
            return None
        key = (path.name, st.st_mtime_ns, st.st_size)
        if key not in self._meta:
            try:
                obj = as_payload(
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True), str(path)
                )
                info = obj.get("checkpoint", {})
                self._meta[key] = Entry(
                    path,
                    kind or info.get("kind", "periodic"),
                    info.get("score"),
                    as_int(obj.get("iteration")),
                    as_int(obj.get("epoch")),
                    st.st_mtime_ns,
                    # a best file linked to a periodic one carries the periodic's marks
                    bool(info.get("resumable", True)),
                )
            except Exception:  # unreadable: never ranked, never evicted (kept as evidence)
                self._meta[key] = None
        return self._meta[key]

    def entries(self) -> list[Entry]:
        """The readable checkpoint files' marks."""
        found = (self.entry_of(path, kind) for path, kind in self.files())
        return [e for e in found if e is not None]

    def checkpoints(self, kind: str | None = None) -> list[Path]:
        """Readable checkpoint files (of ``kind``), newest first."""
        self.wait()
        found = [e for e in self.entries() if kind is None or e.kind == kind]
        found.sort(key=lambda e: (e.mtime_ns, e.iteration), reverse=True)
        return [e.path for e in found]

    def best_scores(self) -> list[float]:
        """Scores of the kept best checkpoints, best first."""
        self.wait()
        scores = [e.score for e in self.entries() if e.kind == "best" and e.score is not None]
        return sorted(scores, reverse=True)

    def _read_pointer(self) -> Path | None:
        try:
            with open(self.pointer_path, encoding="utf-8") as f:
                name = json.load(f)["file"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(
                f"Checkpoint pointer {self.pointer_path} is unreadable ({e}); "
                "looking for the newest valid checkpoint",
                stacklevel=3,
            )
            return None
        if not isinstance(name, str) or "/" in name or "\\" in name:
            return None
        path = self.dirname / name
        return path if self._inside(path) else None

    def load_latest(self, validate: bool = True) -> tuple[Path, dict | None] | None:
        """The newest valid checkpoint and its payload (``None`` payload without validation).

        Reads the pointer; if the file it names is missing or corrupt, warns and falls
        back to the other checkpoints, highest iteration first (newest file among
        equals), skipping those that fail :func:`safe_load`.

        Returns:
            ``(path, payload)``, or ``None`` when no valid checkpoint exists.
        """
        self.wait()
        pointed = self._read_pointer()
        problem = None
        if pointed is not None:
            try:
                return pointed, _validated(pointed, validate)
            except CheckpointError as e:
                problem = f"Latest checkpoint is unusable: {e}."
        for path, kind in self.files():
            if path != pointed and self.entry_of(path, kind) is None:
                warnings.warn(f"Skipping unreadable checkpoint {path}", stacklevel=2)
        candidates = [e for e in self.entries() if e.path != pointed and e.resumable]
        candidates.sort(key=lambda e: (e.iteration, e.mtime_ns), reverse=True)
        for entry in candidates:
            try:
                payload = _validated(entry.path, validate)
            except CheckpointError as e:
                warnings.warn(f"Skipping unusable checkpoint: {e}", stacklevel=2)
                continue
            if problem:
                warnings.warn(f"{problem} Using the previous valid one: {entry.path}", stacklevel=2)
            return entry.path, payload
        if problem:
            warnings.warn(f"{problem} No other valid checkpoint found.", stacklevel=2)
        return None

    def latest_path(self, validate: bool = True) -> Path | None:
        """Path of the newest valid checkpoint (see :meth:`load_latest`), or ``None``."""
        found = self.load_latest(validate)
        return None if found is None else found[0]


def _validated(path: Path, validate: bool) -> dict | None:
    if validate:
        return safe_load(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is missing or empty")
    return None
