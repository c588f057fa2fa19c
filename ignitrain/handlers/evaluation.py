"""Evaluation during training: several named data sets, each on its own schedule, and
which evaluator run drives the decisions.

Two concepts, one module:

* **Evaluation sets** (:class:`EvalSet`, :func:`attach_evaluations`). ``val_data`` may
  be a mapping ``{"val": ..., "test": ...}``: each set has its own evaluator and is
  recorded under its own prefix (``val/accuracy``, ``test/accuracy``). A set runs every
  ``validate_every`` epochs and after the last one, except a set named ``"test"``, which
  runs once when training ends (also after an early stop); ``TrainConfig.eval_every``
  (``{"test": 5}``, ``{"val": "end"}``) overrides either.
* **Split routing** (:func:`name_splits`, :func:`split_of`). Ignite's own examples run
  *one* evaluator on the training set and then on the validation set in the same
  epoch. Everything that listens to that evaluator's ``COMPLETED`` then sees both runs:
  History recorded both under ``val/``, TensorBoard got two points per step, and early
  stopping and best checkpoints decided on whichever run came last. ``name_splits``
  tells which loader is which split; each run is then recorded under the split of the
  loader it ran on (``engine.state.dataloader``), and :meth:`SplitRouter.view` gives an
  ordinary Ignite ``Engine`` that completes only after runs on one split, holding their
  metrics: attach stop rules and checkpoints to that, and only the validation run
  decides, in whatever order the runs happen.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ignite.engine import Engine, Events

# the eval_every check is a config check (config must not import the handlers package)
from ignitrain.config_checks import END, check_eval_every

__all__ = [
    "EvalSet",
    "SplitRouter",
    "attach_evaluations",
    "check_eval_every",
    "eval_sets",
    "name_splits",
    "split_metric",
    "split_of",
]


# -- metric names with a split prefix -----------------------------------------------


def split_metric(name: str, splits: Any, default: str = "val") -> tuple[str, str]:
    """``(split, metric)`` of ``"val/accuracy"``, ``"ema/val/accuracy"`` or ``"accuracy"``.

    A bare metric name belongs to ``default``. The longest split prefix that names one
    of ``splits`` wins.

    Raises:
        ValueError: the prefix names no split of ``splits``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"best_metric={name!r} is not allowed: expected a metric name")
    if "/" not in name:
        return default, name
    split, _, metric = name.rpartition("/")
    if split not in splits:
        known = ", ".join(f"{s}/{metric}" for s in splits) or "none (no validation data)"
        raise ValueError(
            f"TrainConfig.best_metric={name!r} is not allowed: no evaluation set {split!r}. "
            f"Allowed: {known}"
        )
    return split, metric


# -- evaluation sets and their schedules --------------------------------------------


@dataclass
class EvalSet:
    """One data set evaluated during training.

    Attributes:
        name: The History prefix (``"val"``, ``"test"``, ``"ema/val"``).
        evaluator: Its evaluation ``Engine``.
        loader: What the evaluator runs on.
        every: Epochs between runs, or ``"end"`` (once, when training ends).
        around: A context-manager factory the run happens in (EMA: swapped weights).
    """

    name: str
    evaluator: Engine
    loader: Any
    every: int | str = 1
    around: Callable[[], Any] | None = None

    def run(self) -> None:
        """Run the evaluator on the loader (inside ``around()`` when given)."""
        if self.around is None:
            self.evaluator.run(self.loader)
            return
        with self.around():
            self.evaluator.run(self.loader)


def eval_sets(
    val_data: Any,
    make_loader: Callable[[Any], Any],
    *,
    validate_every: int = 1,
    eval_every: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, int | str]]:
    """``{name: (loader, every)}`` of ``val_data``: ``None``, one data set (``"val"``), or
    a mapping of names to data sets/loaders.

    Raises:
        TypeError/ValueError: a bad name, an empty mapping, or ``eval_every`` naming
            no set.
    """
    if val_data is None:
        data: dict[str, Any] = {}
    elif isinstance(val_data, Mapping):
        if not val_data:
            raise ValueError("val_data={} is not allowed: pass None or name at least one set")
        data = dict(val_data)
        for name, value in data.items():
            if not isinstance(name, str) or not name or "/" in name or name == "train":
                raise ValueError(
                    f"val_data has the set name {name!r}: expected a non-empty name without "
                    "'/', other than 'train' (e.g. 'val', 'test')"
                )
            if value is None:
                raise ValueError(f"val_data[{name!r}] is None: pass a Dataset or a loader")
    else:
        data = {"val": val_data}
    every = check_eval_every(eval_every)
    unknown = set(every) - set(data)
    if unknown:
        raise ValueError(
            f"TrainConfig.eval_every names {sorted(unknown)}, not in val_data "
            f"(sets: {sorted(data) or 'none'})"
        )
    default = {name: (END if name == "test" else validate_every) for name in data}
    default.update(every)
    return {name: (make_loader(value), default[name]) for name, value in data.items()}


def attach_evaluations(engine: Engine, sets: list[EvalSet]) -> Callable[[], None]:
    """Run each set after the epochs its schedule names, in list order.

    ``every=N``: after epochs ``N, 2N, ...`` and the last one (``EPOCH_COMPLETED``).
    ``"end"``: once, at ``COMPLETED``, so also after an early stop or a time limit.
    Returns a function that detaches both handlers.
    """

    def periodic(engine: Engine) -> None:
        epoch = engine.state.epoch
        for s in sets:
            if s.every != END and (epoch % s.every == 0 or epoch == engine.state.max_epochs):
                s.run()

    def at_end(engine: Engine) -> None:
        for s in sets:
            if s.every == END:
                s.run()

    engine.add_event_handler(Events.EPOCH_COMPLETED, periodic)
    engine.add_event_handler(Events.COMPLETED, at_end)

    def detach() -> None:
        engine.remove_event_handler(periodic, Events.EPOCH_COMPLETED)
        engine.remove_event_handler(at_end, Events.COMPLETED)

    return detach


# -- one evaluator, several data sets ------------------------------------------------

_ROUTERS: weakref.WeakKeyDictionary[Engine, SplitRouter] = weakref.WeakKeyDictionary()


class SplitRouter:
    """Which split each run of one evaluator was on, by the loader it ran on.

    Args:
        evaluator: The evaluation engine the user runs on several data sets.
        loaders: ``{split: loader}``; a run's loader is matched by identity.
        other: The split of a run on a loader not in ``loaders``.
    """

    def __init__(self, evaluator: Engine, loaders: Mapping[str, Any], other: str = "eval"):
        if not isinstance(evaluator, Engine):
            raise TypeError(f"evaluator must be an ignite Engine, got {type(evaluator).__name__}")
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError(f"loaders={loaders!r} is not allowed: expected {{split: loader}}")
        for split in loaders:
            if not isinstance(split, str) or not split:
                raise ValueError(f"split name {split!r} is not allowed: expected a string")
        self.evaluator = evaluator
        self.loaders = dict(loaders)
        self.other = other
        self._views: dict[str, Engine] = {}
        evaluator.add_event_handler(Events.COMPLETED, self._completed)

    def split(self, engine: Engine | None = None) -> str:
        """The split of the evaluator's current (or last) run."""
        loader = (engine or self.evaluator).state.dataloader
        for split, candidate in self.loaders.items():
            if candidate is loader:
                return split
        return self.other

    def view(self, split: str) -> Engine:
        """An ``Engine`` that fires ``COMPLETED`` after each run on ``split`` only, with
        that run's ``state.metrics``: what stop rules and best checkpoints attach to."""
        if split not in self.loaders:
            raise ValueError(f"split {split!r} is not one of {sorted(self.loaders)}")
        if split not in self._views:
            view = Engine(_never_iterated)
            view.logger = self.evaluator.logger
            self._views[split] = view
        return self._views[split]

    def _completed(self, evaluator: Engine) -> None:
        view = self._views.get(self.split(evaluator))
        if view is None:
            return
        view.state.metrics = dict(evaluator.state.metrics)
        view.state.output = evaluator.state.output
        view.state.dataloader = evaluator.state.dataloader
        view.fire_event(Events.COMPLETED)


def _never_iterated(engine: Engine, batch: Any) -> None:
    raise RuntimeError("a split view is not run; it mirrors runs of its evaluator")


def name_splits(evaluator: Engine, other: str = "eval", **loaders: Any) -> SplitRouter:
    """Say which loader is which split for an evaluator run on several data sets.

    Example:
        >>> router = name_splits(evaluator, train=train_loader, val=val_loader)
        >>> attach_early_stopping(trainer, router.view("val"), "accuracy", patience=3)

    History then records the train run as ``train_eval/*`` only when you name it so;
    a split named ``"train"`` shares ``train/loss`` with the training loss's epoch mean
    (the later value wins), so ``train_eval=train_loader`` is the safer name.
    """
    router = SplitRouter(evaluator, loaders, other)
    _ROUTERS[evaluator] = router
    return router


def split_of(evaluator: Engine, default: str) -> str:
    """The split of ``evaluator``'s last run: its router's answer, else ``default``."""
    router = _ROUTERS.get(evaluator)
    return router.split(evaluator) if router is not None else default
