"""Checks a factory makes before it builds anything, so a run fails at construction and
not after an epoch (issue 12 item 5).

Two entry points, one line each in ``ignitrain/flavors/_parts.py``:

* :func:`check_run_config` (from ``check_config``): ``seed`` within torch's range,
  ``resume`` naming ``"latest"`` or an existing file (with a suggestion for a typo), the
  ``output_dir`` created and probed for writing (rank 0).
* :func:`check_data` (from ``make_loaders``): a one-pass iterable (a generator) as
  training data for more than one epoch, empty validation data, ``save_best`` without
  validation data.

And one check that needs the model's output, done on the first training batch only:
:func:`first_batch_checked` wraps the loss of the ``model(x) -> y_pred`` flavors so its
first call checks logits/targets (classification) or prediction/target shapes
(regression) before torch sees them; every later call skips the check (one flag test).
:func:`first_batch_checked_eval` does the same for the first batch of every evaluation
run (validation and test data are other data). The seq2seq flavor checks its own
batches (``flavors/seq2seq.py``: logits shape on every batch, token range, BOS/EOS and
padding on the first batch of training and of evaluation).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.data import loader_length
from ignitrain.errors import ConfigError, suggest
from ignitrain.metric_names import is_train_metric
from ignitrain.resume_rules import check_resume_allow

__all__ = [
    "SEED_MAX",
    "check_classification_batch",
    "check_data",
    "check_regression_batch",
    "check_run_config",
    "first_batch_checked",
    "first_batch_checked_eval",
    "top_k_of",
]

logger = logging.getLogger("ignitrain")

# torch.manual_seed takes a uint64 (seed + rank must fit).
SEED_MAX = 2**64 - 1


def _check_seed(config: TrainConfig) -> None:
    seed = config.seed
    if seed is None:
        return
    top = SEED_MAX - (idist.get_world_size() - 1)
    if not 0 <= seed <= top:
        raise ConfigError(
            f"TrainConfig.seed={seed!r} is not allowed: expected an integer in 0..{top} "
            "(torch seeds are unsigned 64-bit; each process uses seed + rank) or None"
        )


def _check_output_dir(config: TrainConfig) -> None:
    if config.output_dir is None or idist.get_rank() != 0:
        return
    directory = Path(config.output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"TrainConfig.output_dir={str(directory)!r} is not allowed: it cannot be "
            f"created or written ({err.strerror or err}); choose a writable directory"
        ) from None


def _check_resume(config: TrainConfig) -> None:
    resume = config.resume
    if resume is None or resume == "latest" or Path(resume).exists():
        return
    raise ConfigError(
        f"TrainConfig.resume={resume!r} is not allowed: expected 'latest' or the path of an "
        f"existing checkpoint{suggest(resume, ['latest'])}"
    )


def _check_save_every(config: TrainConfig) -> None:
    if config.save_every > 0 and config.output_dir is None:
        raise ConfigError(
            f"TrainConfig.save_every={config.save_every!r} is not allowed without "
            "output_dir: there is nowhere to write the checkpoints. Set output_dir, or "
            "leave save_every at -1 (every epoch, once output_dir is set) or 0 (never)"
        )


def check_run_config(config: TrainConfig) -> TrainConfig:
    """Factory-time checks of ``config`` alone (see the module doc); returns it."""
    config.resume_allow = check_resume_allow(config.resume_allow)
    _check_seed(config)
    _check_save_every(config)
    _check_resume(config)
    _check_output_dir(config)
    return config


def _one_pass(data: Any) -> bool:
    try:
        return iter(data) is data
    except TypeError:
        return False


def check_data(train_data: Any, val_data: Any, val_loader: Any, config: TrainConfig) -> None:
    """Factory-time checks of the data (see the module doc).

    Raises:
        ValueError: one-pass training data for several epochs, or empty validation data.
    """
    if _one_pass(train_data) and config.num_epochs > 1 and config.max_steps is None:
        raise ValueError(
            f"train_data is a one-pass iterator ({type(train_data).__name__}): epoch 1 "
            f"would use it up and epochs 2..{config.num_epochs} would be empty. Pass a "
            "Dataset, a DataLoader or a list of batches"
        )
    if val_data is not None and _one_pass(val_data):
        raise ValueError(
            f"val_data is a one-pass iterator ({type(val_data).__name__}): only the first "
            "validation would see data. Pass a Dataset, a DataLoader or a list of batches"
        )
    if val_loader is not None and loader_length(val_loader) == 0:
        size = config.val_batch_size or config.batch_size
        raise ValueError(
            f"val_data gives no batches (val_batch_size={size}, "
            f"{idist.get_world_size()} process(es)): pass validation data or val_data=None"
        )
    ranks_by_training = config.best_metric is not None and is_train_metric(config.best_metric)
    if (
        val_loader is None
        and config.save_best
        and config.output_dir is not None
        and not ranks_by_training  # best_metric='train/loss' keeps a best without val
    ):
        logger.warning(
            "TrainConfig.save_best=True without validation data: no best checkpoint is "
            "kept (pass val_data, or save_best=False to silence this)"
        )


# -- the first training batch ---------------------------------------------------------

# Losses that compare prediction and target element by element (and broadcast a
# mismatch silently: MSELoss only warns, then averages over an [N, N] matrix).
_ELEMENTWISE = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
# Losses over class indices: logits [N, C] (or [N, C, d...]) against targets [N] (or [N, d...]).
_CLASS_INDEX = (nn.CrossEntropyLoss, nn.NLLLoss)


def _shape(t: torch.Tensor) -> str:
    return f"[{', '.join(str(n) for n in t.shape)}]"


def top_k_of(metrics: Any) -> int | None:
    """The largest K among ``topK`` metric names (``["top5", "f1"]`` -> 5), or ``None``."""
    ks = [
        int(name[3:])
        for name in metrics or ()
        if isinstance(name, str) and name.startswith("top") and name[3:].isdigit()
    ]
    return max(ks) if ks else None


def check_classification_batch(
    logits: Any, target: Any, *, ignore_index: int | None = -100, top_k: int | None = None
) -> None:
    """Logits ``[N, C]`` and class-index targets ``[N]`` with values in ``[0, C)``.

    Also ``[N, C, d1, ...]`` against ``[N, d1, ...]`` (per-pixel classes), as
    cross-entropy takes them; float targets (class probabilities) must match the
    logits' shape. ``ignore_index`` values are allowed anywhere. ``top_k``: the largest
    K of the run's ``topK`` metrics, which must not exceed C (torch's ``topk`` fails
    with a raw "selected index k out of range" at the first validation otherwise).

    Raises:
        ValueError: naming the shapes or the offending label values, and the fix.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        return  # a custom model/loss pair: nothing we can say
    head = "classification: model output (logits)"
    if logits.dim() < 2:
        raise ValueError(
            f"{head} has shape {_shape(logits)}, expected [N, C] (one score per class); "
            "return logits of shape [N, C] from the model (e.g. no .squeeze() or argmax)"
        )
    if top_k is not None and top_k > logits.shape[1]:
        raise ValueError(
            f"TrainConfig.metrics asks for top{top_k} accuracy, but the model output "
            f"{_shape(logits)} scores only {logits.shape[1]} classes: choose K <= "
            f"{logits.shape[1]}"
        )
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"{head} {_shape(logits)} and float targets {_shape(target)} do not match: "
                "float targets are class probabilities shaped like the logits; pass class "
                "indices as an integer tensor of shape [N]"
            )
        return
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        hint = ""
        if target.dim() == logits.dim() and target.shape[1] == 1:
            hint = " (targets [N, 1]: use y.squeeze(1))"
        raise ValueError(
            f"{head} {_shape(logits)} and targets {_shape(target)} do not match: expected "
            f"targets of shape [{', '.join(str(n) for n in expected)}], class indices in "
            f"[0, {logits.shape[1]}){hint}"
        )
    classes = logits.shape[1]
    labels = target if ignore_index is None else target[target != ignore_index]
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.numel():  # one device sync, on the first batch only
        shown = sorted({int(v) for v in bad.unique()[:8].tolist()})
        raise ValueError(
            f"classification: target labels {shown} are out of range for logits "
            f"{_shape(logits)}: with {classes} classes labels must be in [0, {classes}). "
            "Give the model as many outputs as there are classes, or remap the labels "
            "to 0..C-1"
        )


def check_regression_batch(prediction: Any, target: Any) -> None:
    """Prediction and target of the same shape.

    Raises:
        ValueError: the shapes differ (``[N]`` against ``[N, 1]`` named).
    """
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor):
        return
    if prediction.shape != target.shape:
        hint = ""
        if prediction.numel() == target.numel():
            hint = (
                f": torch would broadcast them to [{prediction.shape[0]}, "
                f"{prediction.shape[0]}] and average the wrong differences. Reshape one "
                f"(e.g. y.view_as(y_pred) or y_pred.squeeze(-1))"
            )
        raise ValueError(
            f"regression: model output {_shape(prediction)} and target {_shape(target)} "
            f"have different shapes{hint or '; return predictions shaped like the targets'}"
        )


def _batch_check(loss_fn: Any, metrics: Any = ()) -> Any:
    """The ``(y_pred, y)`` check for ``loss_fn``'s kind of loss, or ``None``."""
    if isinstance(loss_fn, _CLASS_INDEX):
        ignore = getattr(loss_fn, "ignore_index", -100)
        top_k = top_k_of(metrics)

        def check(y_pred: Any, y: Any) -> None:
            check_classification_batch(y_pred, y, ignore_index=ignore, top_k=top_k)

        return check
    if isinstance(loss_fn, _ELEMENTWISE):
        return check_regression_batch
    return None


def first_batch_checked(loss_fn: Any, metrics: Any = ()) -> Any:
    """``loss_fn`` whose first call checks ``(y_pred, y)`` before torch sees them.

    Cross-entropy/NLL losses get :func:`check_classification_batch`, the element-wise
    MSE/L1/Huber losses :func:`check_regression_batch`; any other loss is returned
    unchanged, since its shapes may legitimately differ. Torch's own errors here are
    raw (``IndexError: Target 7 is out of bounds``; on CUDA a device-side assert that
    kills the process) or absent (MSE broadcasts ``[N]`` against ``[N, 1]`` with a
    warning). ``metrics``: the run's metric names; a ``topK`` with K above the number
    of classes is named here, on the first batch, instead of at the first validation.
    """
    check = _batch_check(loss_fn, metrics)
    if check is None:
        return loss_fn
    pending = [check]

    def loss(y_pred: Any, y: Any) -> Any:
        if pending:  # the first batch only; later calls cost this one test
            pending.pop()(y_pred, y)
        return loss_fn(y_pred, y)

    return loss


def first_batch_checked_eval(eval_fn: Any, loss_fn: Any) -> Any:
    """The evaluation process function ``eval_fn`` (``(engine, batch) -> (y_pred, y)``)
    checking its output on the first batch of the first evaluation run over each data.

    Validation and test data are other data than the training batches the loss check
    saw: their labels can be out of range or their targets shaped otherwise. Without the
    check, Ignite's ``Loss`` raises torch's raw error and ``Accuracy`` may count a label
    it has no class for as a plain miss. ``loss_fn`` picks the check as in
    :func:`first_batch_checked`; any other loss returns ``eval_fn`` unchanged. Each
    evaluator run over new data (``trainer.evaluate(test_data)`` included) checks its
    first batch; a loader that passed is not checked again at the next epoch's
    validation (~0.1 ms a run, issue 16), while data that cannot be weakly referenced
    (a list of batches) is checked at every run. Later batches cost one integer test.
    """
    check = _batch_check(loss_fn)
    if check is None:
        return eval_fn
    passed: weakref.WeakSet = weakref.WeakSet()

    def evaluate(engine: Any, batch: Any) -> Any:
        out = eval_fn(engine, batch)
        if engine.state.iteration == 1 and isinstance(out, (tuple, list)) and len(out) == 2:
            data = engine.state.dataloader
            if data in passed:  # False for an object that has no weak reference
                return out
            try:
                check(*out)
            except ValueError as err:
                raise ValueError(f"evaluation data, first batch: {err}") from None
            with contextlib.suppress(TypeError):  # not weakly referenceable: check each run
                passed.add(data)
        return out

    return evaluate
