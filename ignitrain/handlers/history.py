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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ignitrain._files import BackgroundWriter, write_atomic
from ignitrain.handlers.modes import infer_mode

__all__ = ["History", "attach_history", "JOURNAL_NAME"]

Listener = Callable[[str, float, int], None]

#: File name of the journal next to ``history.json``.
JOURNAL_NAME = "history.jsonl"


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
        self._journal: _Journal | None = None
        self._rank0_journal: Path | None = None  # other ranks: the journal rank 0 writes

    # -- writing ------------------------------------------------------------------
    def log(self, name: str, value: float, step: int) -> None:
        """Append ``value`` at ``step`` to series ``name`` (replacing a same-step entry)."""
        value = float(value)
        values = self._values.setdefault(name, [])
        steps = self._steps.setdefault(name, [])
        # a resumed run may log a step again (e.g. the epoch it was killed in): keep one
        while steps and steps[-1] >= step:
            steps.pop()
            values.pop()
        values.append(value)
        steps.append(int(step))
        if self._journal is not None:
            self._journal.add(name, int(step), value)
        for listener in self._listeners:
            listener(name, value, int(step))

    def _replay(self, name: str, value: float, step: int) -> None:
        # log() without journal or listeners: rebuilding from a journal
        values = self._values.setdefault(name, [])
        steps = self._steps.setdefault(name, [])
        while steps and steps[-1] >= step:
            steps.pop()
            values.pop()
        values.append(value)
        steps.append(step)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(name, value, step)`` on every future :meth:`log`."""
        self._listeners.append(listener)

    # -- reading ------------------------------------------------------------------
    def __getitem__(self, name: str) -> list[float]:
        if name not in self._values:
            from ignitrain.config import suggest

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
        journal = _Journal(Path(path))
        journal.restart(self)
        self._journal = journal

    @property
    def journal_path(self) -> Path | None:
        """The journal file this History appends to, or ``None``."""
        return self._journal.path if self._journal is not None else None

    def flush(self) -> None:
        """Write the values logged since the last flush to the journal (no fsync).

        After this returns, a SIGKILL loses nothing logged so far; the fsync against a
        power cut runs on a worker thread (:meth:`sync`).
        """
        if self._journal is not None:
            self._journal.write(self.meta)

    def sync(self, *, wait: bool = False) -> None:
        """Flush, then fsync the journal on a worker thread (``wait``: block until done)."""
        if self._journal is not None:
            self._journal.write(self.meta)
            self._journal.sync(wait=wait)

    def close(self) -> None:
        """Flush, fsync and close the journal file (reopened by the next write)."""
        if self._journal is not None:
            self.sync(wait=True)
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
                self._journal.restart(self)
            return
        position = _Position.from_state(state["journal"])
        source = self._journal_source(position)
        self._values, self._steps = {}, {}
        if source is None:
            self.meta = dict(state.get("meta", {}))
            return
        data = _read_prefix(source, position)
        meta = _replay_lines(self, data, source)
        self.meta = dict(state.get("meta", meta))
        if self._journal is not None:
            self._journal.adopt(source, data, position, self.meta)

    def _journal_source(self, position: _Position) -> Path | None:
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
        path = _newest(Path(path))
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"no history at {str(path)!r}") from None
        history = cls()
        if path.suffix == ".jsonl":
            history.meta = _replay_lines(history, text.encode(), path)
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
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
            raise ValueError(f"Argument columns={columns!r} is not allowed: expected an int >= 1")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("pip install matplotlib to plot history") from exc
        panels = _panels(names or self.names())
        if not panels:
            raise ValueError("history is empty: nothing to plot")
        marked = self._best_point(best, best_epoch)
        cols = min(columns, len(panels))
        rows = -(-len(panels) // cols)
        # ~5 x 3.6 inches per panel at 100 dpi: 11-12 px text, a 1500 px wide image at most
        fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
        for ax, (title, series) in zip(axes.flat, panels.items()):
            per_iteration = title in ("lr", "momentum") or title.startswith("batch_")
            for name in series:
                steps, values = self._steps[name], self._values[name]
                style = "-" if len(values) > 30 else "o-"
                ax.plot(steps, values, style, label=name, markersize=3)
            if marked is not None and not per_iteration:
                epoch, name, value = marked
                ax.axvline(epoch, color="#c0392b", linestyle="--", linewidth=1, alpha=0.8)
                if name in series:
                    ax.plot([epoch], [value], "*", color="#c0392b", markersize=12, zorder=5)
                ax.set_title(f"{title}  (best epoch {epoch})", fontsize=11)
            else:
                ax.set_title(title, fontsize=11)
            ax.set_xlabel("iteration" if per_iteration else "epoch")
            ax.legend(fontsize=9)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def _best_point(
        self, best: str | None, best_epoch: int | None
    ) -> tuple[int, str, float] | None:
        """``(epoch, series, value)`` to mark, or ``None`` when there is nothing to rank."""
        candidates = [best] if best else [n for n in self.names() if n.startswith("val/")]
        if not candidates or candidates[0] not in self._values:
            return None
        name = candidates[0]
        pairs = [(s, v) for s, v in zip(self._steps[name], self._values[name]) if v == v]
        if not pairs:
            return None
        if best_epoch is not None:
            value = dict(pairs).get(best_epoch, float("nan"))
            return best_epoch, name, value
        pick = min if infer_mode(name) == "min" else max
        # the first epoch reaching the best value, as the best checkpoint keeps it
        step, value = pick(pairs, key=lambda sv: (sv[1], -sv[0]) if pick is max else (sv[1], sv[0]))
        return step, name, value

    def __repr__(self) -> str:
        return f"History({', '.join(f'{n}[{len(v)}]' for n, v in self._values.items())})"


def _panels(names: list[str]) -> dict[str, list[str]]:
    panels: dict[str, list[str]] = {}
    for name in names:
        panels.setdefault(name.split("/")[-1], []).append(name)
    return panels


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class _Position:
    """How much of a journal belongs to a History: its first ``bytes`` bytes (``records``
    lines)."""

    path: str
    bytes: int
    records: int

    @classmethod
    def from_state(cls, state: Any) -> _Position:
        ok = isinstance(state, Mapping) and isinstance(state.get("path"), str)
        ok = ok and all(
            isinstance(state.get(k), int) and state.get(k) >= 0 for k in ("bytes", "records")
        )
        if not ok:
            raise ValueError(
                f"history state: journal={state!r} is not allowed: expected "
                "{'path': str, 'bytes': int >= 0, 'records': int >= 0}"
            )
        return cls(state["path"], int(state["bytes"]), int(state["records"]))


class _Journal:
    """The append-only ``history.jsonl`` of one History (rank 0 only).

    :meth:`add` only queues the record; :meth:`write` encodes and appends what is
    queued in one ``os.write`` (no Python buffer, so a SIGKILL after it loses
    nothing); :meth:`sync` fsyncs on a worker thread. On first use the file is cut to
    the length this History knows, so a stale journal of an earlier run, or the
    records a killed run wrote after its checkpoint, never replay into this one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._fd: int | None = None
        self._size = 0
        self._records = 0
        self._queue: list[tuple[str, int, float]] = []
        self._meta_written = "{}"
        self._seed: bytes | None = None  # another run's journal to start from
        self._worker = BackgroundWriter()

    def add(self, name: str, step: int, value: float) -> None:
        self._queue.append((name, step, value))

    def restart(self, history: History) -> None:
        """Replace the file by one that replays to everything ``history`` holds."""
        self.close()
        self._size = self._records = 0
        self._seed = None
        self._meta_written = "{}"
        self._queue = [
            (name, step, value)
            for name in history._values
            for step, value in zip(history._steps[name], history._values[name])
        ]

    def adopt(self, source: Path, data: bytes, position: _Position, meta: dict) -> None:
        """Continue from the first ``position.bytes`` bytes of ``source`` (= ``data``).

        The file is cut (or, for another run's journal, written from ``data``) at the
        next write, not now: a checkpoint loader that snapshots this History and rolls
        it back after another object failed to load must not destroy the journal.
        """
        self.close()
        self._seed = None if source.resolve() == self.path else data
        self._size, self._records = position.bytes, position.records
        self._queue = []
        self._meta_written = json.dumps(meta, sort_keys=True, allow_nan=True)

    def position(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self._size, "records": self._records}

    def write(self, meta: Mapping[str, Any]) -> None:
        lines = [json.dumps(record, allow_nan=True) for record in self._queue]
        meta_text = json.dumps(meta, sort_keys=True, allow_nan=True)
        if meta_text != self._meta_written:
            lines.append(f'{{"meta": {meta_text}}}')
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        _write_all(self._open(), data)
        self._size += len(data)
        self._records += len(lines)
        self._queue = []
        self._meta_written = meta_text

    def sync(self, *, wait: bool = False) -> None:
        if self._fd is not None:
            self._worker.submit_coalesced(os.fsync, self._fd)
        if wait:
            self._worker.wait()

    def close(self) -> None:
        self._worker.wait()  # no fsync left on the descriptor
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            # the file becomes exactly what this History knows: a fresh run drops a
            # stale journal, a resumed one what its killed run wrote after the checkpoint
            if self._seed is not None:
                os.ftruncate(fd, 0)
                _write_all(fd, self._seed)
                self._seed = None
            os.ftruncate(fd, self._size)
            os.lseek(fd, self._size, os.SEEK_SET)
            self._fd = fd
        return self._fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_prefix(path: Path, position: _Position) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(position.bytes)
    if len(data) < position.bytes:
        raise ValueError(
            f"{path}: holds {len(data)} bytes of history, the checkpoint needs "
            f"{position.bytes}: the journal was cut or replaced after the checkpoint"
        )
    if (data and not data.endswith(b"\n")) or data.count(b"\n") != position.records:
        raise ValueError(
            f"{path}: its first {position.bytes} bytes are not the {position.records} "
            "history records the checkpoint saved: the journal was replaced"
        )
    return data


def _replay_lines(history: History, data: bytes, path: Path) -> dict[str, Any]:
    """Replay journal lines into ``history``; return the last ``meta`` line's dict."""
    lines = data.splitlines()
    try:  # one parse for the whole file: ~3x faster than line by line
        records = json.loads(b"[" + b",".join(line for line in lines if line.strip()) + b"]")
    except json.JSONDecodeError:
        records = _parse_each(lines, path)
    meta: dict[str, Any] = {}
    for number, record in enumerate(records, start=1):
        if isinstance(record, list) and len(record) == 3:
            history._replay(str(record[0]), float(record[2]), int(record[1]))
        elif isinstance(record, dict) and isinstance(record.get("meta"), dict):
            meta = record["meta"]
        else:
            raise ValueError(f"{path}: record {number} is not a history record: {record!r}")
    return meta


def _parse_each(lines: list[bytes], path: Path) -> list[Any]:
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a write cut short by a kill: the record is lost
                break
            raise ValueError(f"{path}: not a history file ({exc.msg} at line {number})") from None
    return records


def _newest(path: Path) -> Path:
    """The file :meth:`History.load` reads for ``path``."""
    if path.suffix == ".jsonl":
        return path
    document = path / "history.json" if path.is_dir() else path
    journal = document.with_suffix(".jsonl")
    if not journal.is_file():
        return document
    if not document.is_file():
        return journal
    # history.json is written after the journal's last record at the end of a run
    newer = document.stat().st_mtime_ns > journal.stat().st_mtime_ns
    return document if newer else journal


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

    Attaches to ``engine``: ``ITERATION_COMPLETED(every=log_every)`` records the batch
    loss and the LR of ``optimizer``'s first group; ``EPOCH_COMPLETED`` records
    ``engine.state.metrics`` as ``train/*`` and, when ``path`` is given, writes the
    JSON (rank 0 only). To each evaluator ``name``: ``COMPLETED`` records its metrics as
    ``name/*`` at the training epoch.

    Works on any Ignite ``Engine`` whose output is a dict holding ``loss_key`` or a
    number.
    """
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every={log_every!r} is not allowed: expected an integer >= 1")

    def record_iteration(engine: Engine) -> None:
        output = engine.state.output
        loss = output.get(loss_key) if isinstance(output, Mapping) else output
        loss = _scalar(loss)
        if loss is not None:
            history.log(f"train/batch_{loss_key}", loss, engine.state.iteration)
        if optimizer is not None:
            history.log("lr", optimizer.param_groups[0]["lr"], engine.state.iteration)

    def record_epoch(engine: Engine) -> None:
        for name, value in engine.state.metrics.items():
            value = _scalar(value)
            if value is not None:
                history.log(f"train/{name}", value, engine.state.epoch)

    document = Path(path) if path is not None else None
    if document is not None and history.journal_path is None:
        if idist.get_rank() == 0:
            history.journal_to(document.with_suffix(".jsonl"))
        else:
            history._rank0_journal = document.with_suffix(".jsonl").resolve()

    def save(engine: Engine) -> None:
        # append the epoch's records (cost: this epoch's values, not the run's)
        history.sync()

    def save_final(engine: Engine) -> None:
        # in the caller's thread: both files are complete when run() returns
        if document is not None and idist.get_rank() == 0:
            history.close()
            history.save(document)

    engine.add_event_handler(Events.ITERATION_COMPLETED(every=log_every), record_iteration)
    engine.add_event_handler(Events.EPOCH_COMPLETED, record_epoch)
    for split, evaluator in (evaluators or {}).items():
        evaluator.add_event_handler(Events.COMPLETED, _record_split, engine, history, split)
    engine.add_event_handler(Events.EPOCH_COMPLETED, save)
    engine.add_event_handler(Events.COMPLETED, save_final)
    return history


def _record_split(evaluator: Engine, trainer: Engine, history: History, split: str) -> None:
    # an evaluator run on several data sets (see handlers.evaluation.name_splits)
    # records each run under the split of the loader it ran on
    from ignitrain.handlers.evaluation import split_of

    split = split_of(evaluator, split)
    for name, value in evaluator.state.metrics.items():
        value = _scalar(value)
        if value is not None:
            history.log(f"{split}/{name}", value, trainer.state.epoch)
