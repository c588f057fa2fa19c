"""``History``: every logged value of a run, by name, and the handler that fills it.

Series names follow ``"<split>/<metric>"``:

========================  =====================  =====================================
name                      step                   when
========================  =====================  =====================================
``train/batch_loss``      iteration              every ``log_every`` iterations
``lr``                    iteration              every ``log_every`` iterations
``train/<metric>``        epoch                  each epoch (``train/loss``: epoch mean)
``val/<metric>``          epoch                  after each validation
``<set>/<metric>``        epoch                  each evaluation set (``test``, ``ema/val``)
========================  =====================  =====================================

``History`` is a plain object (``state_dict``/``load_state_dict``) so it goes into the
checkpoint and a resumed run continues it without duplicates.

On disk (``attach_history(path=output_dir / "history.json")``), two files:

``history.jsonl``
    The journal: one JSON line per logged value (``["name", step, value]``) and one
    per change of ``meta`` (``{"meta": {...}}``), appended at each epoch end and
    before each checkpoint. Writing it costs what the epoch logged, never the whole
    run, so the per-epoch cost does not grow with the run. Replaying it with
    :meth:`History.log`'s rule (a step logged again replaces the later entries) gives
    the History back.
``history.json``
    The whole History as one JSON document, for people and other tools: written at
    the end of ``run()`` and by :meth:`History.save`. A run killed before its end has
    only the journal; :meth:`History.load` reads whichever of the two is newer.

With a journal, :meth:`History.state_dict` (what a checkpoint holds) is the journal's
path, its length in bytes and records, and ``meta``: a few hundred bytes whatever the
run's length. :meth:`History.load_state_dict` replays the journal up to that length
and cuts off what a killed run appended after the checkpoint, so the resumed run
continues exactly the History the checkpoint saw.

The journal file itself (format, position, replay) is :mod:`ignitrain.handlers.journal`;
the PNG of :meth:`History.plot` is :mod:`ignitrain.handlers.history_plot`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ignitrain._files import write_atomic
from ignitrain.errors import is_number, suggest
from ignitrain.handlers.evaluation import split_of
from ignitrain.handlers.history_plot import best_point, plot_history
from ignitrain.handlers.journal import (
    JOURNAL_NAME,
    Journal,
    JournalPosition,
    newest_history_file,
    read_prefix,
    replay,
)
from ignitrain.handlers.modes import infer_mode

# infer_mode: re-exported, ``from ignitrain.handlers.history import infer_mode`` is used
__all__ = ["History", "attach_history", "JOURNAL_NAME", "infer_mode"]

Listener = Callable[[str, float, int], None]


class History:
    """Values by series name, each with the step it was logged at.

    Example:
        >>> h = History()
        >>> h.log("val/accuracy", 0.91, step=1)
        >>> h.log("val/accuracy", 0.95, step=2)
        >>> h["val/accuracy"], h.latest("val/accuracy"), h.best("val/accuracy")
        ([0.91, 0.95], 0.95, 0.95)
    """

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}
        self._steps: dict[str, list[int]] = {}
        self._listeners: list[Listener] = []
        self.meta: dict[str, Any] = {}
        self._journal: Journal | None = None
        self._rank0_journal: Path | None = None  # other ranks: the journal rank 0 writes

    # -- writing ------------------------------------------------------------------
    def log(self, name: str, value: float, step: int) -> None:
        """Append ``value`` at ``step`` to series ``name`` (replacing a same-step entry)."""
        value, step = float(value), int(step)
        self._put(name, value, step)
        if self._journal is not None:
            self._journal.add(name, step, value)
        for listener in self._listeners:
            listener(name, value, step)

    def _put(self, name: str, value: float, step: int) -> None:
        # log() without journal or listeners: also what rebuilding from a journal does
        values = self._values.setdefault(name, [])
        steps = self._steps.setdefault(name, [])
        # a resumed run may log a step again (e.g. the epoch it was killed in): keep one
        while steps and steps[-1] >= step:
            steps.pop()
            values.pop()
        values.append(value)
        steps.append(step)

    def _records(self) -> Iterator[tuple[str, int, float]]:
        # every value as a journal record, series by series
        for name, values in self._values.items():
            yield from ((name, step, value) for step, value in zip(self._steps[name], values))

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(name, value, step)`` on every future :meth:`log`."""
        self._listeners.append(listener)

    # -- reading ------------------------------------------------------------------
    def __getitem__(self, name: str) -> list[float]:
        if name not in self._values:
            raise KeyError(f"no series {name!r} in history.{suggest(name, self._values)}")
        return list(self._values[name])

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def names(self) -> list[str]:
        """All series names."""
        return list(self._values)

    def steps(self, name: str) -> list[int]:
        """The step (iteration or epoch) of each value of ``name``."""
        self[name]  # raises a helpful KeyError
        return list(self._steps[name])

    def latest_step(self, name: str, default: Any = None) -> Any:
        """Step of the last value of ``name`` (``default`` when missing or empty).

        Unlike :meth:`steps`, no copy of the series: cheap at every epoch of a long run.
        """
        steps = self._steps.get(name)
        return steps[-1] if steps else default

    def latest(self, name: str, default: Any = None) -> Any:
        """Last value of ``name`` (``default`` when the series is missing or empty)."""
        values = self._values.get(name)
        return values[-1] if values else default

    def best(self, name: str, mode: str | None = None) -> float:
        """Best value of ``name``; ``mode`` is inferred from the name when ``None``."""
        mode = mode or infer_mode(name)
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not allowed: expected 'min' or 'max'")
        values = [v for v in self[name] if not math.isnan(v)]
        if not values:
            return math.nan
        return min(values) if mode == "min" else max(values)

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"series": {name: {"steps": [...], "values": [...]}}, "meta": {...}}``."""
        series = {
            name: {"steps": list(self._steps[name]), "values": list(self._values[name])}
            for name in self._values
        }
        return {"series": series, "meta": dict(self.meta)}

    def journal_to(self, path: str | os.PathLike) -> None:
        """Append every value logged from now on to the journal file ``path``.

        What the History already holds is written first (the file is replaced), so the
        journal always replays to the whole History. :func:`attach_history` calls this
        on rank 0 with ``output_dir/history.jsonl``.
        """
        journal = Journal(Path(path))
        journal.restart(self._records())
        self._journal = journal

    @property
    def journal_path(self) -> Path | None:
        """The journal file this History appends to, or ``None``."""
        return self._journal.path if self._journal is not None else None

    def flush(self) -> None:
        """Write the values logged since the last flush to the journal (no fsync).

        After this returns, a SIGKILL loses nothing logged so far. Against a power cut
        the journal is fsynced before each checkpoint that points into it (the
        checkpoint store's ``depends_on``) and by :meth:`sync` / :meth:`close`.
        """
        if self._journal is not None:
            self._journal.write(self.meta)

    def sync(self) -> None:
        """Flush, then fsync the journal."""
        if self._journal is not None:
            self._journal.write(self.meta)
            self._journal.sync()

    def close(self) -> None:
        """Flush, fsync and close the journal file (reopened by the next write)."""
        if self._journal is not None:
            self.sync()
            self._journal.close()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to restore this History.

        With a journal (:meth:`journal_to`): ``{"journal": {"path", "bytes",
        "records"}, "meta"}`` — the journal is flushed first, and its first ``bytes``
        bytes replay to this History. Without one: the whole :meth:`to_dict`.
        """
        if self._journal is None and self._rank0_journal is not None:
            # another rank's checkpoint state is never written (rank 0's is): do not pay
            # for the whole History at every checkpoint
            position = {"path": str(self._rank0_journal), "bytes": 0, "records": 0}
            return {"journal": position, "meta": dict(self.meta)}
        if self._journal is None:
            return self.to_dict()
        self._journal.write(self.meta)
        return {"journal": self._journal.position(), "meta": dict(self.meta)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (either form).

        From a journal position, the journal is replayed up to it. When this History
        journals to a file, its next write first cuts that file back to the position
        (what a killed run appended after its checkpoint goes) or, for another run's
        journal, starts it from that journal's first ``bytes``.

        Raises:
            ValueError: the journal is missing or shorter than the checkpoint says.
        """
        if "journal" not in state:
            series = state.get("series", {})
            self._values = {n: [float(v) for v in s["values"]] for n, s in series.items()}
            self._steps = {n: [int(v) for v in s["steps"]] for n, s in series.items()}
            self.meta = dict(state.get("meta", {}))
            if self._journal is not None:
                self._journal.restart(self._records())
            return
        position = JournalPosition.from_state(state["journal"])
        source = self._journal_source(position)
        self._values, self._steps = {}, {}
        if source is None:
            self.meta = dict(state.get("meta", {}))
            return
        data = read_prefix(source, position)
        meta = replay(data, source, self._put)
        self.meta = dict(state.get("meta", meta))
        if self._journal is not None:
            self._journal.adopt(source, data, position, self.meta)

    def _journal_source(self, position: JournalPosition) -> Path | None:
        # This History's own journal first: it is the run directory being resumed (it
        # may have been moved since the checkpoint named its path); else the journal
        # the checkpoint names (a run resumed into another directory).
        own, saved = self.journal_path, Path(position.path)
        if own is not None and own.is_file() and own.stat().st_size >= position.bytes:
            return own
        if saved.is_file():
            return saved
        if idist.get_rank() != 0:
            return None  # only rank 0 writes and reads the history files
        if position.bytes == 0:
            return None  # nothing journaled yet (a checkpoint before the first record)
        raise ValueError(
            f"the checkpoint's history is in {str(saved)!r}, which does not exist: "
            f"restore that file (or {JOURNAL_NAME} next to the checkpoints/ folder)"
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write ``history.json`` atomically (temp file, fsync, rename)."""
        write_atomic(path, self._json())

    def _json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a saved history: ``history.json``, a journal (``.jsonl``) or a run folder.

        For a folder, or a ``history.json`` with a journal beside it, the newer of the
        two is read: a run killed before its end has only an up-to-date journal.
        """
        path = newest_history_file(Path(path))
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"no history at {str(path)!r}") from None
        history = cls()
        if path.suffix == ".jsonl":
            history.meta = replay(text.encode(), path, history._put)
            return history
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: not a history file ({exc.msg} at line {exc.lineno})"
            ) from None
        history.load_state_dict(data)
        return history

    def plot(
        self,
        path: str | os.PathLike,
        names: list[str] | None = None,
        *,
        best: str | None = None,
        best_epoch: int | None = None,
        columns: int = 3,
    ) -> Path:
        """Write a PNG: one panel per metric (train and val of a metric share one), laid
        out in a grid of ``columns`` that stays readable at 100%, the best epoch marked.

        Args:
            path: The PNG to write.
            names: Series to plot (default: all).
            best: The series whose best value marks the best epoch (default: the first
                ``val/`` series; its mode follows the name, as everywhere).
            best_epoch: Mark this epoch instead of inferring it from ``best``.
            columns: Panels per row.

        Raises:
            ModuleNotFoundError: matplotlib is not installed.
            ValueError: nothing to plot, or ``columns`` < 1.
        """
        return plot_history(self, path, names, best=best, best_epoch=best_epoch, columns=columns)

    def _best_point(
        self, best: str | None, best_epoch: int | None
    ) -> tuple[int, str, float] | None:
        """``(epoch, series, value)`` the plot marks (see :func:`history_plot.best_point`)."""
        return best_point(self, best, best_epoch)

    def __repr__(self) -> str:
        return f"History({', '.join(f'{n}[{len(v)}]' for n, v in self._values.items())})"


def _as_float(value: Any) -> float | None:
    # a logged value: a number or a one-element tensor; anything else is not a scalar
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    return float(value) if is_number(value) else None


def attach_history(
    engine: Engine,
    history: History,
    *,
    evaluators: Mapping[str, Engine] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    log_every: int = 10,
    path: str | os.PathLike | None = None,
    loss_key: str = "loss",
) -> History:
    """Fill ``history`` from ``engine`` (and its evaluators); save it each epoch.

    Attaches to ``engine``: ``ITERATION_COMPLETED``, every ``log_every`` iterations,
    records the batch loss and the LR of ``optimizer``'s first group; ``EPOCH_COMPLETED`` records
    ``engine.state.metrics`` as ``train/*`` and, when ``path`` is given, appends the
    epoch's values to the journal beside it (``history.jsonl``: written each epoch,
    fsynced before each checkpoint and at the end, see :meth:`History.flush`);
    ``COMPLETED`` writes ``path`` (rank 0 only). To each evaluator ``name``:
    ``COMPLETED`` records its metrics as ``name/*`` at the training epoch.

    Works on any Ignite ``Engine`` whose output is a dict holding ``loss_key`` or a
    number.
    """
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every={log_every!r} is not allowed: expected an integer >= 1")

    batch_loss = f"train/batch_{loss_key}"

    def record_iteration(engine: Engine) -> None:
        # Ignite's ``ITERATION_COMPLETED(every=log_every)`` filter, done here: its
        # wrapper looks the event up through Enum hashing at every iteration (measured
        # ~2-15 us a step, more than this handler's work when due)
        if engine.state.iteration % log_every:
            return
        output = engine.state.output
        loss = output.get(loss_key) if isinstance(output, Mapping) else output
        loss = _as_float(loss)
        if loss is not None:
            history.log(batch_loss, loss, engine.state.iteration)
        if optimizer is not None:
            history.log("lr", optimizer.param_groups[0]["lr"], engine.state.iteration)

    def record_epoch(engine: Engine) -> None:
        for name, value in engine.state.metrics.items():
            value = _as_float(value)
            if value is not None:
                history.log(f"train/{name}", value, engine.state.epoch)

    document = Path(path) if path is not None else None
    if document is not None and history.journal_path is None:
        if idist.get_rank() == 0:
            history.journal_to(document.with_suffix(".jsonl"))
        else:
            history._rank0_journal = document.with_suffix(".jsonl").resolve()

    def save(engine: Engine) -> None:
        # append the epoch's records (cost: this epoch's values, not the run's). No
        # fsync per epoch (issue 16: ~0.3 ms of the training thread's time even on a
        # worker): a checkpoint store fsyncs the journal before each checkpoint that
        # points into it, and close() at the end.
        history.flush()

    def save_final(engine: Engine) -> None:
        # in the caller's thread: both files are complete when run() returns
        if document is not None and idist.get_rank() == 0:
            history.close()
            history.save(document)

    engine.add_event_handler(Events.ITERATION_COMPLETED, record_iteration)
    engine.add_event_handler(Events.EPOCH_COMPLETED, record_epoch)
    for split, evaluator in (evaluators or {}).items():
        evaluator.add_event_handler(Events.COMPLETED, _record_split, engine, history, split)
    engine.add_event_handler(Events.EPOCH_COMPLETED, save)
    engine.add_event_handler(Events.COMPLETED, save_final)
    return history


def _record_split(evaluator: Engine, trainer: Engine, history: History, split: str) -> None:
    # an evaluator run on several data sets (see handlers.evaluation.name_splits)
    # records each run under the split of the loader it ran on
    split = split_of(evaluator, split)
    for name, value in evaluator.state.metrics.items():
        value = _as_float(value)
        if value is not None:
            history.log(f"{split}/{name}", value, trainer.state.epoch)
