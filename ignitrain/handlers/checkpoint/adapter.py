"""When Ignite's ``Checkpoint`` objects run, on which weights, and what they are told.

:class:`CheckpointOptions` say when and what; :func:`signature` and :func:`non_finite`
tell whether the weights changed since an evaluation, and whether they are finite.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import Checkpoint
from torch import nn

from ignitrain.errors import is_count
from ignitrain.handlers.checkpoint import sharded_run
from ignitrain.handlers.checkpoint.format import KINDS
from ignitrain.handlers.checkpoint.payload import build_payload
from ignitrain.handlers.checkpoint.saver import (
    DurableSaver,
    SavedState,
    nan_safe_score,
    parse_saved,
)
from ignitrain.handlers.checkpoint.store import CheckpointStore, best_tag, safe_tag_part
from ignitrain.handlers.modes import resolve_mode
from ignitrain.handlers.stop_limits import optimizer_steps

__all__ = ["CheckpointHandler", "CheckpointOptions", "non_finite", "signature", "weight_modules"]


@dataclass(frozen=True)
class CheckpointOptions:
    """When and what :class:`CheckpointHandler` saves (see :func:`attach_checkpoints`).

    Raises:
        TypeError, ValueError: A bad option, named with what is allowed.
    """

    save_every: int = -1
    best_metric: str | None = None
    best_mode: str | None = None
    save_best: bool = True
    save_last: bool = True
    accumulation_steps: int = 1
    sharded: bool = False

    def __post_init__(self) -> None:
        if not is_count(self.save_every) or self.save_every < -1:
            raise ValueError(
                f"Argument save_every={self.save_every!r} is not allowed: expected N > 0 "
                "iterations, -1 (each epoch) or 0 (off)"
            )
        if self.best_metric is not None and not isinstance(self.best_metric, str):
            raise TypeError(
                f"Argument best_metric={self.best_metric!r} is not allowed: expected a str"
            )
        if self.best_mode not in (None, "min", "max"):
            raise ValueError(
                f"Argument best_mode={self.best_mode!r} is not allowed: expected 'min', 'max' "
                "or None"
            )
        if not is_count(self.accumulation_steps) or self.accumulation_steps < 1:
            raise ValueError(
                f"Argument accumulation_steps={self.accumulation_steps!r} is not allowed: "
                "expected an integer >= 1"
            )


class CheckpointHandler:
    """Ignite ``Checkpoint`` objects (periodic, best, last, preempt) and when they run.

    Created by :func:`~ignitrain.handlers.checkpoint.attach_checkpoints`, which
    documents the events. ``checkpoints``
    holds the four Ignite ``Checkpoint`` objects by kind; ``last_path`` is the most
    recent file written.
    """

    def __init__(
        self,
        engine: Engine,
        objects: Mapping[str, Any],
        store: CheckpointStore,
        options: CheckpointOptions,
        *,
        evaluator: Engine | None = None,
        extra_fn: Callable[[], Mapping[str, Any]] | None = None,
    ):
        self.engine, self.objects, self.store = engine, dict(objects), store
        self.options, self.evaluator, self.extra_fn = options, evaluator, extra_fn
        self.sharded = options.sharded  # issue 14: FSDP, folders by sharded_run
        self.save_every = options.save_every
        self.best_metric = metric = options.best_metric
        self.best_enabled = bool(options.save_best and evaluator is not None and metric is not None)
        self.best_mode = None if metric is None else resolve_mode(metric, options.best_mode)
        self.metrics: dict[str, Any] = {}
        self.last_path: Path | None = None
        self._running = False
        self._modules = weight_modules(self.objects)
        self._pending: tuple[float, int, tuple] | None = None  # best value, iteration, weights
        self._written: tuple[int, tuple, Path] | None = None  # periodic file of this moment
        self._point_at = -1  # iteration of the last save point
        self._in_point = False  # inside a save point: the file is a complete resume point
        self._value = math.nan
        self._link: Path | None = None
        self._handlers: list[tuple[Engine, Any, Callable]] = []
        self.checkpoints = {kind: self._checkpoint(kind) for kind in KINDS}

    # -- the Ignite Checkpoint objects ---------------------------------------------

    def _checkpoint(self, kind: str) -> Checkpoint:
        if self.sharded:  # issue 14: every rank writes its shard (sharded_run)
            to_save = sharded_run.trainer_to_save(self.objects, SavedState, self.payload_extra)
            saver = sharded_run.trainer_saver(
                self.store.dirname, to_save, self.engine, depends_on=self.store.depends_on
            )
        else:
            # a best or last file linked to this moment's periodic one needs no state
            # at all (issue 16: one payload for both; Ignite asks every object first)
            linking = self._linking if kind in _LINKED else None
            to_save = {name: SavedState(name, obj, linking) for name, obj in self.objects.items()}
            saver = DurableSaver(self.store, kind, list(self.objects), extra_fn=self.payload_extra)
        step, score = self._iteration_step, None
        pattern = f"{{filename_prefix}}_{kind}_iter{{global_step:08d}}.{{ext}}"
        if kind == "periodic" and self.save_every == -1:
            step, pattern = (
                self._epoch_step,
                "{filename_prefix}_periodic_epoch{global_step:04d}.{ext}",
            )
        elif kind == "best":
            # Ignite puts only its own "{score:.4f}" in a name; the README's names carry
            # the metric's value: the "global step" part is the whole tag.
            step, pattern = self._best_step, "{filename_prefix}_best_{global_step}.{ext}"
            score = nan_safe_score(self._best_score, 1.0 if self.best_mode == "max" else -1.0)
            saver.resumable_fn = lambda: self._in_point
        if kind in _LINKED and not self.sharded:  # a folder is written again, never linked
            saver.link_fn = lambda: self._link
        return Checkpoint(
            to_save,
            saver,
            filename_prefix=self.store.prefix,
            score_function=score,
            n_saved=self.store.n_saved,
            global_step_transform=step,
            filename_pattern=pattern,
            save_on_rank=0,
        )

    # global_step_transform / score_function of the Checkpoint objects: the training
    # engine's progress, whichever engine Ignite passes
    def _iteration_step(self, _engine: Engine, _event: Any) -> int:
        return self.engine.state.iteration

    def _epoch_step(self, _engine: Engine, _event: Any) -> int:
        return self.engine.state.epoch

    def _best_step(self, _engine: Engine, _event: Any) -> str:
        return best_tag(self.best_metric or "score", self._value, self.engine.state.iteration)

    def _best_score(self, _engine: Engine) -> float:
        return self._value

    def _linking(self) -> bool:
        return self._link is not None

    def _periodic_of_this_moment(self, weights: tuple | None = None) -> Path | None:
        """The periodic file written at this iteration with these very weights, if any."""
        written = self._written
        if written is None or written[0] != self.engine.state.iteration:
            return None
        same = written[1] == (weights if weights is not None else signature(self._modules))
        return written[2] if same else None

    def _rebuild_saved(self) -> None:
        """Tell each Ignite ``Checkpoint`` the files already on disk (a resumed run)."""
        found: dict[str, list] = {kind: [] for kind in KINDS}
        if self.store.writes and self.store.dirname.is_dir():
            tag = safe_tag_part(self.best_metric) if self.best_metric else None
            sign = 1.0 if self.best_mode == "max" else -1.0
            files = [(path.name, kind) for path, kind in self.store.files()]
            if self.sharded:  # issue 14: folders, known to Ignite as "{folder}.pt"
                files = sharded_run.sharded_files(self.store.dirname, self.store.prefix)
            for name, kind in files:
                priority = parse_saved(name, kind, self.store.prefix, tag, sign)
                if priority is not None:
                    found[kind].append((priority, name))
        if idist.get_world_size() > 1:
            found = json.loads(idist.broadcast(json.dumps(found), src=0, safe_mode=True))
        for kind, items in found.items():
            items.sort(key=lambda item: item[0])
            cut = 0 if self.store.n_saved is None else max(0, len(items) - self.store.n_saved)
            checkpoint = self.checkpoints[kind]
            checkpoint.load_state_dict({"_saved": [list(i) for i in items[cut:]]})
            # files beyond n_saved (a run with a larger n_saved before): evicted as
            # Ignite's own would be, once the next file of their kind is durable
            for _, name in items[:cut]:
                checkpoint.save_handler.remove(name)

    # -- wiring -------------------------------------------------------------------

    @property
    def handlers(self) -> list[tuple[Engine, Any, Callable]]:
        """Every ``(engine, event, handler)`` attached; ``engine.remove_event_handler``
        removes one (a removed save point is not moved back)."""
        return list(self._handlers)

    def _on(self, engine: Engine, event: Any, fn: Callable) -> None:
        engine.add_event_handler(event, fn)
        self._handlers.append((engine, event, fn))

    def attach(self) -> CheckpointHandler:
        """Register the handlers (done by :func:`attach_checkpoints`)."""
        self._on(self.engine, Events.STARTED, self._started)
        self._on(self.engine, Events.EPOCH_STARTED, self._move_last)
        self._on(self.engine, Events.ITERATION_COMPLETED, self._iteration_completed)
        self._on(self.engine, Events.EPOCH_COMPLETED, self._epoch_completed)
        self._on(self.engine, Events.COMPLETED, self._completed)
        if self.evaluator is not None:
            self._on(self.evaluator, Events.COMPLETED, self._evaluated)
        return self

    def detach(self) -> None:
        """Remove every handler this object registered."""
        for engine, event, fn in self._handlers:
            if engine.has_event_handler(fn, event):
                engine.remove_event_handler(fn, event)
        self._handlers = []

    def _move_last(self, _: Engine | None = None) -> None:
        # Ignite runs an event's handlers in attach order: a checkpoint attached before
        # the user's validation or history handlers would save before they ran (and
        # resume would skip them). Moving ours to the end of each event at every epoch
        # start makes the save points see every handler, whatever the attach order.
        # A handler the user removed stays removed.
        for engine, event, fn in self._handlers:
            if (
                engine is self.engine
                and event in _SAVE_EVENTS
                and engine.has_event_handler(fn, event)
            ):
                engine.remove_event_handler(fn, event)
                engine.add_event_handler(event, fn)

    # -- events -------------------------------------------------------------------

    def _started(self, _: Engine) -> None:
        self._running = True
        self._pending = self._written = None
        self.store.remove_stale_temps()
        if self.sharded:  # issue 14: the temp folders of a killed sharded save
            sharded_run.remove_stale_folders(self.store.dirname)
        self._rebuild_saved()
        self._move_last()

    def _evaluated(self, evaluator: Engine) -> None:
        # Only evaluations run during training rank checkpoints (not a later test run).
        if not self._running:
            return
        self.metrics = dict(evaluator.state.metrics)
        value = self._best_value()
        if value is None:
            return
        iteration = self.engine.state.iteration
        self._pending = (value, iteration, signature(self._modules))
        if self._point_at == iteration:
            # evaluated after this iteration's save point (e.g. from EPOCH_STARTED):
            # save now, so the file holds the evaluated weights
            self._save_best()

    def _iteration_completed(self, engine: Engine) -> None:
        # Runs every iteration (issue 16: it cost ~21 us/step going through
        # ``_save_point`` when saving per epoch): return at once unless a periodic
        # save or a mid-epoch best is due. The epoch's last iteration is saved at
        # EPOCH_COMPLETED instead, after the validation and history handlers, or
        # resuming from it would skip them.
        if self.store.failed is not None:
            # A background commit that failed (ENOSPC, EIO) raises here, at the end of
            # the next iteration, not at the next save many iterations later. Checked
            # here rather than in an ITERATION_STARTED handler of its own: with none
            # there, LeanEngine does not fire that event at all (with the GET_BATCH
            # events: 14.3 -> 12.1 us a step for the engine and handlers, issue 16).
            self.store.wait()
        state = self.engine.state
        iteration, length = state.iteration, state.epoch_length
        if length and iteration % length == 0:
            return
        if self._pending is None and (self.save_every <= 0 or not self._steps_due()):
            # nothing to write, but this iteration's save point has passed: an
            # evaluation later in this iteration saves its best at once (_evaluated)
            self._point_at = iteration
            return
        self._save_point(periodic=self._steps_due())

    def _epoch_completed(self, engine: Engine) -> None:
        self._save_point(periodic=self.save_every == -1 or self._steps_due())

    def _steps_due(self) -> bool:
        """Whether this iteration ends an optimizer step whose count is a multiple of
        ``save_every`` (accumulation groups restart each epoch, as in ``OptimizerStep``)."""
        if self.save_every <= 0:
            return False
        state, k = self.engine.state, self.options.accumulation_steps
        steps = optimizer_steps(state.iteration, state.epoch_length, k)
        ended = steps != optimizer_steps(state.iteration - 1, state.epoch_length, k)
        return ended and steps % self.save_every == 0

    def _completed(self, engine: Engine) -> None:
        try:
            self._save_point(periodic=False)
            if self.options.save_last:
                self.save_now("last")
        finally:
            self._running = False
        self.store.wait()

    # -- saving -------------------------------------------------------------------

    def _best_value(self) -> float | None:
        if not self.best_enabled:
            return None
        metrics = self.metrics
        if self.best_metric not in metrics:
            computed = ", ".join(sorted(metrics)) or "none"
            raise KeyError(
                f"best_metric {self.best_metric!r} is not computed by the evaluator "
                f"(computed: {computed})"
            )
        try:
            value = float(metrics[self.best_metric])
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"best_metric {self.best_metric!r} is not a number: {metrics[self.best_metric]!r}"
            ) from e
        return None if math.isnan(value) else value

    def _save_point(self, periodic: bool) -> None:
        iteration = self.engine.state.iteration
        self._point_at = iteration
        with self.store.together():  # one directory fsync for the periodic and best files
            if periodic:
                self.checkpoints["periodic"](self.engine)
                path = self.checkpoints["periodic"].save_handler.last_path
                self.last_path = path
                self._written = (iteration, signature(self._modules), path)
            if self._pending is not None:
                self._in_point = True
                try:
                    self._save_best()
                finally:
                    self._in_point = False

    def _save_best(self) -> None:
        value, iteration, weights = self._pending
        self._pending = None
        if iteration != self.engine.state.iteration or weights != signature(self._modules):
            warnings.warn(
                f"The weights changed between the evaluation at iteration {iteration} and "
                "its save point (a handler updated them in between): no best checkpoint "
                "for this evaluation",
                stacklevel=2,
            )
            return
        bad = non_finite(self._modules)
        if bad:
            # stop_on_nan=False trains on through NaN/Inf: a metric computed from
            # such weights can still look best (argmax of NaN logits scores accuracy)
            warnings.warn(
                f"The weights hold NaN/Inf ({', '.join(bad[:3])}) at iteration {iteration}: "
                f"no best checkpoint for {self.best_metric}={value:.6g}",
                stacklevel=2,
            )
            return
        self._link = self._periodic_of_this_moment(weights)
        self._value = value
        best = self.checkpoints["best"]
        before = best.save_handler.last_path
        try:
            best(self.engine)  # Ignite decides (n_saved, score) and evicts
        finally:
            self._link = None
        if best.save_handler.last_path is not before:
            self.last_path = best.save_handler.last_path

    def payload_extra(self) -> dict:
        """The metadata of a file written now: progress, metrics, ``extra_fn()``'s."""
        state = self.engine.state
        extra: dict[str, Any] = {
            "iteration": state.iteration,
            "epoch": state.epoch,
            "metrics": dict(self.metrics),
        }
        if self.extra_fn is not None:
            more = self.extra_fn()
            if not isinstance(more, Mapping):
                raise TypeError(f"extra_fn must return a dict, returned {type(more).__name__}")
            extra.update(more)
        return extra

    def payload(self) -> dict:
        """The checkpoint dict for the current moment (objects + metadata)."""
        return build_payload(self.objects, self.payload_extra())

    def save_now(self, kind: str = "periodic", tag: str | None = None) -> Path:
        """Write a checkpoint now (through its Ignite ``Checkpoint``) and wait for it.

        Args:
            kind: ``"periodic"``, ``"last"`` or ``"preempt"`` (best needs a score).
            tag: Only ``iter{iteration:08d}`` (the default) goes through Ignite's
                ``Checkpoint``; another tag is written by the store directly, as a file
                that Ignite's ``Checkpoint`` does not know (nor evict).

        Returns:
            The checkpoint's path.
        """
        if kind not in self.checkpoints or kind == "best":
            raise ValueError(
                f"Argument kind={kind!r} is not allowed here: expected 'periodic', 'last' or "
                "'preempt' (best needs a score)"
            )
        default = f"iter{self.engine.state.iteration:08d}"
        if kind == "periodic" and self.save_every == -1:
            default = None
        if tag is None or tag == default:
            checkpoint = self.checkpoints[kind]
            if kind == "last":  # the run's end is often this epoch's periodic moment
                self._link = self._periodic_of_this_moment()
            try:
                checkpoint(self.engine)
            finally:
                self._link = None
            path = checkpoint.save_handler.last_path
        elif self.sharded:  # issue 14: a single file would hold rank 0's shard only
            raise ValueError(
                f"Argument tag={tag!r} is not allowed under FSDP: sharded checkpoints take "
                f"the default tag {default!r}"
            )
        elif not _is_tag(tag):
            raise ValueError(
                f"Argument tag={tag!r} is not allowed: expected a non-empty file name part "
                "without path separators"
            )
        else:  # a file of its own, beside the ones Ignite's Checkpoint keeps: never evicted
            name = f"{self.store.prefix}_{kind}_{tag}.pt"
            path = self.store.write(self.payload(), name, kind, remove=[])
        self.store.wait()
        self.last_path = path
        return path


_LINKED = ("best", "last")  # kinds that link to the periodic file of the same moment
_SAVE_EVENTS = (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED, Events.COMPLETED)


def _is_tag(tag: object) -> bool:
    return isinstance(tag, str) and bool(re.fullmatch(r"[^./\\\x00][^/\\\x00]*", tag))


def signature(modules: list[nn.Module]) -> tuple:
    """A value equal for two calls exactly when no weight changed in between."""
    # Every in-place update (optimizer step, load_state_dict, BatchNorm statistics)
    # bumps a tensor's version counter, and a replaced ``.data`` changes the storage:
    # equal signatures mean the same weights. The storages are compared as a set, so an
    # exchange of storages between the model and its EMA copy (``EMAState.swapped``,
    # around an ``ema/*`` evaluation) reads as unchanged, as it is once restored.
    tensors = [t for m in modules for t in itertools.chain(m.parameters(), m.buffers())]
    return tuple(sorted(t.data_ptr() for t in tensors)), tuple(t._version for t in tensors)


def non_finite(modules: list[nn.Module]) -> list[str]:
    """Names of the floating-point parameters/buffers holding NaN or Inf.

    Paid only when a best checkpoint is decided. NaN/Inf propagate through a sum, so
    one sum per tensor and a single device sync decide (measured on a loaded CPU, 26M
    parameters: 16 ms, against 147 ms for ``isfinite`` of every element and 151 ms
    to serialise them); only when a sum is not finite (or overflowed) does the exact
    per-element check run, to name the tensors.
    """
    named = [
        (f"{type(m).__name__}.{n}", t)
        for m in modules
        for n, t in itertools.chain(m.named_parameters(), m.named_buffers())
        if t.is_floating_point()
    ]
    if not named:
        return []
    # a sharded (FSDP) tensor is checked on this rank's shard: no collective here
    local = [getattr(t, "to_local", lambda t=t: t)().detach() for _, t in named]
    sums = [t.sum(dtype=torch.float32 if t.element_size() < 4 else None) for t in local]
    if bool(torch.stack([v.to(sums[0].device) for v in sums]).isfinite().all()):
        return []
    return [name for (name, _), t in zip(named, local, strict=True) if not t.isfinite().all()]


def weight_modules(objects: Mapping[str, Any]) -> list[nn.Module]:
    """The modules whose weights a checkpoint holds: each ``nn.Module`` object, and
    the ``checkpoint_modules`` an object declares (the EMA copy of a model)."""
    modules = [o for o in objects.values() if isinstance(o, nn.Module)]
    for obj in objects.values():
        modules.extend(getattr(obj, "checkpoint_modules", ()))
    return modules
