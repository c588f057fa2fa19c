"""``create_seq2seq_trainer``: encoder–decoder ``model(src, tgt_in) -> logits`` over tokens.

Batches are ``(src, tgt)`` pairs of integer tensors padded with ``pad_idx``; every
``tgt`` row is ``BOS y1 ... yk EOS`` followed by padding. The decoder reads
``tgt_in = tgt[:, :-1]`` and is trained to predict ``target = tgt[:, 1:]``; padded
positions never count, neither in the loss nor in any metric.

The evaluation metrics (:class:`TokenAccuracy`, :class:`SequenceAccuracy`,
:class:`TokenLoss`, :class:`Perplexity`) live in :mod:`ignitrain.flavors.seq2seq_metrics`
and are importable from here too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from torch import nn

from ignitrain.errors import is_count, is_number
from ignitrain.flavors import _parts
from ignitrain.flavors._attach import AttachOptions, build_trainer
from ignitrain.flavors.seq2seq_metrics import (
    SEQ2SEQ_METRICS,
    Perplexity,
    SequenceAccuracy,
    SpecialTokens,
    TokenAccuracy,
    TokenLoss,
    check_metric_names,
    exact_match,
    seq2seq_metrics,
    token_loss,
)
from ignitrain.predict import Seq2SeqPredictor
from ignitrain.registry import build_loss
from ignitrain.steps import OptimizerStep, StepOptions, to_device, train_mode
from ignitrain.trainer import RunData, RunParts, Steps, Trainer

__all__ = [
    "create_seq2seq_trainer",
    "seq2seq_metrics",
    "SpecialTokens",
    "greedy_decode",
    "scheduled_inputs",
    "token_loss",
    "exact_match",
    "TokenAccuracy",
    "SequenceAccuracy",
    "TokenLoss",
    "Perplexity",
    "SEQ2SEQ_METRICS",
]

# -- the pieces of a step -------------------------------------------------------------


@torch.no_grad()
def scheduled_inputs(
    model: Callable[[Any, torch.Tensor], torch.Tensor],
    src: Any,
    tgt_in: torch.Tensor,
    ratio: float,
    pad_idx: int,
) -> torch.Tensor:
    """Decoder inputs for scheduled sampling (Bengio et al., 2015), one pass in parallel.

    1. ``pred = model(src, tgt_in).argmax(-1)`` without gradient (teacher-forced, in
       the model's current mode): ``pred[:, t]`` is the model's guess of ``tgt_in[:, t+1]``.
    2. One uniform number per position, ``u = torch.rand(tgt_in.shape)`` from the
       global CPU generator (so the draws are part of the checkpointed RNG state and a
       resumed run repeats them).
    3. Position ``t >= 1`` of ``tgt_in`` keeps the gold token when ``u[:, t] < ratio``
       and otherwise takes ``pred[:, t-1]``. Position 0 (BOS) and padded positions
       are never replaced.

    Args:
        ratio: Teacher-forcing ratio in ``[0, 1]``: the probability to keep a gold token.

    Returns:
        A new ``tgt_in`` of the same shape and dtype.
    """
    pred = model(src, tgt_in).argmax(-1)
    draws = torch.rand(tgt_in.shape, device="cpu").to(tgt_in.device, non_blocking=True)
    replace = (draws >= ratio) & (tgt_in != pad_idx)
    replace[:, 0] = False
    mixed = tgt_in.clone()
    mixed[:, 1:] = torch.where(replace[:, 1:], pred[:, :-1].to(tgt_in.dtype), tgt_in[:, 1:])
    return mixed


@torch.no_grad()
def greedy_decode(
    model: Callable[[Any, torch.Tensor], torch.Tensor],
    src: Any,
    *,
    max_len: int,
    tokens: SpecialTokens = SpecialTokens(),  # noqa: B008 (a frozen dataclass)
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Autoregressive greedy decoding from BOS: ``(N, L)`` tokens, ``L <= max_len``.

    Each step runs ``model(src, ys)`` on the tokens produced so far and appends the
    argmax of the last position. A row is finished after its first EOS; later
    positions of finished rows are ``pad``. Decoding stops when every row is finished
    or after ``max_len`` tokens. (The model is re-run on the whole prefix each step: no
    key/value cache, which is fine for the short sequences this flavor targets.)

    Args:
        max_len: The most tokens to produce per row (EOS included).
        batch_size: Rows ``N`` (default: ``src.size(0)``).
        device: Where the tokens live (default: ``src``'s device).
    """
    if isinstance(src, torch.Tensor):
        batch_size = src.size(0) if batch_size is None else batch_size
        device = src.device if device is None else device
    if batch_size is None:
        raise ValueError("greedy_decode needs batch_size= when src is not a tensor")
    ys = torch.full((batch_size, 1), tokens.bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=ys.device)
    for _ in range(max_len):
        logits = model(src, ys)
        _check_logits(logits, ys)
        nxt = logits[:, -1].argmax(-1).masked_fill(finished, tokens.pad)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        finished |= nxt == tokens.eos
        if bool(finished.all()):
            break
    return ys[:, 1:]


# -- input checks (no host sync: shapes only; contents once, on the first batch) -----


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        got = type(batch).__name__
        if isinstance(batch, (list, tuple)):
            got += f" of length {len(batch)}"
        raise ValueError(f"seq2seq batches must be (src, tgt) pairs; got {got}")
    src, tgt = batch
    if (
        not isinstance(tgt, torch.Tensor)
        or tgt.dim() != 2
        or tgt.is_floating_point()
        or tgt.dtype == torch.bool
    ):
        desc = (
            f"{tgt.dtype} tensor of shape {tuple(tgt.shape)}"
            if isinstance(tgt, torch.Tensor)
            else type(tgt).__name__
        )
        raise ValueError(
            f"tgt must be an integer tensor of shape (N, T) (token indices); got {desc}"
        )
    if tgt.size(1) < 2:
        raise ValueError(
            f"tgt must hold BOS and at least one more token per row; got shape {tuple(tgt.shape)}"
        )
    if isinstance(src, torch.Tensor) and src.dim() > 0 and src.size(0) != tgt.size(0):
        raise ValueError(f"src and tgt hold different batch sizes: {src.size(0)} and {tgt.size(0)}")
    return src, tgt


def _check_logits(logits: Any, tgt_in: torch.Tensor) -> None:
    n, t = tgt_in.shape
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 3
        or tuple(logits.shape[:2]) != (n, t)
    ):
        got = (
            f"shape {tuple(logits.shape)}"
            if isinstance(logits, torch.Tensor)
            else type(logits).__name__
        )
        raise ValueError(
            f"model(src, tgt_in) must return logits of shape (N, T, V) = ({n}, {t}, V) "
            f"for tgt_in of shape ({n}, {t}); got {got}"
        )


def _check_tokens(tgt: torch.Tensor, tokens: SpecialTokens) -> None:
    """Content checks that catch wrong special indices; run on the first batch only,
    before the model sees it (an embedding would fail on a bad index less clearly)."""
    if int(tgt.min()) < 0:
        raise ValueError(
            f"tgt holds the negative token {int(tgt.min())}: token indices must be >= 0 "
            f"(padding included: pad with pad_idx={tokens.pad}, or pass the pad_idx your data uses)"
        )
    bad = (tgt[:, 0] != tokens.bos).nonzero()
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"every tgt row must start with bos_idx={tokens.bos}; "
            f"row {row} starts with {int(tgt[row, 0])}"
        )
    no_eos = (~(tgt == tokens.eos).any(dim=1)).nonzero()
    if len(no_eos):
        raise ValueError(
            f"every tgt row must contain eos_idx={tokens.eos}; row {int(no_eos[0])} has none"
        )
    is_eos = (tgt == tokens.eos).long()
    after = (is_eos.cumsum(dim=1) - is_eos) > 0
    stray = (after & (tgt != tokens.pad)).nonzero()
    if len(stray):
        row, col = (int(i) for i in stray[0])
        raise ValueError(
            f"tgt must be padded with pad_idx={tokens.pad} after EOS; row {row} holds "
            f"{int(tgt[row, col])} at position {col}. Pass the pad_idx your data uses"
        )


def _check_vocab(tgt: torch.Tensor, vocab: int) -> None:
    if int(tgt.max()) >= vocab:
        raise ValueError(
            f"tgt holds token {int(tgt.max())} but the model returns logits over V={vocab} classes"
        )


def _teacher_forcing_fn(teacher_forcing: Any) -> Callable[[int], float]:
    def check(value: Any, where: str) -> float:
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(
                f"teacher_forcing{where}={value!r} is not allowed: expected a number in [0, 1]"
            )
        return float(value)

    if callable(teacher_forcing):
        return lambda epoch: check(teacher_forcing(epoch), f"({epoch})")
    ratio = check(teacher_forcing, "")
    return lambda epoch: ratio


# -- process functions ------------------------------------------------------------------


def seq2seq_update(
    net: nn.Module,
    opt_step: OptimizerStep,
    loss_fn: Callable,
    device: torch.device,
    *,
    tokens: SpecialTokens,
    teacher_forcing: Callable[[int], float],
    report_ratio: bool = False,
) -> Callable[[Engine, Any], dict[str, float]]:
    """The training process function: ``{"loss": float}`` (+ ``"teacher_forcing"``)."""
    checked = False

    def update(engine: Engine, batch: Any) -> dict[str, float]:
        nonlocal checked
        train_mode(net)
        src, tgt = _split_batch(to_device(batch, device))
        tgt_in, target = tgt[:, :-1], tgt[:, 1:]
        ratio = teacher_forcing(engine.state.epoch)
        if not checked:
            _check_tokens(tgt, tokens)
        with opt_step.forward_context(engine):
            if ratio < 1.0:
                tgt_in = scheduled_inputs(net, src, tgt_in, ratio, tokens.pad)
            logits = net(src, tgt_in)
            _check_logits(logits, tgt_in)
            if not checked:
                _check_vocab(tgt, logits.size(-1))
                checked = True
            loss = token_loss(loss_fn, logits, target, tokens.pad)
        opt_step.backward(engine, loss)
        out = {"loss": loss.item()}
        if report_ratio:
            out["teacher_forcing"] = ratio
        return out

    return update


def seq2seq_evaluate(
    model: nn.Module,
    device: torch.device,
    autocast: Callable[[], Any],
    *,
    tokens: SpecialTokens,
    max_decode_len: int | None = None,
) -> Callable[[Engine, Any], dict[str, torch.Tensor]]:
    """The evaluation process function.

    Returns ``{"logits": (N, T, V) float32 teacher-forced, "target": (N, T),
    "decoded": (N, L) greedy}`` for the metrics.
    """
    checked = False

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> dict[str, torch.Tensor]:
        nonlocal checked
        model.eval()
        src, tgt = _split_batch(to_device(batch, device))
        tgt_in, target = tgt[:, :-1], tgt[:, 1:]
        if not checked:
            _check_tokens(tgt, tokens)
        with autocast():
            logits = model(src, tgt_in)
            _check_logits(logits, tgt_in)
            if not checked:
                _check_vocab(tgt, logits.size(-1))
                checked = True
            decoded = greedy_decode(
                model,
                src,
                max_len=max_decode_len or target.size(1),
                tokens=tokens,
                batch_size=tgt.size(0),
                device=tgt.device,
            )
        return {"logits": logits.float(), "target": target, "decoded": decoded}

    return evaluate


# -- metrics (ignitrain/flavors/seq2seq_metrics.py) ----------------------------------


# -- the factory ------------------------------------------------------------------------


def create_seq2seq_trainer(
    model: nn.Module,
    config: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    pad_idx: int = 0,
    bos_idx: int = 1,
    eos_idx: int = 2,
    teacher_forcing: float | Callable[[int], float] = 1.0,
    max_decode_len: int | None = None,
    optimizer: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Metric] | None = None,
) -> Trainer:
    """Build a trainer for an encoder–decoder ``model(src, tgt_in) -> logits (N, T, V)``.

    Batches are ``(src, tgt)``: ``tgt`` is an integer tensor ``(N, T + 1)`` whose rows are
    ``BOS y1 ... yk EOS`` padded with ``pad_idx``; ``src`` is whatever the model's
    encoder takes (usually padded token indices). The model is responsible for its own
    attention masks (e.g. from ``src == pad_idx`` and a causal mask over ``tgt_in``).

    The loop it runs::

        for epoch in 1..num_epochs:
            for src, tgt in train_loader:             # order fixed by (seed, epoch)
                tgt_in, target = tgt[:, :-1], tgt[:, 1:]
                r = teacher_forcing(epoch)            # a float, or your schedule
                with autocast:
                    if r < 1: tgt_in = scheduled_inputs(model, src, tgt_in, r)
                    loss = loss_fn(model(src, tgt_in), target)   # pad tokens excluded
                backward(loss / group_size)           # accumulation, no_sync under DDP
                if end of group: clip; optimizer.step(); schedules
            if epoch % validate_every == 0:
                for src, tgt in val_loader:           # model.eval(), no grad
                    logits = model(src, tgt_in)       # teacher-forced: loss, token acc, ppl
                    decoded = greedy_decode(model, src, max_len=max_decode_len or T)
            history, stop rules, TensorBoard, checkpoints

    Teacher forcing below 1 is scheduled sampling, described exactly in
    :func:`scheduled_inputs`: each non-pad decoder input after BOS is replaced by the
    model's own argmax prediction with probability ``1 - r``, drawn from the global
    torch RNG (part of the checkpoint, so a resumed run draws the same).

    Attached to ``trainer.engine``: epoch sync of the data order (``EPOCH_STARTED``);
    epoch means of ``loss`` (and ``teacher_forcing`` when it is below 1 or a schedule);
    LR/momentum schedules (``ITERATION_STARTED``/``EPOCH_COMPLETED``); validation,
    History, stop rules, epoch summary, TensorBoard (``EPOCH_COMPLETED``); periodic
    checkpoints (``ITERATION_COMPLETED``), best checkpoint (validation ``COMPLETED``)
    and the last one (``COMPLETED``) when ``config.output_dir`` is set.

    Args:
        model: ``nn.Module`` with ``forward(src, tgt_in) -> logits (N, T, V)``.
        config: A :class:`~ignitrain.TrainConfig` (or a mapping of its options).
            ``config.best_metric`` defaults to ``"sequence_accuracy"``.
        train_data: A ``Dataset`` of ``(src, tgt)`` (pad them to equal length in a
            ``collate_fn``-built loader when lengths vary) or a loader of such batches.
        val_data: Validation data like ``train_data``; ``None`` skips validation.
        pad_idx, bos_idx, eos_idx: The special token indices (three different ints).
        teacher_forcing: Probability in ``[0, 1]`` to feed the gold previous token, or a
            callable ``epoch -> ratio`` for a decaying schedule. ``1.0``: plain teacher forcing.
        max_decode_len: Most tokens greedy decoding produces per sequence (default:
            the target length of the batch).
        optimizer: Optimizer object or factory, overriding ``config.optimizer``.
        loss: Token loss ``(logits (M, V), target (M,)) -> mean`` overriding
            ``config.loss``; default ``nn.CrossEntropyLoss()``.
            ``nn.CrossEntropyLoss(label_smoothing=0.1)`` works as is.
        metrics: Extra Ignite metrics by name; the evaluator output is a dict with
            ``"logits"``, ``"target"`` and ``"decoded"``.

    Returns:
        A :class:`~ignitrain.Trainer` whose evaluators report ``loss``,
        ``token_accuracy``, ``sequence_accuracy`` and ``perplexity``.

    Raises:
        ValueError: bad special tokens or ``teacher_forcing``; at the first batch,
            batches that are not ``(src, tgt)``, logits of the wrong shape, targets
            without BOS/EOS or padded with another index than ``pad_idx``.

    Example:
        >>> decay = lambda epoch: max(0.5, 1.0 - 0.1 * epoch)
        >>> trainer = create_seq2seq_trainer(
        ...     model, TrainConfig(num_epochs=10), train_ds, val_ds, teacher_forcing=decay
        ... )
        >>> trainer.train()
        >>> trainer.evaluate(test_ds)["sequence_accuracy"]
    """
    config = _parts.check_config(config)
    model = _parts.check_model(model, seed=config.seed)
    user_metrics = _parts.check_metrics(metrics)
    tokens = SpecialTokens(pad=pad_idx, bos=bos_idx, eos=eos_idx)
    ratio_fn = _teacher_forcing_fn(teacher_forcing)
    if max_decode_len is not None and (not is_count(max_decode_len) or max_decode_len < 1):
        raise ValueError(
            f"max_decode_len={max_decode_len!r} is not allowed: expected None or an integer >= 1"
        )
    check_metric_names(config.metrics)
    loss_fn = build_loss(loss if loss is not None else config.loss, nn.CrossEntropyLoss)
    if not callable(loss_fn):
        raise TypeError(
            f"loss must be callable (logits, target) -> loss, got {type(loss_fn).__name__}"
        )

    device = _parts.setup_run(config)
    train_loader, val_loader = _parts.make_loaders(train_data, val_data, config)
    net, model = _parts.place_model(model, config, device)
    opt = _parts.make_optimizer(config, model, optimizer)
    opt_step = OptimizerStep(opt, net, StepOptions.from_config(config, device), device)
    report_ratio = callable(teacher_forcing) or teacher_forcing < 1.0
    update = seq2seq_update(
        net,
        opt_step,
        loss_fn,
        device,
        tokens=tokens,
        teacher_forcing=ratio_fn,
        report_ratio=report_ratio,
    )
    engine = _parts.make_engine(update, train_loader, config)

    def all_metrics() -> dict[str, Metric]:
        found = seq2seq_metrics(loss_fn, tokens)
        found.update({name: copy.deepcopy(m) for name, m in user_metrics.items()})
        return found

    eval_fn = seq2seq_evaluate(
        model, device, opt_step.autocast, tokens=tokens, max_decode_len=max_decode_len
    )
    predictor = Seq2SeqPredictor(
        model, device, opt_step.autocast, tokens=tokens, max_decode_len=max_decode_len
    )
    parts = RunParts(
        engine,
        config,
        _parts.one_model(model, opt, opt_step, device),
        Steps(update, _parts.make_evaluator_factory(eval_fn, all_metrics), predictor),
        RunData(train_loader, val_loader),
        flavor="seq2seq",
    )
    losses = ("loss", "teacher_forcing") if report_ratio else ("loss",)
    return build_trainer(parts, AttachOptions("sequence_accuracy", losses))
