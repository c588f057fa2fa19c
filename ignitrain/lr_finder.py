"""Learning-rate range test: Ignite's ``FastaiLRFinder`` on a private engine, restored.

:func:`find_lr` runs the user's training step on a private Ignite ``Engine`` (never
the trainer's, so no checkpoint, History, schedule or "latest" pointer of the run
sees it) with Ignite's ``FastaiLRFinder`` attached: its exponential LR ramp from
``start_lr`` to ``end_lr``, its smoothed loss and its divergence stop. It trains the
real model and optimizer (so AMP, accumulation, DDP... behave as in training).

Kept around Ignite, each for a defect of ``FastaiLRFinder``:

* Restoring: ``FastaiLRFinder.attach`` restores ``to_save`` only when its ``with``
  block exits normally -- a step that raises leaves the model and optimizer trained
  at a huge LR. Here the ``state_dict``s, the gradients, the train/eval flags and the
  RNG states (torch, CUDA, NumPy, Python; with the checkpoints' RNG helpers) are copied
  first and restored in a ``finally``.
* A NaN/inf loss: Ignite's divergence test ``loss > diverge_th * best`` is ``False`` for
  NaN, so the sweep went on training NaN weights; here a non-finite loss stops it.
* The raw losses and the suggestion (:func:`suggest_lr`, computed on Ignite's
  smoothed curve) are recorded here; Ignite keeps only the smoothed curve.

::

    result = find_lr(model, optimizer, train_step, train_loader)
    print(result.suggestion)
    result.plot("lr_finder.png")
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import FastaiLRFinder

from ignitrain.errors import is_count, is_number, not_allowed, suggest
from ignitrain.handlers.checkpoint import capture_rng_state, restore_rng_state

__all__ = ["LRFinderResult", "RangeTestOptions", "find_lr", "suggest_lr"]


@dataclass
class LRFinderResult:
    """The curve of a learning-rate range test.

    Attributes:
        lrs: Learning rate of each iteration (param group 0).
        losses: Smoothed loss (bias-corrected exponential moving average).
        raw_losses: Loss returned by the training step.
        suggestion: See :func:`suggest_lr`; ``None`` when the curve is too short.
        stopped_early: Whether the loss diverged before ``num_iter`` iterations.
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    suggestion: float | None = None
    stopped_early: bool = False

    def plot(self, path: str | Path, *, title: str = "Learning-rate range test") -> Path:
        """Save the smoothed loss against the LR (log scale) as an image at ``path``.

        Raises:
            ModuleNotFoundError: matplotlib is not installed.
        """
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ModuleNotFoundError(
                "LRFinderResult.plot needs matplotlib: pip install matplotlib"
            ) from exc
        path = Path(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            ax.plot(self.lrs, self.raw_losses, alpha=0.3, label="loss")
            ax.plot(self.lrs, self.losses, label="smoothed loss")
            if self.suggestion is not None:
                label = f"suggested lr = {self.suggestion:.2e}"
                ax.axvline(self.suggestion, color="red", linestyle="--", label=label)
            ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title=title)
            ax.legend()
            fig.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
        finally:
            plt.close(fig)
        return path


def suggest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest (steepest negative slope).

    The slope is taken against ``log10(lr)`` with :func:`numpy.gradient`, only up to
    the minimum of the loss (past it the loss rises), skipping the first tenth of the
    points, where the moving average has seen few losses. Returns ``None`` when fewer
    than 3 points remain.

    The moving average lags the raw loss by about ``(1 - smooth) / smooth``
    iterations, so on a fast ramp the suggestion leans towards larger rates. Treat it
    as a starting point, as fastai's "steep" suggestion.
    """
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    if len(finite) < 3:
        return None
    lrs_arr = np.log10(np.asarray([lrs[i] for i in finite], dtype=float))
    loss_arr = np.asarray([losses[i] for i in finite], dtype=float)
    end = int(np.argmin(loss_arr)) + 1
    start = len(loss_arr) // 10
    if end - start < 3:
        start, end = 0, max(end, min(3, len(loss_arr)))
    if end - start < 3:
        return None
    slopes = np.gradient(loss_arr, lrs_arr)[start:end]
    return float(10 ** lrs_arr[start + int(np.argmin(slopes))])


def _loss_of(output: Any) -> float:
    if isinstance(output, dict):
        if "loss" not in output:
            raise KeyError(
                f"find_lr: the train_step returned a dict without 'loss' (keys: {sorted(output)})"
            )
        output = output["loss"]
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean())
    if is_number(output):
        return float(output)
    raise TypeError(
        f"find_lr: the train_step returned {type(output).__name__}; expected a float loss, "
        "a scalar tensor or a dict with 'loss'"
    )


def _cycle(data: Iterable) -> Iterator:
    # Re-iterate (not itertools.cycle, which keeps every batch in memory).
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("find_lr: data yielded no batches")


def _to_cpu(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(value) for value in obj)
    return copy.deepcopy(obj)


class _Snapshot:
    """Copies of everything a short training run changes, restorable in one call."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model = model
        self.optimizer = optimizer
        # Copies on the CPU: a model that fills the GPU must not need twice its memory.
        self.weights = _to_cpu(model.state_dict())
        self.optim = _to_cpu(optimizer.state_dict())
        self.grads = [
            None if p.grad is None else p.grad.detach().clone() for p in model.parameters()
        ]
        self.training = [m.training for m in model.modules()]
        self.rng = capture_rng_state()  # torch, CUDA, NumPy, Python

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(self.optim)
        for param, grad in zip(self.model.parameters(), self.grads):
            param.grad = grad
        for module, training in zip(self.model.modules(), self.training):
            module.training = training
        restore_rng_state(self.rng)


@dataclass(frozen=True)
class RangeTestOptions:
    """The LR range test's ramp and stop rule (checked at construction).

    Attributes:
        start_lr: First learning rate.
        end_lr: Last learning rate.
        num_iter: Iterations (at most).
        smooth: Weight of the newest loss in the moving average.
        diverge_threshold: Stop when the smoothed loss exceeds this multiple of the
            best smoothed loss, or when a loss is not finite.

    Raises:
        ValueError: A value out of range, naming it.
    """

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_iter: int = 100
    smooth: float = 0.05
    diverge_threshold: float = 5.0

    def __post_init__(self) -> None:
        for name, (ok, expected) in _RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise not_allowed(f"Argument {name}", value, f"expected {expected}")
            if name == "end_lr" and not value > self.start_lr:
                why = f"expected a value > start_lr={self.start_lr!r}"
                raise not_allowed("Argument end_lr", value, why)


#: field -> (accepts the value, what is allowed); checked in this order.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "start_lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "end_lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "num_iter": (lambda v: is_count(v) and v >= 2, "an integer >= 2"),
    "smooth": (lambda v: is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "diverge_threshold": (lambda v: is_number(v) and v > 1, "a number > 1"),
}


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_step: Callable[[Engine, Any], Any],
    data: Iterable,
    options: RangeTestOptions | None = None,
    **overrides: Any,
) -> LRFinderResult:
    """Run an LR range test and restore the model and optimizer afterwards.

    The loop, on a private Ignite ``Engine(train_step)`` with Ignite's
    ``FastaiLRFinder`` attached::

        for i in range(num_iter):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))   # every group
            loss = train_step(engine, next(batches))                       # data cycled
            avg = smooth * loss + (1 - smooth) * avg                       # Ignite's
            stop if avg > diverge_threshold * best or loss is not finite

    Args:
        model: The model ``train_step`` trains (saved and restored).
        optimizer: The optimizer ``train_step`` steps (its LR is driven here).
        train_step: Ignite process function ``(engine, batch) -> loss`` returning a
            float, a scalar tensor or a dict with ``"loss"``.
        data: Any iterable of batches (a ``DataLoader``); re-iterated as needed.
        options: The ramp and stop rule (:class:`RangeTestOptions`; default: its
            defaults).
        **overrides: Fields of :class:`RangeTestOptions` by keyword (``start_lr=``,
            ``end_lr=``, ``num_iter=``, ``smooth=``, ``diverge_threshold=``), applied
            over ``options``.

    Returns:
        An :class:`LRFinderResult` with the curve and ``suggestion``.

    Raises:
        ValueError: Bad arguments or empty ``data``.
    """
    if not isinstance(model, torch.nn.Module):
        raise not_allowed("Argument model", model, "expected a torch.nn.Module", TypeError)
    if not isinstance(optimizer, torch.optim.Optimizer):
        why = "expected a torch.optim.Optimizer"
        raise not_allowed("Argument optimizer", optimizer, why, TypeError)
    if not callable(train_step):
        raise not_allowed("Argument train_step", train_step, "expected a callable", TypeError)
    options = _options(options, overrides)
    start_lr, end_lr, num_iter = options.start_lr, options.end_lr, options.num_iter

    result = LRFinderResult()
    engine = Engine(train_step)  # private: nothing of the training run is attached
    finder = FastaiLRFinder()

    @engine.on(Events.ITERATION_STARTED)
    def _used_lr(engine: Engine) -> None:
        result.lrs.append(float(optimizer.param_groups[0]["lr"]))

    @engine.on(Events.ITERATION_COMPLETED)
    def _record(engine: Engine) -> None:
        # Registered before the finder's handlers (added at STARTED): it sees the loss
        # first. Ignite's divergence test misses NaN/inf, so stop on those here.
        loss = _loss_of(engine.state.output)
        result.raw_losses.append(loss)
        if not math.isfinite(loss):
            engine.terminate()

    def _first_lr(engine: Engine) -> None:
        # Ignite's ramp is shifted by one: building its schedule (at STARTED) already
        # writes the ramp's second value, and each LR it logs is the one it writes for
        # the *next* iteration. Start at start_lr, and record the LR each iteration
        # really used (above), not Ignite's log.
        for group in optimizer.param_groups:
            group["lr"] = float(start_lr)

    snapshot = _Snapshot(model, optimizer)
    try:
        with finder.attach(
            engine,
            # Ignite saves and restores to_save on a normal exit only; the snapshot does
            # it always, so the finder gets only the optimizer it requires (no copy of
            # the model's weights to a temporary file).
            to_save={"optimizer": optimizer},
            output_transform=_loss_of,
            num_iter=num_iter,
            start_lr=float(start_lr),
            # Ignite's ramp reaches end_lr one iteration after the last; this end
            # makes iteration i use start * (end / start) ** (i / (num_iter - 1)).
            end_lr=float(start_lr * (end_lr / start_lr) ** (num_iter / (num_iter - 1))),
            step_mode="exp",
            smooth_f=float(options.smooth) if options.smooth < 1 else 0.0,  # Ignite: 0 = none
            diverge_th=float(options.diverge_threshold),
        ) as running:
            running.add_event_handler(Events.STARTED, _first_lr)  # after the finder's
            with warnings.catch_warnings():
                # "Run completed without loss diverging": a normal outcome here.
                warnings.filterwarnings("ignore", "Run completed without loss diverging")
                running.run(_cycle(data), max_epochs=1, epoch_length=num_iter)
    finally:
        snapshot.restore()
    result.losses = [float(loss) for loss in finder.get_results()["loss"]]
    if len(result.raw_losses) > len(result.losses):  # a non-finite loss Ignite never logged
        result.losses.append(math.nan)
    result.stopped_early = len(result.raw_losses) < num_iter
    result.suggestion = suggest_lr(result.lrs, result.losses)
    return result


def _options(options: RangeTestOptions | None, overrides: dict[str, Any]) -> RangeTestOptions:
    options = RangeTestOptions() if options is None else options
    if not isinstance(options, RangeTestOptions):
        raise not_allowed("Argument options", options, "expected a RangeTestOptions", TypeError)
    unknown = sorted(set(overrides) - set(RangeTestOptions.__dataclass_fields__))
    if unknown:
        fields = list(RangeTestOptions.__dataclass_fields__)
        raise TypeError(
            f"find_lr() got an unknown option {unknown[0]!r}.{suggest(unknown[0], fields)} "
            f"Options: {', '.join(fields)}"
        )
    return replace(options, **overrides)
