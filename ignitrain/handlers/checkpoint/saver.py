"""Ignite's save handler for ignitrain files, and what Ignite's ``Checkpoint`` saves."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler

from ignitrain.handlers.checkpoint.payload import payload_from_states, safe_state
from ignitrain.handlers.checkpoint.store import CheckpointStore

__all__ = ["DurableSaver", "SavedState", "nan_safe_score", "parse_saved"]


class SavedState:
    """What Ignite's ``Checkpoint`` calls ``state_dict()`` on: the object's safe state.

    Models unwrapped (DDP, DataParallel, ``torch.compile``), engines' numpy RNG states as
    tensors, everything checked to load with ``weights_only=True``.

    Args:
        name: The object's name in the checkpoint.
        obj: The object.
        skip: Returns ``True`` when the state is not needed (the file is linked to one
            already written at this moment): nothing is computed then.
    """

    def __init__(self, name: str, obj: Any, skip: Callable[[], bool] | None = None):
        self.name, self.obj, self.skip = name, obj, skip

    def state_dict(self) -> Any:
        """The object's weights_only-loadable state (``{}`` when skipped)."""
        if self.skip is not None and self.skip():
            return {}
        return safe_state(self.obj, self.name)


class DurableSaver(BaseSaveHandler):
    """Ignite save handler writing through a :class:`CheckpointStore`.

    Keeps the store's guarantees (temp file, fsync, rename, directory fsync, the
    background commit, a ``latest`` pointer naming only complete files) and fixes one
    defect of Ignite's ``Checkpoint``: it calls ``remove(old)`` *before* writing the new
    file, so with ``DiskSaver`` and ``n_saved=1`` a failed write (disk full) leaves no
    checkpoint at all. Here ``remove`` only records the name; the file goes once the next
    one is durable, and a failed write keeps it.

    Args:
        store: Where files go (and which rank writes).
        kind: One of :data:`KINDS`, recorded in the file.
        names: The saved objects' names (Ignite unwraps a single object's state).
        extra_fn: Returns the metadata merged into each file.
        link_fn: Returns a file already holding this very state, to link instead of
            serialising again (a periodic and a best or last file of one moment).
        resumable_fn: Whether the file may become the ``latest`` resume point.
    """

    def __init__(
        self,
        store: CheckpointStore,
        kind: str,
        names: list[str],
        *,
        extra_fn: Callable[[], Mapping[str, Any]] | None = None,
        link_fn: Callable[[], Path | None] | None = None,
        resumable_fn: Callable[[], bool] | None = None,
    ):
        self.store, self.kind, self.names = store, kind, list(names)
        self.extra_fn, self.link_fn, self.resumable_fn = extra_fn, link_fn, resumable_fn
        self.last_path: Path | None = None
        self._evicted: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        states = {self.names[0]: checkpoint} if len(self.names) == 1 else dict(checkpoint)
        evicted, self._evicted = self._evicted, []
        score = (metadata or {}).get("priority") if self.kind == "best" else None
        source = self.link_fn() if self.link_fn is not None else None
        if source is not None:
            self.last_path = self.store.link(
                source, filename, self.kind, score=score, remove=evicted,
                point=self.kind == "last",
            )  # fmt: skip
            return
        extra = dict(self.extra_fn()) if self.extra_fn is not None else {}
        payload = payload_from_states(states, extra)
        resumable = self.resumable_fn() if self.resumable_fn is not None else True
        self.last_path = self.store.write(
            payload, filename, self.kind, score=score, remove=evicted, resumable=resumable
        )

    def remove(self, filename: str) -> None:
        """Evict ``filename`` once the next checkpoint is durable (not now)."""
        self._evicted.append(filename)


def nan_safe_score(value_fn: Callable[[Engine], float], sign: float) -> Callable[[Engine], float]:
    """A ``score_function`` for Ignite's ``Checkpoint`` that never ranks NaN as best.

    Ignite's ``Checkpoint`` keeps a NaN score (fewer than ``n_saved`` files), then
    compares ``new > nan`` (always False): with ``n_saved=1`` a first NaN blocks every
    later best. NaN here scores ``-inf`` (and :class:`CheckpointHandler` does not even
    call the best ``Checkpoint`` on a NaN metric, nor when the weights hold NaN/Inf,
    so non-finite weights never become best).
    """

    def score(engine: Engine) -> float:
        value = float(value_fn(engine))
        return -math.inf if math.isnan(value) else sign * value

    return score


_NAME_STEP = re.compile(r"_(?:iter(\d+)|epoch(\d+))\.pt$")


def parse_saved(name: str, kind: str, prefix: str, metric_tag: str | None, sign: float):
    """Ignite's priority of an existing file, from its name (``None``: not ours).

    Args:
        name: The file name.
        kind: Its kind.
        prefix: The store's prefix.
        metric_tag: The best metric as it appears in names (``None``: no best).
        sign: ``1.0`` when larger values are better, ``-1.0`` when smaller are.
    """
    match = _NAME_STEP.search(name)
    if match is None:
        return None
    if kind != "best":
        return int(match.group(1) or match.group(2))
    head = f"{prefix}_best_{metric_tag}="
    if metric_tag is None or not name.startswith(head):
        return None
    try:
        return sign * float(name[len(head) : name.rindex("_iter")])
    except ValueError:
        return None
